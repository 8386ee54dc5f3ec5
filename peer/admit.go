package peer

// Admission: the check between gossip and the datapath. Membership already
// drops records that do not decode or fail Record.Validate; Admit adds the
// checks that need cluster knowledge (the cluster CIDRs, this node's own
// record, the other peers), so that one bad or conflicting record can
// never steer traffic. It is a pure function of its inputs, so every node
// given the same snapshot reaches the same verdict; Gate wraps it with the
// state weftd needs (last good records, counters, rate-limited logs).

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Pod CIDR size bounds. A node CIDR must leave room for the gateway and
// at least one pod (IPv4: /30 at most); IPv6 nodes get /64-ish blocks in
// practice, /126 is the analogous floor.
const (
	MaxPodCIDRBits4 = 30
	MaxPodCIDRBits6 = 126
)

// Rejection is a peer record Admit refused, and why.
type Rejection struct {
	Peer   Peer
	Reason string
}

// Admit splits a snapshot of live peers into the records that may reach
// the datapath and the ones that may not. A record is refused if:
//
//   - its underlay address is unusable (loopback, unspecified, multicast,
//     link-local, the limited broadcast) or, in this node's site, equals
//     this node's (other sites may use the same private range); its public
//     address equals this node's;
//   - a pod CIDR is not inside one of clusterCIDRs of its family, is wider
//     than that cluster CIDR, or narrower than MaxPodCIDRBits4/6;
//   - a pod CIDR overlaps one of self's (this node keeps its own block);
//   - a pod CIDR overlaps one of an admitted peer with a lower name. Peers
//     are considered in name order, so the lowest name wins a conflict on
//     every node alike, and a peer refused for a conflict does not block
//     anyone else.
//
// A record without pod CIDRs (a node still claiming one) is admitted: it
// routes nothing. snap need not be sorted; accepted comes back in name
// order. Admit does not modify snap.
func Admit(snap []Peer, self Record, clusterCIDRs []netip.Prefix) (accepted []Peer, rejected []Rejection) {
	order := slices.Clone(snap)
	slices.SortStableFunc(order, func(a, b Peer) int { return strings.Compare(a.Record.Name, b.Record.Name) })
	var owned []owner
	for _, p := range order {
		if reason := check(p.Record, self, clusterCIDRs, owned); reason != "" {
			rejected = append(rejected, Rejection{Peer: p, Reason: reason})
			continue
		}
		accepted = append(accepted, p)
		for _, c := range p.Record.PodCIDRs {
			owned = append(owned, owner{name: p.Record.Name, cidr: c})
		}
	}
	return accepted, rejected
}

type owner struct {
	name string
	cidr netip.Prefix
}

// check returns why r may not be admitted, or "".
func check(r, self Record, clusterCIDRs []netip.Prefix, owned []owner) string {
	if r.Name == self.Name {
		return "record carries this node's name"
	}
	a := r.Underlay.Addr()
	switch {
	case !a.IsValid() || r.Underlay.Port() == 0:
		return fmt.Sprintf("invalid underlay address %s", r.Underlay)
	case a.IsLoopback(), a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalUnicast(),
		a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Sprintf("unusable underlay address %s", a)
	case r.Site == self.Site && self.Underlay.Addr().IsValid() && a.Unmap() == self.Underlay.Addr().Unmap():
		// Across sites internal addresses may overlap (two clouds on the
		// same private range): only a site-mate's must differ from ours.
		return fmt.Sprintf("underlay address %s is this node's", a)
	case r.Public.IsValid() && r.Public == self.Public:
		return fmt.Sprintf("public address %s is this node's", r.Public)
	}
	for _, c := range r.PodCIDRs {
		if !c.IsValid() || c != c.Masked() {
			return fmt.Sprintf("pod CIDR %s is not a masked prefix", c)
		}
		max := MaxPodCIDRBits4
		if c.Addr().Is6() {
			max = MaxPodCIDRBits6
		}
		if c.Bits() > max {
			return fmt.Sprintf("pod CIDR %s is narrower than /%d", c, max)
		}
		inside := false
		for _, cl := range clusterCIDRs {
			if cl.Addr().BitLen() == c.Addr().BitLen() && c.Bits() >= cl.Bits() && cl.Contains(c.Addr()) {
				inside = true
				break
			}
		}
		if !inside {
			return fmt.Sprintf("pod CIDR %s is outside the cluster CIDRs %v", c, clusterCIDRs)
		}
		for _, s := range self.PodCIDRs {
			if s.Overlaps(c) {
				return fmt.Sprintf("pod CIDR %s overlaps this node's %s", c, s)
			}
		}
		for _, o := range owned {
			if o.cidr.Overlaps(c) {
				return fmt.Sprintf("pod CIDR %s overlaps %s of %s (lower name wins)", c, o.cidr, o.name)
			}
		}
	}
	return ""
}

