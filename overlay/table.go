package overlay

import (
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
}

// peerEntry is a Peer plus what the packet path needs precomputed.
type peerEntry struct {
	Peer
	ep   conn.Endpoint // parsed once per snapshot, not per packet
	pmtu *pathMTU      // shared by every snapshot holding this peer
}

// owns reports whether a is inside one of the peer's pod CIDRs.
func (p *peerEntry) owns(a netip.Addr) bool {
	for _, c := range p.PodCIDRs {
		if c.Contains(a) {
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
		t.byUnderlay[e.Underlay.Addr().Unmap()] = e
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
