package overlay

import (
	"errors"
	"fmt"

	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/encap/wireguard"
)

// Transport is how packets reach one peer.
type Transport uint8

const (
	TransportVXLAN Transport = iota
	TransportWireGuard
)

func (t Transport) String() string {
	if t == TransportWireGuard {
		return "wireguard"
	}
	return "vxlan"
}

// Policy is the cluster-wide transport policy; every node applies it to
// every peer, so both ends of a pair pick the same transport.
type Policy string

const (
	PolicyVXLAN                Policy = "vxlan"
	PolicyWireGuard            Policy = "wireguard"
	PolicyWireGuardAcrossSites Policy = "wireguard-across-sites" // VXLAN inside a site, WireGuard between sites
)

// ParsePolicy checks a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case PolicyVXLAN, PolicyWireGuard, PolicyWireGuardAcrossSites:
		return p, nil
	}
	return "", fmt.Errorf("unknown transport policy %q (want vxlan, wireguard or wireguard-across-sites)", s)
}

// Capabilities is what a node can speak, and where it is.
type Capabilities struct {
	Site      string
	VXLAN     bool
	WireGuard bool
}

// ErrNoCommonTransport means two nodes share no transport.
var ErrNoCommonTransport = errors.New("no transport both nodes support")

// Choose picks the transport toward peer. The policy's wish holds when both
// ends support it; otherwise the pair falls back to what both support, and
// the caller logs the fallback.
func (p Policy) Choose(self, peer Capabilities) (t Transport, fallback bool, err error) {
	wantWG := p == PolicyWireGuard || (p == PolicyWireGuardAcrossSites && self.Site != peer.Site)
	bothWG := self.WireGuard && peer.WireGuard
	bothVXLAN := self.VXLAN && peer.VXLAN
	switch {
	case wantWG && bothWG:
		return TransportWireGuard, false, nil
	case !wantWG && bothVXLAN:
		return TransportVXLAN, false, nil
	case bothVXLAN:
		return TransportVXLAN, true, nil
	case bothWG:
		return TransportWireGuard, true, nil
	}
	return 0, false, ErrNoCommonTransport
}

// PodMTU is the pod MTU under this policy: the underlay MTU minus the
// largest overhead of any transport the node may use, over an IPv4
// underlay or, with underlay6, an IPv6 one (20 bytes more of outer
// header: VXLAN 70 instead of 50, WireGuard 80 instead of 60).
func (p Policy) PodMTU(underlayMTU int, wireGuardCapable, underlay6 bool) int {
	vx, wg := vxlan.OverheadIPv4, wireguard.OverheadIPv4
	if underlay6 {
		vx, wg = vxlan.OverheadIPv6, wireguard.OverheadIPv6
	}
	overhead := vx
	if p != PolicyVXLAN && wireGuardCapable {
		overhead = max(overhead, wg)
	}
	return underlayMTU - overhead
}
