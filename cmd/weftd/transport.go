package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/encap/wireguard"
	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/peer"
)

// transportChooser turns gossiped records into router peers under the
// cluster's transport policy, and logs each peer's transport when it is
// first chosen or changes.
type transportChooser struct {
	policy overlay.Policy
	log    *slog.Logger
	last   map[string]overlay.Transport
}

func newTransportChooser(p overlay.Policy, log *slog.Logger) *transportChooser {
	return &transportChooser{policy: p, log: log, last: make(map[string]overlay.Transport)}
}

func capabilities(r peer.Record) overlay.Capabilities {
	return overlay.Capabilities{
		Site:      r.Site,
		VXLAN:     r.Caps&peer.CapVXLAN != 0,
		WireGuard: r.Caps&peer.CapWireGuard != 0 && r.HasWGKey() && r.WGPort != 0,
	}
}

func (tc *transportChooser) peer(self, r peer.Record) (overlay.Peer, error) {
	t, fallback, err := tc.policy.Choose(capabilities(self), capabilities(r))
	if err != nil {
		return overlay.Peer{}, err
	}
	if old, ok := tc.last[r.Name]; !ok || old != t {
		tc.last[r.Name] = t
		if fallback {
			tc.log.Warn("transport policy not met for peer: falling back to what both support", "peer", r.Name, "policy", tc.policy, "transport", t)
		} else {
			tc.log.Info("peer transport", "peer", r.Name, "site", r.Site, "transport", t)
		}
	}
	p := overlay.Peer{Name: r.Name, Underlay: r.Underlay, PodCIDRs: r.PodCIDRs, VTEPMAC: r.VTEPMAC, Transport: t,
		OuterChecksum:  true, // weft's sender always checksums
		RemoteChecksum: self.Caps&r.Caps&peer.CapRemoteChecksum != 0}
	if t == overlay.TransportWireGuard {
		p.WireGuard = wireguard.Peer{
			PublicKey:  wgtypes.Key(r.WGPublicKey),
			Endpoint:   netip.AddrPortFrom(r.Underlay.Addr(), r.WGPort),
			AllowedIPs: r.PodCIDRs,
		}
	}
	return p, nil
}

// keyRotation serialises rotations.
var keyRotation sync.Mutex

// rotateKey gives the node a new WireGuard key: stored first (so a crash
// keeps the new one), then applied to the device, then gossiped so peers
// re-key toward us.
func rotateKey(c config, wg *wireguard.Device, members *peer.Membership) (any, error) {
	if wg == nil {
		return nil, errors.New("this node runs no WireGuard device")
	}
	keyRotation.Lock()
	defer keyRotation.Unlock()
	k, err := wireguard.NewKeyFile(c.WGKeyFile)
	if err != nil {
		return nil, err
	}
	if err := wg.SetPrivateKey(k); err != nil {
		return nil, err
	}
	self := members.Self()
	self.WGPublicKey = k.PublicKey()
	self.Generation++
	if err := members.UpdateSelf(self, 0); err != nil {
		return nil, fmt.Errorf("gossip new key: %w", err)
	}
	return map[string]string{"publicKey": k.PublicKey().String()}, nil
}

// wgFields renders a record's WireGuard identity for status output.
func wgFields(r peer.Record) (publicKey, endpoint string) {
	if !r.HasWGKey() {
		return "", ""
	}
	return wgtypes.Key(r.WGPublicKey).String(), netip.AddrPortFrom(r.Underlay.Addr(), r.WGPort).String()
}
