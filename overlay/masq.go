package overlay

import (
	"fmt"
	"net/netip"
)

// Egress masquerade: pods reach destinations outside the cluster with the
// node's address as their source, as flannel's ipMasq and Calico's
// natOutgoing do; pod→pod and node→pod traffic keeps the pod's address
// (the network model's rules 2 and 3). The rules live in an nftables
// table weft owns (MasqTable, family ip), replaced whole on every apply
// (masq_linux.go): declarative, and re-applied periodically to repair
// drift.

// MasqTable is the nftables table (family ip) weft owns for masquerade.
const MasqTable = "weft"

// Masquerade is the desired masquerade of a node.
type Masquerade struct {
	// PodCIDR is this node's pod CIDR: the sources translated.
	PodCIDR netip.Prefix
	// ClusterCIDR is never a masqueraded destination.
	ClusterCIDR netip.Prefix
	// Except are further destinations reached with the pod's address
	// (--masquerade-except: a VPC's range, say).
	Except []netip.Prefix
}

// masqRule is one rule of the masquerade chain, in order: a destination
// that returns (no translation), or the final masquerade of everything
// from the pod CIDR not bound for the cluster.
type masqRule struct {
	src, dst netip.Prefix
	masq     bool // false: return for dst; true: masquerade unless dst
}

// rules compiles m to the chain's rules, checking it first.
func (m Masquerade) rules() ([]masqRule, error) {
	if !m.PodCIDR.IsValid() || !m.PodCIDR.Addr().Is4() {
		return nil, fmt.Errorf("masquerade: pod CIDR %s: want IPv4", m.PodCIDR)
	}
	if !m.ClusterCIDR.IsValid() || !m.ClusterCIDR.Addr().Is4() {
		return nil, fmt.Errorf("masquerade: cluster CIDR %s: want IPv4", m.ClusterCIDR)
	}
	src := m.PodCIDR.Masked()
	var out []masqRule
	for _, e := range m.Except {
		if !e.IsValid() || !e.Addr().Is4() {
			return nil, fmt.Errorf("masquerade: exception %s: want IPv4", e)
		}
		out = append(out, masqRule{src: src, dst: e.Masked()})
	}
	return append(out, masqRule{src: src, dst: m.ClusterCIDR.Masked(), masq: true}), nil
}
