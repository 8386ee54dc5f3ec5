package netpol

// The compiler: a State and this node's name in, a Ruleset out. Pure, so
// every NetworkPolicy case is a table test (compile_test.go) and the
// nftables writer stays a translation of a data structure.

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Ruleset is the desired enforcement on one node.
type Ruleset struct {
	// Sets maps a set name to its members, sorted, merged, disjoint.
	Sets map[string][]Range
	// Policies are in Key order; one per policy of the State that
	// compiled, whether or not it selects a pod here.
	Policies []Compiled
	// IngressGroups and EgressGroups partition the addresses of this
	// node's isolated pods by the policies that select them, for the
	// dispatch: a packet's pod address finds its group in one lookup
	// (a verdict map), and the group's chain runs those policies' allow
	// lists in Key order, then drops. Sorted by Name.
	IngressGroups, EgressGroups []Group
}

// Group is the addresses selected, in one direction, by the same policies.
type Group struct {
	// Name names the group's chains: "g" and 10 hex digits of
	// SHA-256 of the direction and the policy IDs, stable while the
	// same policies select the same pods.
	Name string
	// Policies are the IDs of the selecting policies in Key order; a
	// drop is counted on the first.
	Policies []string
	Members  []Range
}

// Compiled is one policy's part of a Ruleset.
type Compiled struct {
	Key string // namespace/name
	// ID names the policy's chains, sets and counters in nftables: "p"
	// and 10 hex digits of SHA-256(Key), stable across restarts and
	// independent of other policies, so counters stay with their policy.
	ID string
	// Selected is the set of the addresses of the pods on this node the
	// policy selects; empty (no set) when it selects none here, and then
	// nothing of the policy is written but its counters.
	Selected string
	// Ingress and Egress say whether it isolates in that direction; the
	// matches are what it allows (nil: nothing, a default deny).
	Ingress, Egress           bool
	IngressAllow, EgressAllow []Match
}

// Match allows packets that match all its non-zero fields.
type Match struct {
	// Peer is the set of the remote addresses (the source of ingress,
	// the destination of egress); "" is any address.
	Peer string
	// Local is the set of the local pods' addresses a named ingress port
	// resolved on (the destination must be one of them); "" is any.
	Local string
	// Proto is the IP protocol; 0 is any (and then there is no port).
	Proto Proto
	// Port..EndPort is the destination port range; 0 is any port.
	Port, EndPort uint16
}

// Rules counts the nftables rules the Ruleset becomes, per address
// family: the allow matches of each policy, and per direction the
// dispatch (one verdict map lookup) and each group's jumps and drop; for
// status.
func (r *Ruleset) Rules() int {
	n := 0
	for _, f := range Families {
		for _, p := range r.Policies {
			if !r.Has(p.Selected, f) {
				continue
			}
			for _, d := range []struct {
				on    bool
				allow []Match
			}{{p.Ingress, p.IngressAllow}, {p.Egress, p.EgressAllow}} {
				for _, m := range d.allow {
					if d.on && r.Applies(m, f) {
						n++
					}
				}
			}
		}
		for _, gs := range [][]Group{r.IngressGroups, r.EgressGroups} {
			any := false
			for _, g := range gs {
				if g.Has(f) {
					any = true
					n += len(g.Policies) + 1
				}
			}
			if any {
				n++
			}
		}
	}
	return n
}

// Has reports whether g has an address of family f.
func (g Group) Has(f Family) bool {
	for _, m := range g.Members {
		if f.of(m.From) {
			return true
		}
	}
	return false
}

// Family is an IP address family of the table's rules.
type Family uint8

// The families, in the order the writer emits them.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Families are both address families.
var Families = []Family{IPv4, IPv6}

func (f Family) of(a netip.Addr) bool { return a.Is4() == (f == IPv4) }

// Members are the ranges of set name in family f.
func (r *Ruleset) Members(name string, f Family) []Range {
	var out []Range
	for _, m := range r.Sets[name] {
		if f.of(m.From) {
			out = append(out, m)
		}
	}
	return out
}

