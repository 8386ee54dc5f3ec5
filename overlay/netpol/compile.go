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
)

// Ruleset is the desired enforcement on one node.
type Ruleset struct {
	// Sets maps a set name to its members, sorted, merged, disjoint.
	Sets map[string][]Range
	// Policies are in Key order; one per policy of the State that
	// compiled, whether or not it selects a pod here.
	Policies []Compiled
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

// Rules counts the nftables rules the Ruleset becomes (allow matches, the
// dispatch jump and the drop of each direction), for status.
func (r *Ruleset) Rules() int {
	n := 0
	for _, p := range r.Policies {
		if p.Selected == "" {
			continue
		}
		if p.Ingress {
			n += len(p.IngressAllow) + 2
		}
		if p.Egress {
			n += len(p.EgressAllow) + 2
		}
	}
	return n
}

// Range is an inclusive range of IPv4 addresses.
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
	pols := slices.Clone(st.Policies)
	slices.SortFunc(pols, func(a, b Policy) int { return cmp.Compare(a.Key(), b.Key()) })
	for _, p := range pols {
		cp, err := c.policy(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("NetworkPolicy %s: %w", p.Key(), err))
			continue
		}
		c.rs.Policies = append(c.rs.Policies, cp)
	}
	return c.rs, errs
}

type compiler struct {
	node     string
	st       State
	rs       *Ruleset
	nsLabels map[string]map[string]string
}

func (c *compiler) policy(p Policy) (Compiled, error) {
	if err := p.PodSelector.Validate(); err != nil {
		return Compiled{}, fmt.Errorf("podSelector: %w", err)
	}
	cp := Compiled{Key: p.Key(), ID: PolicyID(p.Key()), Ingress: p.Ingress, Egress: p.Egress}
	var local []Pod
	for _, pod := range c.st.Pods {
		if pod.Node == c.node && pod.Namespace == p.Namespace && pod.IP.Is4() && p.PodSelector.Matches(pod.Labels) {
			local = append(local, pod)
		}
	}
	if len(local) == 0 || !(p.Ingress || p.Egress) {
		return cp, nil
	}
	cp.Selected = c.set(cp.ID+"-sel", podRanges(local))
	var err error
	if p.Ingress {
		cp.IngressAllow, err = c.rules(p, cp.ID+"-i", p.IngressRules, local, true)
		if err != nil {
			return Compiled{}, err
		}
	}
	if p.Egress {
		cp.EgressAllow, err = c.rules(p, cp.ID+"-e", p.EgressRules, local, false)
		if err != nil {
			return Compiled{}, err
		}
	}
	return cp, nil
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
				// pod, any pod the peers match.
				byPort := map[uint16][]Pod{}
				for _, pod := range c.st.Pods {
					if !pod.IP.Is4() || (!any && !contains(peers, pod.IP)) {
						continue
					}
					if n, ok := namedPort(pod, pt); ok {
						byPort[n] = append(byPort[n], pod)
					}
				}
				for _, n := range sortedKeys(byPort) {
					set := c.set(fmt.Sprintf("%sn%d-%d", name, j, n), podRanges(byPort[n]))
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
			if !b.CIDR.Addr().Is4() {
				continue // weft's pods are IPv4: an IPv6 block matches none of their packets
			}
			r := []Range{prefixRange(b.CIDR.Masked())}
			for _, e := range b.Except {
				if e.Addr().Is4() {
					r = subtract(r, prefixRange(e.Masked()))
				}
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
			if !pod.IP.Is4() {
				continue
			}
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
			all = append(all, Range{pod.IP, pod.IP})
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
		rs = append(rs, Range{p.IP, p.IP})
	}
	return rs
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func prefixRange(p netip.Prefix) Range {
	from := u32(p.Addr())
	to := from | uint32(uint64(1)<<(32-p.Bits())-1)
	return Range{addr(from), addr(to)}
}

// merge sorts ranges and joins overlapping and adjacent ones: nftables
// interval sets refuse overlaps.
func merge(rs []Range) []Range {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b Range) int { return cmp.Compare(u32(a.From), u32(b.From)) })
	out := []Range{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if uint64(u32(r.From)) <= uint64(u32(last.To))+1 {
			if u32(r.To) > u32(last.To) {
				last.To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtract removes e from every range of rs.
func subtract(rs []Range, e Range) []Range {
	var out []Range
	ef, et := u32(e.From), u32(e.To)
	for _, r := range rs {
		f, t := u32(r.From), u32(r.To)
		if et < f || ef > t {
			out = append(out, r)
			continue
		}
		if ef > f {
			out = append(out, Range{addr(f), addr(ef - 1)})
		}
		if et < t {
			out = append(out, Range{addr(et + 1), addr(t)})
		}
	}
	return out
}

func contains(rs []Range, a netip.Addr) bool {
	v := u32(a)
	i, _ := slices.BinarySearchFunc(rs, v, func(r Range, v uint32) int {
		switch {
		case u32(r.To) < v:
			return -1
		case u32(r.From) > v:
			return 1
		}
		return 0
	})
	return i < len(rs) && u32(rs[i].From) <= v && v <= u32(rs[i].To)
}
