package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/weftnet/weft/ipam/diskfile"
)

// NodeStateFile is the name of the hand-off file inside weftd's run dir.
const NodeStateFile = "node.json"

// NodeState is what weftd tells weft-cni about its node: written by weftd
// once the gateway address sits on weft0, read by every plugin call. It lives
// in the run dir (tmpfs), so pods can still be wired while weftd restarts.
//
//	{"nodeName":"n1","podCIDRs":["10.244.1.0/24"],"gateway":"10.244.1.1",
//	 "mtu":1450,"clusterCIDR":"10.244.0.0/16"}
//
// A dual-stack node adds its IPv6 pod CIDR to podCIDRs and the IPv6 half:
//
//	"gateway6":"fd00:10:244:1::1","clusterCIDR6":"fd00:10:244::/56"
type NodeState struct {
	NodeName string `json:"nodeName"`
	// PodCIDRs are the node's pod prefixes, at most one per family.
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	// Gateway is the first host of the pod CIDR; weftd puts it on weft0 and
	// every pod routes through it.
	Gateway netip.Addr `json:"gateway"`
	// MTU is the pod MTU: underlay MTU minus the transport's overhead.
	MTU         int          `json:"mtu"`
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
	// Gateway6 is the first host of the IPv6 pod CIDR, on weft0: the
	// source of weftd's ICMPv6 errors. Pods do not route via it but via
	// PodGateway6, a link-local address on their host veth, which needs
	// no proxy neighbour entry. Invalid: the node has no IPv6 pods.
	Gateway6 netip.Addr `json:"gateway6,omitzero"`
	// ClusterCIDR6 is the cluster's IPv6 pod range (dual-stack).
	ClusterCIDR6 netip.Prefix `json:"clusterCIDR6,omitzero"`
}

// PodGateway6 is the IPv6 next hop of every pod: a link-local address on
// the host end of each pod's veth (as Calico does), unique per link, so
// the node answers the pod's neighbour solicitation itself.
var PodGateway6 = netip.MustParseAddr("fe80::1")

// CIDROf returns the node's pod CIDR of a's family (IPv4 or IPv6).
func (st NodeState) CIDROf(v6 bool) (netip.Prefix, bool) {
	for _, p := range st.PodCIDRs {
		if p.Addr().Is6() == v6 {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// GatewayOf is the node's gateway address of a family on weft0.
func (st NodeState) GatewayOf(v6 bool) netip.Addr {
	if v6 {
		return st.Gateway6
	}
	return st.Gateway
}

// Validate reports whether st is usable for wiring pods.
func (st NodeState) Validate() error {
	if len(st.PodCIDRs) == 0 {
		return errors.New("no pod CIDRs")
	}
	fams := map[bool]bool{}
	for _, p := range st.PodCIDRs {
		if !p.IsValid() {
			return errors.New("invalid pod CIDR")
		}
		if p != p.Masked() {
			return fmt.Errorf("pod CIDR %v has host bits set", p)
		}
		v6 := p.Addr().Is6()
		if fams[v6] {
			return fmt.Errorf("pod CIDRs %v: two of one family", st.PodCIDRs)
		}
		fams[v6] = true
		cluster := st.ClusterCIDR
		if v6 {
			cluster = st.ClusterCIDR6
		}
		if cluster.IsValid() && !(cluster.Contains(p.Addr()) && cluster.Bits() <= p.Bits()) {
			return fmt.Errorf("pod CIDR %v outside cluster CIDR %v", p, cluster)
		}
		gw := st.GatewayOf(v6)
		if !gw.IsValid() {
			return fmt.Errorf("no gateway for pod CIDR %v", p)
		}
		if !p.Contains(gw) {
			return fmt.Errorf("gateway %v outside pod CIDR %v", gw, p)
		}
	}
	if !st.Gateway.IsValid() {
		return errors.New("no gateway")
	}
	if st.Gateway6.IsValid() && !fams[true] {
		return fmt.Errorf("gateway6 %v without an IPv6 pod CIDR", st.Gateway6)
	}
	// 68 is the IPv4 minimum (RFC 791); a veth accepts up to 65535.
	if st.MTU < 68 || st.MTU > 65535 {
		return fmt.Errorf("mtu %d out of range [68, 65535]", st.MTU)
	}
	return nil
}

// WriteNodeState validates st and writes it to runDir/node.json
// crash-safely (diskfile.Write), so a plugin never reads half a file.
func WriteNodeState(runDir string, st NodeState) error {
	if err := st.Validate(); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	// World-readable: it holds nothing secret.
	if err := diskfile.Write(filepath.Join(runDir, NodeStateFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	return nil
}

// ReadNodeState reads and validates runDir/node.json. A missing file yields
// an error matching os.ErrNotExist: weftd has not started (yet).
func ReadNodeState(runDir string) (NodeState, error) {
	path := filepath.Join(runDir, NodeStateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return NodeState{}, fmt.Errorf("read node state: %w", err)
	}
	var st NodeState
	if err := json.Unmarshal(b, &st); err != nil {
		return NodeState{}, fmt.Errorf("decode %s: %w", path, err)
	}
	if err := st.Validate(); err != nil {
		return NodeState{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}