// Has reports whether set name has a member in family f (an empty set
// matches no packet of the family, and its rules are not written).
func (r *Ruleset) Has(name string, f Family) bool {
	for _, m := range r.Sets[name] {
		if f.of(m.From) {
			return true
		}
	}
	return false
}

// Applies reports whether m can match a packet of family f: each set it
// names has members in f.
func (r *Ruleset) Applies(m Match, f Family) bool {
	return (m.Peer == "" || r.Has(m.Peer, f)) && (m.Local == "" || r.Has(m.Local, f))
}

// Range is an inclusive range of addresses of one family. A set holds
// ranges of both families, IPv4 first; the writer splits it in two.
type Range struct{ From, To netip.Addr }

func (r Range) String() string {
	if r.From == r.To {
		return r.From.String()
	}
	return r.From.String() + "-" + r.To.String()
}

// PolicyID is the nftables name stem of the policy namespace/name.
func PolicyID(key string) string {
	h := sha256.Sum256([]byte(key))
	return "p" + hex.EncodeToString(h[:5])
}

// Compile computes node's Ruleset. A policy that cannot be compiled (a bad
// selector, a bad CIDR: the API server rejects these, a hand-made State may
// not) is reported in errs and left out whole; a bad peer inside an
// otherwise good policy matches nothing, so the policy stays as strict as
// it can be (fail closed).
func Compile(node string, st State) (rs *Ruleset, errs []error) {
	c := compiler{node: node, st: st, rs: &Ruleset{Sets: map[string][]Range{}}, nsLabels: map[string]map[string]string{}}
	for _, ns := range st.Namespaces {
		c.nsLabels[ns.Name] = ns.Labels
	}
	in, eg := map[netip.Addr][]string{}, map[netip.Addr][]string{}
	pols := slices.Clone(st.Policies)
	slices.SortFunc(pols, func(a, b Policy) int { return cmp.Compare(a.Key(), b.Key()) })
	for _, p := range pols {
		cp, local, err := c.policy(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("NetworkPolicy %s: %w", p.Key(), err))
			continue
		}
		c.rs.Policies = append(c.rs.Policies, cp)
		for _, pod := range local {
			for _, a := range pod.IPs {
				if cp.Ingress {
					in[a] = append(in[a], cp.ID)
				}
				if cp.Egress {
					eg[a] = append(eg[a], cp.ID)
				}
			}
		}
	}
	c.rs.IngressGroups, c.rs.EgressGroups = groups("in", in), groups("eg", eg)
	return c.rs, errs
}

