package overlay

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/encap/wireguard"
)

// Peer is a remote node as the router sees it: where to send, which inner
// addresses it owns, and the inner Ethernet address its VTEP expects.
type Peer struct {
	Name      string
	Underlay  netip.AddrPort // VXLAN endpoint
	PodCIDRs  []netip.Prefix
	VTEPMAC   [6]byte
	Transport Transport
	// WireGuard is where and how to reach the peer when Transport is
	// TransportWireGuard.
	WireGuard wireguard.Peer
	// OuterChecksum says the peer puts a UDP checksum on every VXLAN
	// datagram, as weft nodes do (kernel vxlan devices send none over
	// IPv4 by default). The kernel verifies it on receipt, so it covers
	// the inner packets: the receive path does not verify their TCP
	// checksums again before coalescing them.
	OuterChecksum bool
	// RemoteChecksum: the peer takes TCP segments whose checksum it
	// finishes itself (VXLAN remote checksum offload, encap/vxlan), so the
	// sender does not sum their payloads.
	RemoteChecksum bool
	// Standby: not routed; a WireGuard peer stays on the device as it is
	// (wireguard.Peer.Standby).
	Standby bool
	// Relayed names the peers whose pod CIDRs this peer carries for this
	// node (they are in PodCIDRs too): nodes it cannot reach itself, for
	// status.
	Relayed []string
}

// peerEntry is a Peer plus what the packet path needs precomputed.
type peerEntry struct {
	Peer
	ep   conn.Endpoint // parsed once per snapshot, not per packet
	pmtu *pathMTU      // shared by every snapshot holding this peer
	pods prefixSet     // PodCIDRs, for the inbound source check (newTable)
}

// prefixSet matches raw inner addresses (4 or 16 bytes, as addrs slices
// them) against a few prefixes without building a netip.Addr per packet:
// IPv4 by mask and compare.
type prefixSet struct {
	v4 []v4Net
	v6 []netip.Prefix
}

type v4Net struct{ addr, mask uint32 }

func newPrefixSet(ps []netip.Prefix) prefixSet {
	var s prefixSet
	for _, p := range ps {
		p = p.Masked()
		if p.Addr().Is4() {
			a := p.Addr().As4()
			s.v4 = append(s.v4, v4Net{addr: binary.BigEndian.Uint32(a[:]), mask: ^uint32(0) << (32 - p.Bits())})
			if p.Bits() == 0 {
				s.v4[len(s.v4)-1].mask = 0
			}
		} else {
			s.v6 = append(s.v6, p)
		}
	}
	return s
}

// contains reports whether the address a (4 or 16 bytes) is inside one of
// the set's prefixes.
func (s *prefixSet) contains(a []byte) bool {
	if len(a) == 4 {
		x := binary.BigEndian.Uint32(a)
		for _, n := range s.v4 {
			if x&n.mask == n.addr {
				return true
			}
		}
		return false
	}
	if len(a) != 16 {
		return false
	}
	ad := netip.AddrFrom16([16]byte(a))
	for _, p := range s.v6 {
		if p.Contains(ad) {
			return true
		}
	}
	return false
}

// table is an immutable snapshot of the peer set. The packet goroutines read
// it through an atomic pointer and take no lock; SetPeers builds a new one.
type table struct {
	// lens4 and lens6 are the distinct prefix lengths in use, longest first,
	// so a lookup is one map probe per distinct length.
	lens4, lens6 []int
	routes       map[netip.Prefix]*peerEntry
	byUnderlay   map[netip.Addr]*peerEntry
	peers        []*peerEntry
}

func newTable(entries []*peerEntry) *table {
	t := &table{
		routes:     make(map[netip.Prefix]*peerEntry),
		byUnderlay: make(map[netip.Addr]*peerEntry),
		peers:      entries,
	}
	for _, e := range entries {
		e.pods = newPrefixSet(e.PodCIDRs)
		// Across sites two peers may share an address (overlapping
		// private ranges; a WireGuard peer reached only where its packets
		// come from is listed at its internal one): the VXLAN peer keeps
		// the address, since only VXLAN is received by it.
		if k := e.Underlay.Addr().Unmap(); t.byUnderlay[k] == nil || e.Transport == TransportVXLAN {
			t.byUnderlay[k] = e
		}
		for _, c := range e.PodCIDRs {
			c = c.Masked()
			t.routes[c] = e
			if c.Addr().Is4() {
				t.lens4 = append(t.lens4, c.Bits())
			} else {
				t.lens6 = append(t.lens6, c.Bits())
			}
		}
	}
	desc := func(a, b int) int { return b - a }
	slices.SortFunc(t.lens4, desc)
	slices.SortFunc(t.lens6, desc)
	t.lens4 = slices.Compact(t.lens4)
	t.lens6 = slices.Compact(t.lens6)
	return t
}

// lookup returns the peer owning the longest prefix that contains dst.
func (t *table) lookup(dst netip.Addr) *peerEntry {
	lens := t.lens4
	if dst.Is6() {
		lens = t.lens6
	}
	for _, l := range lens {
		p, err := dst.Prefix(l)
		if err != nil {
			continue
		}
		if e := t.routes[p]; e != nil {
			return e
		}
	}
	return nil
}

// peerAt returns the peer whose underlay address is a.
func (t *table) peerAt(a netip.Addr) *peerEntry {
	return t.byUnderlay[a.Unmap()]
}