// Gate is the stateful admission weftd runs on every membership snapshot:
// Admit, plus the rule that the last good state stays in force. When a
// peer that was admitted before now presents a record Admit refuses, its
// last admitted record is tried in its place; if that one still passes,
// the peer keeps routing on it. A peer absent from the snapshot is
// forgotten (its routes go, as with any departure).
//
// Refusals are counted once per distinct (peer, reason) and logged at
// most once per peer per LogInterval.
type Gate struct {
	cluster     []netip.Prefix
	log         *slog.Logger
	logInterval time.Duration

	rejected atomic.Uint64 // distinct refusals

	mu       sync.Mutex
	lastGood map[string]Record
	lastWhy  map[string]string    // current refusal reason per peer
	lastLog  map[string]time.Time // when each peer's refusal was last logged
	current  []Rejection          // refusals in the last Apply, for status
}

// NewGate returns a Gate for clusterCIDRs. A nil logger means slog.Default().
func NewGate(clusterCIDRs []netip.Prefix, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.Default()
	}
	return &Gate{
		cluster:     slices.Clone(clusterCIDRs),
		log:         log.With("component", "admission"),
		logInterval: rejectLogInterval,
		lastGood:    map[string]Record{},
		lastWhy:     map[string]string{},
		lastLog:     map[string]time.Time{},
	}
}

// Apply returns the peers of snap that may reach the datapath, in name
// order. Apply is safe for concurrent use but meant for one loop.
func (g *Gate) Apply(snap []Peer, self Record) []Peer {
	g.mu.Lock()
	defer g.mu.Unlock()
	accepted, rejected := Admit(snap, self, g.cluster)
	refusals := rejected // what is reported: the records as announced
	if len(rejected) > 0 {
		// Retry refused peers on their last good record, if it differs.
		retry := slices.Clone(snap)
		swapped := false
		for i, p := range retry {
			if good, ok := g.lastGood[p.Record.Name]; ok && !good.Equal(p.Record) && refused(rejected, p.Record.Name) {
				retry[i].Record = good
				swapped = true
			}
		}
		if swapped {
			accepted, _ = Admit(retry, self, g.cluster)
		}
	}

	now := time.Now()
	present := make(map[string]bool, len(snap))
	for _, p := range snap {
		present[p.Record.Name] = true
	}
	for name := range g.lastGood {
		if !present[name] {
			delete(g.lastGood, name)
		}
	}
	for _, p := range accepted {
		g.lastGood[p.Record.Name] = p.Record
		if !refused(refusals, p.Record.Name) {
			delete(g.lastWhy, p.Record.Name)
		}
	}
	for name := range g.lastWhy {
		if !present[name] {
			delete(g.lastWhy, name)
			delete(g.lastLog, name)
		}
	}
	for _, r := range refusals {
		name := r.Peer.Record.Name
		if g.lastWhy[name] != r.Reason {
			g.lastWhy[name] = r.Reason
			g.rejected.Add(1)
		}
		if t, ok := g.lastLog[name]; !ok || now.Sub(t) >= g.logInterval {
			g.lastLog[name] = now
			kept := slices.ContainsFunc(accepted, func(p Peer) bool { return p.Record.Name == name })
			g.log.Warn("refused peer record", "peer", name, "reason", r.Reason,
				"generation", r.Peer.Record.Generation, "keeping_last_good", kept)
		}
	}
	g.current = refusals
	return accepted
}

func refused(rs []Rejection, name string) bool {
	return slices.ContainsFunc(rs, func(r Rejection) bool { return r.Peer.Record.Name == name })
}

// Rejected is the number of distinct refusals so far.
func (g *Gate) Rejected() uint64 { return g.rejected.Load() }

// Current returns the refusals of the latest Apply.
func (g *Gate) Current() []Rejection {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.current)
}
