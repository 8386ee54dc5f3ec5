package main

// How this node reaches each peer across NAT (README: Across clouds and
// NAT). A node has an internal address (Record.Underlay: bound, used
// inside its site) and may have a public one (Record.Public: used from
// other sites). For each admitted peer:
//
//   - same site: its internal address;
//   - another site, peer has a public address: that address, and if this
//     node is behind NAT (peer.CapBehindNAT), a persistent WireGuard
//     keepalive, which keeps this node's NAT mapping open for the peer's
//     packets;
//   - another site, peer without a public address and not behind NAT (a
//     routed network, the plain lab): its internal address;
//   - another site, peer behind NAT, this node has a public address: no
//     endpoint; the peer's keepalives reach us and WireGuard answers where
//     they came from (roaming), which weft's updates never overwrite;
//   - another site, peer behind NAT, this node without a public address:
//     through a relay, a peer with a
//     public address in a third site that both can reach, picked the same
//     way by both ends (rendezvous hashing over the pair), so that each
//     end's WireGuard expects the other's pod CIDR from the relay. The
//     relay forwards in its kernel (weft0 in, weft0 out), so traffic is
//     encrypted hop by hop: the relay, a cluster node, sees it in the clear.
//
// Underlay families. A node has an underlay address in one family
// (Record.Underlay) or one in each (and Record.AltUnderlay). Every address
// above is taken in a family both ends have: the internal address of the
// peer's family that this node has too (IPv4 when they share both, the
// same choice at both ends, so each end's VXLAN receiver expects the
// other's packets from the address they are sent from); a public address
// only if this node has its family. A pair with no family in common
// (IPv4 only and IPv6 only) is unreachable: it is logged and shown in
// `weftctl status` with that reason; gossip between the two still flows
// through the nodes that have both (peer: transport.go).

import (
	"fmt"
	"hash/fnv"
	"net/netip"

	"github.com/weftnet/weft/peer"
)

// reach is how this node reaches one peer.
type reach struct {
	// addr is the peer's address from here; invalid when the peer is
	// reached only where its packets come from (passive) or through relay.
	addr netip.Addr
	// passive: no address known; WireGuard learns it from the peer.
	passive bool
	// keepalive: this node must keep its NAT mapping toward the peer open.
	keepalive bool
	// relay is the name of the peer that carries traffic to this one, or
	// "" for direct; noRelay says one is needed but none is usable.
	relay   string
	noRelay bool
	// why says why the peer cannot be reached at all (no relay can
	// help); "" otherwise.
	why string
}

// families is the set of underlay families a record has addresses in.
type families struct{ v4, v6 bool }

func familiesOf(r peer.Record) families {
	var f families
	for _, a := range []netip.Addr{r.Underlay.Addr(), r.AltUnderlay} {
		if a.IsValid() {
			if a.Unmap().Is4() {
				f.v4 = true
			} else {
				f.v6 = true
			}
		}
	}
	return f
}

func (f families) has(a netip.Addr) bool {
	if a.Unmap().Is4() {
		return f.v4
	}
	return f.v6
}

func (f families) String() string {
	switch {
	case f.v4 && f.v6:
		return "IPv4 and IPv6"
	case f.v6:
		return "IPv6 only"
	}
	return "IPv4 only"
}

// internalAddr is r's internal address in the family self uses toward
// it (see the file's note), or invalid when they share no family.
func internalAddr(self, r peer.Record) netip.Addr {
	mine, theirs := familiesOf(self), familiesOf(r)
	var pick netip.Addr
	for _, a := range []netip.Addr{r.Underlay.Addr(), r.AltUnderlay} {
		if !a.IsValid() || !mine.has(a) {
			continue
		}
		if !pick.IsValid() || (mine.v4 && theirs.v4 && a.Unmap().Is4()) {
			pick = a
		}
	}
	return pick
}

// crossSite reports whether r is in another site than self.
func crossSite(self, r peer.Record) bool { return r.Site != self.Site }

// reachOf decides how self reaches r, without relays.
func reachOf(self, r peer.Record) reach {
	internal := internalAddr(self, r)
	public := r.Public.IsValid() && familiesOf(self).has(r.Public)
	switch {
	case !internal.IsValid() && !public:
		return reach{why: fmt.Sprintf("no common underlay family: this node has %s, the peer %s", familiesOf(self), familiesOf(r))}
	case !crossSite(self, r) && internal.IsValid():
		return reach{addr: internal}
	case public:
		return reach{addr: r.Public, keepalive: self.Caps&peer.CapBehindNAT != 0}
	case r.Caps&peer.CapBehindNAT == 0 && !(r.Public.IsValid() && internal.Is4()):
		// Routed: no NAT seen. A node with a public address never looks
		// for NAT; its IPv4 address beside a public one (of a family this
		// node lacks) is the private side of that NAT, not routed.
		return reach{addr: internal}
	case self.Public.IsValid() && familiesOf(r).has(self.Public):
		return reach{passive: true}
	}
	return reach{noRelay: true}
}

// planReach decides, for every admitted peer, how self reaches it, and
// picks relays for the pairs that need one (see the file's note).
func planReach(self peer.Record, admitted []peer.Peer) map[string]reach {
	plan := make(map[string]reach, len(admitted))
	for _, a := range admitted {
		plan[a.Record.Name] = reachOf(self, a.Record)
	}
	for _, a := range admitted {
		r := a.Record
		rc := plan[r.Name]
		if !rc.noRelay {
			continue
		}
		if best := pickRelay(self, r, admitted); best != "" {
			rc.noRelay, rc.relay = false, best
		}
		plan[r.Name] = rc
	}
	return plan
}

// pickRelay returns the relay for the pair (self, r): among the admitted
// peers with a public address (of a family both ends have) that relay, run WireGuard and sit in
// neither end's site (an end's site-mate would reach it over plain VXLAN,
// whose receiver refuses a source outside the sender's pod CIDR), the one
// with the highest hash of the pair and its name. Both ends hash the same
// pair, so they agree whenever they see the same candidates.
func pickRelay(self, r peer.Record, admitted []peer.Peer) string {
	lo, hi := self.Name, r.Name
	if hi < lo {
		lo, hi = hi, lo
	}
	var best string
	var bestScore uint64
	for _, c := range admitted {
		cr := c.Record
		if !cr.Public.IsValid() || !familiesOf(self).has(cr.Public) || !familiesOf(r).has(cr.Public) || cr.Caps&peer.CapRelay == 0 || cr.Caps&peer.CapWireGuard == 0 || cr.Site == self.Site || cr.Site == r.Site {
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(lo))
		h.Write([]byte{0})
		h.Write([]byte(hi))
		h.Write([]byte{0})
		h.Write([]byte(cr.Name))
		if s := h.Sum64(); best == "" || s > bestScore || (s == bestScore && cr.Name < best) {
			best, bestScore = cr.Name, s
		}
	}
	return best
}
