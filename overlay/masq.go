package overlay

import (
	"fmt"
	"net/netip"
)

// Egress masquerade: pods reach destinations outside the cluster with the
// node's address as their source, as flannel's ipMasq and Calico's
// natOutgoing do; pod→pod and node→pod traffic keeps the pod's address
// (the network model's rules 2 and 3). The rules live in nftables tables
// weft owns (MasqTable, family ip, and for a dual-stack node family ip6),
// replaced whole on every apply (masq_linux.go): declarative, and
// re-applied periodically to repair drift.

// MasqTable is the nftables table (family ip, and ip6 for IPv6) weft owns
// for masquerade.
const MasqTable = "weft"

// Masquerade is the desired masquerade of a node.
type Masquerade struct {
	// PodCIDR is this node's pod CIDR: the sources translated.
	PodCIDR netip.Prefix
	// ClusterCIDR is never a masqueraded destination.
	ClusterCIDR netip.Prefix
	// PodCIDR6 and ClusterCIDR6 are the same for IPv6 on a dual-stack
	// node (the ip6 table); both zero on an IPv4-only one.
	PodCIDR6, ClusterCIDR6 netip.Prefix
	// Except are further destinations reached with the pod's address
	// (--masquerade-except: a VPC's range, say), of either family.
	Except []netip.Prefix
}

// masqRule is one rule of the masquerade chain, in order: a destination
// that returns (no translation), or the final masquerade of everything
// from the pod CIDR not bound for the cluster.
type masqRule struct {
	src, dst netip.Prefix
	masq     bool // false: return for dst; true: masquerade unless dst
}

// rules compiles m to the chains' rules, IPv4 and IPv6 (nil without
// PodCIDR6), checking it first.
func (m Masquerade) rules() (v4, v6 []masqRule, err error) {
	if !m.PodCIDR.IsValid() || !m.PodCIDR.Addr().Is4() {
		return nil, nil, fmt.Errorf("masquerade: pod CIDR %s: want IPv4", m.PodCIDR)
	}
	if !m.ClusterCIDR.IsValid() || !m.ClusterCIDR.Addr().Is4() {
		return nil, nil, fmt.Errorf("masquerade: cluster CIDR %s: want IPv4", m.ClusterCIDR)
	}
	dual := m.PodCIDR6.IsValid() || m.ClusterCIDR6.IsValid()
	if dual && (!m.PodCIDR6.IsValid() || !m.PodCIDR6.Addr().Is6() || m.PodCIDR6.Addr().Is4In6() || !m.ClusterCIDR6.IsValid() || !m.ClusterCIDR6.Addr().Is6() || m.ClusterCIDR6.Addr().Is4In6()) {
		return nil, nil, fmt.Errorf("masquerade: IPv6 pod CIDR %s and cluster CIDR %s: want both, IPv6", m.PodCIDR6, m.ClusterCIDR6)
	}
	src, src6 := m.PodCIDR.Masked(), m.PodCIDR6.Masked()
	for _, e := range m.Except {
		switch {
		case !e.IsValid() || e.Addr().Is4In6():
			return nil, nil, fmt.Errorf("masquerade: exception %s: not a CIDR", e)
		case e.Addr().Is4():
			v4 = append(v4, masqRule{src: src, dst: e.Masked()})
		case !dual:
			return nil, nil, fmt.Errorf("masquerade: IPv6 exception %s on a node without IPv6 pods", e)
		default:
			v6 = append(v6, masqRule{src: src6, dst: e.Masked()})
		}
	}
	v4 = append(v4, masqRule{src: src, dst: m.ClusterCIDR.Masked(), masq: true})
	if dual {
		v6 = append(v6, masqRule{src: src6, dst: m.ClusterCIDR6.Masked(), masq: true})
	}
	return v4, v6, nil
}