// groups gathers addresses by their list of policy IDs.
func groups(dir string, byAddr map[netip.Addr][]string) []Group {
	byList := map[string]*Group{}
	for a, ids := range byAddr {
		key := dir + " " + strings.Join(ids, " ")
		g, ok := byList[key]
		if !ok {
			h := sha256.Sum256([]byte(key))
			g = &Group{Name: "g" + hex.EncodeToString(h[:5]), Policies: ids}
			byList[key] = g
		}
		g.Members = append(g.Members, Range{a, a})
	}
	out := make([]Group, 0, len(byList))
	for _, g := range byList {
		g.Members = merge(g.Members)
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b Group) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

type compiler struct {
	node     string
	st       State
	rs       *Ruleset
	nsLabels map[string]map[string]string
}

// policy compiles p; local are the pods here it selects (none when it
// isolates in no direction).
func (c *compiler) policy(p Policy) (cp Compiled, local []Pod, err error) {
	if err := p.PodSelector.Validate(); err != nil {
		return Compiled{}, nil, fmt.Errorf("podSelector: %w", err)
	}
	cp = Compiled{Key: p.Key(), ID: PolicyID(p.Key()), Ingress: p.Ingress, Egress: p.Egress}
	for _, pod := range c.st.Pods {
		if pod.Node == c.node && pod.Namespace == p.Namespace && len(pod.IPs) > 0 && p.PodSelector.Matches(pod.Labels) {
			local = append(local, pod)
		}
	}
	if len(local) == 0 || !(p.Ingress || p.Egress) {
		return cp, nil, nil
	}
	cp.Selected = c.set(cp.ID+"-sel", podRanges(local))
	if p.Ingress {
		cp.IngressAllow, err = c.rules(p, cp.ID+"-i", p.IngressRules, local, true)
		if err != nil {
			return Compiled{}, nil, err
		}
	}
	if p.Egress {
		cp.EgressAllow, err = c.rules(p, cp.ID+"-e", p.EgressRules, local, false)
		if err != nil {
			return Compiled{}, nil, err
		}
	}
	return cp, local, nil
}

// rules compiles one direction's rules; local are the selected pods here.
func (c *compiler) rules(p Policy, stem string, rules []Rule, local []Pod, ingress bool) ([]Match, error) {
	var out []Match
	for i, r := range rules {
		name := fmt.Sprintf("%s%d", stem, i)
		peers, any, err := c.peers(p, r.Peers)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i, err)
		}
		peerSet := ""
		if !any {
			if len(peers) == 0 {
				continue // no peer exists now: the rule allows nothing
			}
			peerSet = c.set(name, peers)
		}
		if len(r.Ports) == 0 {
			out = append(out, Match{Peer: peerSet})
			continue
		}
		for j, pt := range r.Ports {
			switch {
			case pt.Name == "":
				if pt.EndPort != 0 && (pt.Port == 0 || pt.EndPort < pt.Port) {
					return nil, fmt.Errorf("rule %d port %d: endPort %d without a port at or below it", i, j, pt.EndPort)
				}
				end := pt.EndPort
				if end == 0 {
					end = pt.Port
				}
				out = append(out, Match{Peer: peerSet, Proto: pt.Proto, Port: pt.Port, EndPort: end})
			case ingress:
				// The name resolves on the destination: the
				// selected pods here, port by port.
				byPort := map[uint16][]Pod{}
				for _, pod := range local {
					if n, ok := namedPort(pod, pt); ok {
						byPort[n] = append(byPort[n], pod)
					}
				}
				for _, n := range sortedKeys(byPort) {
					set := c.set(fmt.Sprintf("%sn%d-%d", name, j, n), podRanges(byPort[n]))
					out = append(out, Match{Peer: peerSet, Local: set, Proto: pt.Proto, Port: n, EndPort: n})
				}
			default:
				// Egress: the name resolves on the destination
				// pod, any pod the peers match (each of its
				// addresses the peers match: an ipBlock of one
				// family admits that family only).
				byPort := map[uint16][]Range{}
				for _, pod := range c.st.Pods {
					n, ok := namedPort(pod, pt)
					if !ok {
						continue
					}
					for _, a := range pod.IPs {
						if any || contains(peers, a) {
							byPort[n] = append(byPort[n], Range{a, a})
						}
					}
				}
				for _, n := range sortedKeys(byPort) {
					set := c.set(fmt.Sprintf("%sn%d-%d", name, j, n), byPort[n])
					out = append(out, Match{Peer: set, Proto: pt.Proto, Port: n, EndPort: n})
				}
			}
		}
	}
	return out, nil
}

// peers resolves a rule's peers to addresses; any is true for an empty
// list (all sources or destinations).
func (c *compiler) peers(p Policy, peers []Peer) (rs []Range, any bool, err error) {
	if len(peers) == 0 {
		return nil, true, nil
	}
	var all []Range
	for i, pe := range peers {
		if pe.Block != nil {
			b := pe.Block
			if !b.CIDR.IsValid() {
				return nil, false, fmt.Errorf("peer %d: ipBlock without a CIDR", i)
			}
			r := []Range{prefixRange(b.CIDR.Masked())}
			for j, e := range b.Except {
				if !e.IsValid() || e.Addr().Is4() != b.CIDR.Addr().Is4() {
					// The API server refuses an except outside
					// the CIDR; leaving one out would admit what
					// it was meant to keep out.
					return nil, false, fmt.Errorf("peer %d: ipBlock %s: except %d (%s) is not of its family", i, b.CIDR, j, e)
				}
				r = subtract(r, prefixRange(e.Masked()))
			}
			all = append(all, r...)
			continue
		}
		for _, s := range []*Selector{pe.Pods, pe.Namespaces} {
			if s != nil {
				if err := s.Validate(); err != nil {
					return nil, false, fmt.Errorf("peer %d: %w", i, err)
				}
			}
		}
		for _, pod := range c.st.Pods {
			if pe.Namespaces == nil {
				if pod.Namespace != p.Namespace {
					continue
				}
			} else {
				labels, ok := c.nsLabels[pod.Namespace]
				if !ok || !pe.Namespaces.Matches(labels) {
					continue
				}
			}
			if pe.Pods != nil && !pe.Pods.Matches(pod.Labels) {
				continue
			}
			for _, a := range pod.IPs {
				all = append(all, Range{a, a})
			}
		}
	}
	return merge(all), false, nil
}

// set records a set and returns its name; an identical set of the same
// policy is not shared (names stay positional and stable).
func (c *compiler) set(name string, members []Range) string {
	c.rs.Sets[name] = merge(members)
	return name
}

func namedPort(pod Pod, pt Port) (uint16, bool) {
	for _, np := range pod.Ports {
		if np.Name == pt.Name && np.Proto == pt.Proto {
			return np.Port, true
		}
	}
	return 0, false
}

func sortedKeys[V any](m map[uint16]V) []uint16 {
	ks := make([]uint16, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func podRanges(pods []Pod) []Range {
	rs := make([]Range, 0, len(pods))
	for _, p := range pods {
		for _, a := range p.IPs {
			rs = append(rs, Range{a, a})
		}
	}
	return rs
}

// prefixRange is the first and the last address of p (masked).
func prefixRange(p netip.Prefix) Range {
	last := p.Addr().AsSlice()
	for b := p.Bits(); b < len(last)*8; b++ {
		last[b/8] |= 0x80 >> (b % 8)
	}
	to, _ := netip.AddrFromSlice(last)
	return Range{p.Addr(), to}
}

// adjacent reports whether b starts at or before the address after a
// ends (same family; the top address of a family has no successor).
func adjacent(a, b Range) bool {
	if b.From.Compare(a.To) <= 0 {
		return true
	}
	next := a.To.Next()
	return next.IsValid() && next == b.From
}

// merge sorts ranges (IPv4 first: netip orders by family) and joins
// overlapping and adjacent ones: nftables interval sets refuse overlaps.
func merge(rs []Range) []Range {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b Range) int { return a.From.Compare(b.From) })
	out := []Range{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if last.From.Is4() == r.From.Is4() && adjacent(*last, r) {
			if r.To.Compare(last.To) > 0 {
				last.To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtract removes e from every range of rs (ranges of another family
// stay whole).
func subtract(rs []Range, e Range) []Range {
	var out []Range
	for _, r := range rs {
		if r.From.Is4() != e.From.Is4() || e.To.Less(r.From) || r.To.Less(e.From) {
			out = append(out, r)
			continue
		}
		if r.From.Less(e.From) {
			out = append(out, Range{r.From, e.From.Prev()})
		}
		if e.To.Less(r.To) {
			out = append(out, Range{e.To.Next(), r.To})
		}
	}
	return out
}

// contains reports whether a is in rs (merged, sorted).
func contains(rs []Range, a netip.Addr) bool {
	i, _ := slices.BinarySearchFunc(rs, a, func(r Range, a netip.Addr) int {
		switch {
		case r.To.Less(a):
			return -1
		case a.Less(r.From):
			return 1
		}
		return 0
	})
	return i < len(rs) && rs[i].From.Compare(a) <= 0 && a.Compare(rs[i].To) <= 0
}
