package netpol

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// A small cluster: namespaces a (team=x) and b (team=y), pods on nodes
// n1 and n2.
func clusterState(pols ...Policy) State {
	pod := func(ns, name, node, ip string, labels map[string]string, ports ...NamedPort) Pod {
		return Pod{Namespace: ns, Name: name, Node: node, IPs: []netip.Addr{netip.MustParseAddr(ip)}, Labels: labels, Ports: ports}
	}
	return State{
		Namespaces: []Namespace{
			{Name: "a", Labels: map[string]string{"team": "x", "kubernetes.io/metadata.name": "a"}},
			{Name: "b", Labels: map[string]string{"team": "y", "kubernetes.io/metadata.name": "b"}},
		},
		Pods: []Pod{
			pod("a", "web1", "n1", "10.244.1.10", map[string]string{"app": "web"}, NamedPort{"http", TCP, 8080}),
			pod("a", "web2", "n2", "10.244.2.10", map[string]string{"app": "web"}, NamedPort{"http", TCP, 9090}),
			pod("a", "db", "n1", "10.244.1.11", map[string]string{"app": "db"}, NamedPort{"pg", TCP, 5432}, NamedPort{"dns", UDP, 53}),
			pod("b", "client", "n2", "10.244.2.20", map[string]string{"app": "client"}),
			pod("b", "web3", "n1", "10.244.1.12", map[string]string{"app": "web"}, NamedPort{"http", TCP, 7070}),
		},
		Policies: pols,
	}
}

func r(s string) Range {
	from, to, ok := strings.Cut(s, "-")
	if !ok {
		to = from
	}
	return Range{netip.MustParseAddr(from), netip.MustParseAddr(to)}
}

func rs(ss ...string) []Range {
	var out []Range
	for _, s := range ss {
		out = append(out, r(s))
	}
	return out
}

func selp(kv ...string) *Selector {
	s := &Selector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

// resolved is a compiled policy with set names replaced by their members,
// so the tables below say what is allowed, not how sets are named.
type resolvedMatch struct {
	Peer, Local   []Range // nil: any
	Proto         Proto
	Port, EndPort uint16
}

type resolved struct {
	Selected        []Range
	Ingress, Egress bool
	In, Out         []resolvedMatch
}

func resolve(rs *Ruleset, p Compiled) resolved {
	set := func(name string) []Range {
		if name == "" {
			return nil
		}
		return rs.Sets[name]
	}
	conv := func(ms []Match) []resolvedMatch {
		var out []resolvedMatch
		for _, m := range ms {
			out = append(out, resolvedMatch{Peer: set(m.Peer), Local: set(m.Local), Proto: m.Proto, Port: m.Port, EndPort: m.EndPort})
		}
		return out
	}
	return resolved{Selected: set(p.Selected), Ingress: p.Ingress, Egress: p.Egress, In: conv(p.IngressAllow), Out: conv(p.EgressAllow)}
}

func TestCompile(t *testing.T) {
	webPolicy := func(mod func(*Policy)) Policy {
		p := Policy{Namespace: "a", Name: "p", PodSelector: *selp("app", "web"), Ingress: true}
		mod(&p)
		return p
	}
	for _, tc := range []struct {
		name string
		node string
		pol  Policy
		want resolved
	}{
		{"default deny ingress selects local pods only", "n1",
			Policy{Namespace: "a", Name: "p", Ingress: true},
			resolved{Selected: rs("10.244.1.10-10.244.1.11"), Ingress: true}},
		{"no local pod selected: nothing written", "n2",
			webPolicy(func(p *Policy) { p.PodSelector = *selp("app", "db") }),
			resolved{Ingress: true}},
		{"allow all ingress: one match with no peer and no port", "n1",
			webPolicy(func(p *Policy) { p.IngressRules = []Rule{{}} }),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{}}}},
		{"podSelector peers are in the policy's namespace", "n1",
			webPolicy(func(p *Policy) { p.IngressRules = []Rule{{Peers: []Peer{{Pods: selp("app", "web")}}}} }),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("10.244.1.10", "10.244.2.10")}}}},
		{"namespaceSelector alone: every pod of the namespaces", "n1",
			webPolicy(func(p *Policy) { p.IngressRules = []Rule{{Peers: []Peer{{Namespaces: selp("team", "y")}}}} }),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("10.244.1.12", "10.244.2.20")}}}},
		{"namespaceSelector and podSelector together: both must hold", "n1",
			webPolicy(func(p *Policy) {
				p.IngressRules = []Rule{{Peers: []Peer{{Namespaces: &Selector{}, Pods: selp("app", "web")}}}}
			}),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("10.244.1.10", "10.244.1.12", "10.244.2.10")}}}},
		{"no pod matches the peer: the rule allows nothing", "n1",
			webPolicy(func(p *Policy) { p.IngressRules = []Rule{{Peers: []Peer{{Pods: selp("app", "nope")}}}} }),
			resolved{Selected: rs("10.244.1.10"), Ingress: true}},
		{"ipBlock with except", "n1",
			webPolicy(func(p *Policy) {
				p.IngressRules = []Rule{{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.0.0.0/24")}}}}}}
			}),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("10.0.1.0-10.243.255.255", "10.245.0.0-10.255.255.255")}}}},
		{"ipBlock 0.0.0.0/0 except one address: two ranges, the top one open", "n1",
			webPolicy(func(p *Policy) {
				p.IngressRules = []Rule{{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Except: []netip.Prefix{netip.MustParsePrefix("10.244.2.20/32")}}}}}}
			}),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("0.0.0.0-10.244.2.19", "10.244.2.21-255.255.255.255")}}}},
		{"an IPv6 block is IPv6 addresses only", "n1",
			webPolicy(func(p *Policy) {
				p.IngressRules = []Rule{{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("::/0")}}}}}
			}),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}}}},
		{"peers of a rule merge into one set", "n1",
			webPolicy(func(p *Policy) {
				p.IngressRules = []Rule{{Peers: []Peer{{Pods: selp("app", "db")}, {Block: &IPBlock{CIDR: netip.MustParsePrefix("10.244.1.8/30")}}}}}
			}),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("10.244.1.8-10.244.1.11")}}}},
		{"ports by number, range, protocol only; TCP UDP SCTP", "n1",
			webPolicy(func(p *Policy) {
				p.IngressRules = []Rule{{Ports: []Port{{Proto: TCP, Port: 80}, {Proto: UDP, Port: 1000, EndPort: 2000}, {Proto: SCTP}}}}
			}),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{
				{Proto: TCP, Port: 80, EndPort: 80}, {Proto: UDP, Port: 1000, EndPort: 2000}, {Proto: SCTP}}}},
		{"ingress named port resolves on the selected pods here", "n1",
			Policy{Namespace: "a", Name: "p", Ingress: true, IngressRules: []Rule{{Ports: []Port{{Proto: TCP, Name: "http"}, {Proto: UDP, Name: "http"}}}}},
			resolved{Selected: rs("10.244.1.10-10.244.1.11"), Ingress: true, In: []resolvedMatch{
				{Local: rs("10.244.1.10"), Proto: TCP, Port: 8080, EndPort: 8080}}}},
		{"egress named port resolves on the destination pods of the peers", "n2",
			Policy{Namespace: "b", Name: "p", PodSelector: *selp("app", "client"), Egress: true,
				EgressRules: []Rule{{Peers: []Peer{{Namespaces: selp("team", "x"), Pods: selp("app", "web")}}, Ports: []Port{{Proto: TCP, Name: "http"}}}}},
			resolved{Selected: rs("10.244.2.20"), Egress: true, Out: []resolvedMatch{
				{Peer: rs("10.244.1.10"), Proto: TCP, Port: 8080, EndPort: 8080},
				{Peer: rs("10.244.2.10"), Proto: TCP, Port: 9090, EndPort: 9090}}}},
		{"egress named port with no peers: any pod with the port", "n1",
			Policy{Namespace: "a", Name: "p", PodSelector: *selp("app", "db"), Egress: true,
				EgressRules: []Rule{{Ports: []Port{{Proto: TCP, Name: "http"}}}}},
			resolved{Selected: rs("10.244.1.11"), Egress: true, Out: []resolvedMatch{
				{Peer: rs("10.244.1.12"), Proto: TCP, Port: 7070, EndPort: 7070},
				{Peer: rs("10.244.1.10"), Proto: TCP, Port: 8080, EndPort: 8080},
				{Peer: rs("10.244.2.10"), Proto: TCP, Port: 9090, EndPort: 9090}}}},
		{"egress deny all and ingress allow all in one policy", "n1",
			webPolicy(func(p *Policy) { p.Egress = true; p.IngressRules = []Rule{{}} }),
			resolved{Selected: rs("10.244.1.10"), Ingress: true, Egress: true, In: []resolvedMatch{{}}}},
		{"egress only: ingress rules ignored", "n1",
			webPolicy(func(p *Policy) { p.Ingress, p.Egress = false, true; p.IngressRules = []Rule{{}} }),
			resolved{Selected: rs("10.244.1.10"), Egress: true}},
		{"matchExpressions", "n1",
			Policy{Namespace: "a", Name: "p", Ingress: true, PodSelector: Selector{Exprs: []Requirement{{Key: "app", Op: NotIn, Values: []string{"db"}}}},
				IngressRules: []Rule{{Peers: []Peer{{Namespaces: &Selector{Exprs: []Requirement{{Key: "team", Op: In, Values: []string{"y", "z"}}}},
					Pods: &Selector{Exprs: []Requirement{{Key: "app", Op: Exists}}}}}}}},
			resolved{Selected: rs("10.244.1.10"), Ingress: true, In: []resolvedMatch{{Peer: rs("10.244.1.12", "10.244.2.20")}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, errs := Compile(tc.node, clusterState(tc.pol))
			if len(errs) > 0 || len(set.Policies) != 1 {
				t.Fatalf("errs %v, %d policies", errs, len(set.Policies))
			}
			got := resolve(set, set.Policies[0])
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if set.Policies[0].ID != PolicyID("a/p") && set.Policies[0].ID != PolicyID("b/p") {
				t.Errorf("ID %s", set.Policies[0].ID)
			}
		})
	}
}

// TestCompileBad: policies the API server would refuse are reported and
// left out; the others stay.
func TestCompileBad(t *testing.T) {
	good := Policy{Namespace: "a", Name: "good", Ingress: true}
	for _, bad := range []Policy{
		{Namespace: "a", Name: "bad", Ingress: true, PodSelector: Selector{Exprs: []Requirement{{Key: "k", Op: "Near"}}}},
		{Namespace: "a", Name: "bad", Ingress: true, PodSelector: Selector{Exprs: []Requirement{{Key: "k", Op: In}}}},
		{Namespace: "a", Name: "bad", Ingress: true, IngressRules: []Rule{{Peers: []Peer{{Pods: &Selector{Exprs: []Requirement{{Key: "k", Op: Exists, Values: []string{"v"}}}}}}}}},
		{Namespace: "a", Name: "bad", Ingress: true, IngressRules: []Rule{{Peers: []Peer{{Block: &IPBlock{}}}}}},
		{Namespace: "a", Name: "bad", Ingress: true, IngressRules: []Rule{{Ports: []Port{{Proto: TCP, Port: 90, EndPort: 80}}}}},
		// An except of the other family (or none at all) cannot be
		// left out: it would admit what it was meant to keep out.
		{Namespace: "a", Name: "bad", Ingress: true, IngressRules: []Rule{{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("::/0"), Except: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}}}}},
		{Namespace: "a", Name: "bad", Ingress: true, IngressRules: []Rule{{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{{}}}}}}}},
	} {
		set, errs := Compile("n1", clusterState(good, bad))
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), "a/bad") {
			t.Errorf("%+v: errs %v, want one naming a/bad", bad, errs)
		}
		if len(set.Policies) != 1 || set.Policies[0].Key != "a/good" {
			t.Errorf("%+v: policies %+v, want a/good alone", bad, set.Policies)
		}
	}
}

func TestRanges(t *testing.T) {
	if got := merge(rs("10.0.0.5", "10.0.0.1-10.0.0.4", "10.0.0.9", "10.0.0.7-10.0.0.8")); !reflect.DeepEqual(got, rs("10.0.0.1-10.0.0.5", "10.0.0.7-10.0.0.9")) {
		t.Errorf("merge: %v", got)
	}
	if got := subtract(rs("10.0.0.0-10.0.0.255"), r("10.0.0.0-10.0.0.9")); !reflect.DeepEqual(got, rs("10.0.0.10-10.0.0.255")) {
		t.Errorf("subtract: %v", got)
	}
	set := rs("10.0.0.1-10.0.0.5", "10.0.0.9")
	for ip, want := range map[string]bool{"10.0.0.0": false, "10.0.0.1": true, "10.0.0.5": true, "10.0.0.6": false, "10.0.0.9": true, "10.0.0.10": false} {
		if contains(set, netip.MustParseAddr(ip)) != want {
			t.Errorf("contains %s: want %v", ip, want)
		}
	}
	if got := prefixRange(netip.MustParsePrefix("0.0.0.0/0")); got != r("0.0.0.0-255.255.255.255") {
		t.Errorf("prefixRange /0: %v", got)
	}

	// IPv6, and both families in one set: never joined across the
	// boundary (255.255.255.255 and :: are not neighbours).
	if got := prefixRange(netip.MustParsePrefix("fd00:10:244:1::/63")); got != r("fd00:10:244:1::-fd00:10:244:1:ffff:ffff:ffff:ffff") {
		t.Errorf("prefixRange fd00:10:244:1::/63 (masked): %v", got)
	}
	if got := prefixRange(netip.MustParsePrefix("::/0")); got != r("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") {
		t.Errorf("prefixRange ::/0: %v", got)
	}
	if got := merge(rs("fd00::3", "255.255.255.255", "::", "fd00::1-fd00::2", "10.0.0.1")); !reflect.DeepEqual(got, rs("10.0.0.1", "255.255.255.255", "::", "fd00::1-fd00::3")) {
		t.Errorf("merge of both families: %v", got)
	}
	if got := merge(rs("fd00::1:0:0-fd00::1:0:1", "fd00::fff0:0-fd00::ffff:ffff")); !reflect.DeepEqual(got, rs("fd00::fff0:0-fd00::1:0:1")) {
		t.Errorf("merge across a 32-bit boundary: %v", got)
	}
	if got := subtract(rs("10.0.0.0-10.0.0.255", "fd00::-fd00::ff"), r("fd00::10-fd00::1f")); !reflect.DeepEqual(got, rs("10.0.0.0-10.0.0.255", "fd00::-fd00::f", "fd00::20-fd00::ff")) {
		t.Errorf("subtract IPv6: %v", got)
	}
	if got := subtract(rs("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), r("ffff::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")); !reflect.DeepEqual(got, rs("::-fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) {
		t.Errorf("subtract to the top of IPv6: %v", got)
	}
	set = merge(rs("10.0.0.1", "fd00::1-fd00::5"))
	for ip, want := range map[string]bool{"10.0.0.1": true, "::a00:1": false, "fd00::": false, "fd00::3": true, "fd00::6": false} {
		if contains(set, netip.MustParseAddr(ip)) != want {
			t.Errorf("contains %s: want %v", ip, want)
		}
	}
}

// TestCompileDualStack: pods with an address of each family are selected
// and named by both; ipBlocks are of their own family; Rules counts the
// rules of each family the writer emits, and a match whose set has no
// member of a family has no rule there.
func TestCompileDualStack(t *testing.T) {
	pod := func(name, node, ip4, ip6 string, labels map[string]string, ports ...NamedPort) Pod {
		p := Pod{Namespace: "a", Name: name, Node: node, Labels: labels, Ports: ports}
		for _, s := range []string{ip4, ip6} {
			if s != "" {
				p.IPs = append(p.IPs, netip.MustParseAddr(s))
			}
		}
		return p
	}
	st := State{
		Namespaces: []Namespace{{Name: "a", Labels: map[string]string{"kubernetes.io/metadata.name": "a"}}},
		Pods: []Pod{
			pod("web", "n1", "10.244.1.10", "fd00:10:244:1::10", map[string]string{"app": "web"}, NamedPort{"http", TCP, 8080}),
			pod("client", "n2", "10.244.2.20", "fd00:10:244:2::20", map[string]string{"app": "client"}),
			pod("v6only", "n2", "", "fd00:10:244:2::30", map[string]string{"app": "client"}),
		},
	}
	deny := Policy{Namespace: "a", Name: "deny", Ingress: true, PodSelector: *selp("app", "web")}
	allow := Policy{Namespace: "a", Name: "allow", Ingress: true, PodSelector: *selp("app", "web"), IngressRules: []Rule{
		{Peers: []Peer{{Pods: selp("app", "client")}}, Ports: []Port{{Proto: TCP, Name: "http"}}},
		{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("2001:db8::/32"), Except: []netip.Prefix{netip.MustParsePrefix("2001:db8:1::/48")}}}}},
	}}
	egress := Policy{Namespace: "a", Name: "egress", Egress: true, PodSelector: *selp("app", "client"), EgressRules: []Rule{
		{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("10.244.1.0/24")}}}, Ports: []Port{{Proto: TCP, Name: "http"}}},
	}}
	st.Policies = []Policy{deny, allow, egress}
	set, errs := Compile("n1", st)
	if len(errs) > 0 || len(set.Policies) != 3 {
		t.Fatalf("errs %v, %d policies", errs, len(set.Policies))
	}
	byKey := map[string]resolved{}
	for _, p := range set.Policies {
		byKey[p.Key] = resolve(set, p)
	}
	if got, want := byKey["a/deny"], (resolved{Selected: rs("10.244.1.10", "fd00:10:244:1::10"), Ingress: true}); !reflect.DeepEqual(got, want) {
		t.Errorf("default deny: got %+v, want %+v", got, want)
	}
	want := resolved{Selected: rs("10.244.1.10", "fd00:10:244:1::10"), Ingress: true, In: []resolvedMatch{
		{Peer: rs("10.244.2.20", "fd00:10:244:2::20-fd00:10:244:2::20", "fd00:10:244:2::30"), Local: rs("10.244.1.10", "fd00:10:244:1::10"), Proto: TCP, Port: 8080, EndPort: 8080},
		{Peer: rs("2001:db8::-2001:db8:0:ffff:ffff:ffff:ffff:ffff", "2001:db8:2::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")},
	}}
	want.In[0].Peer = merge(want.In[0].Peer)
	if got := byKey["a/allow"]; !reflect.DeepEqual(got, want) {
		t.Errorf("allow: got  %+v\nwant %+v", got, want)
	}
	// Per family: deny 2 + 2; allow: IPv4 2 + the named port (the IPv6
	// block has no IPv4 member), IPv6 2 + both; egress selects nothing
	// on n1.
	if got := set.Rules(); got != 4+3+4 {
		t.Errorf("Rules() = %d, want 11", got)
	}
	allowC := set.Policies[0] // a/allow sorts first
	if allowC.Key != "a/allow" || set.Applies(allowC.IngressAllow[1], IPv4) || !set.Applies(allowC.IngressAllow[1], IPv6) {
		t.Errorf("the IPv6 ipBlock match must apply to IPv6 only: %+v", allowC)
	}

	// On n2 the egress policy selects both clients; the IPv4 block
	// admits the IPv4 address of web's named port, not its IPv6 one.
	set, errs = Compile("n2", st)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, p := range set.Policies {
		if p.Key != "a/egress" {
			continue
		}
		got := resolve(set, p)
		want := resolved{Selected: rs("10.244.2.20", "fd00:10:244:2::20", "fd00:10:244:2::30"), Egress: true, Out: []resolvedMatch{
			{Peer: rs("10.244.1.10"), Proto: TCP, Port: 8080, EndPort: 8080}}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("egress: got  %+v\nwant %+v", got, want)
		}
		if set.Applies(p.EgressAllow[0], IPv6) {
			t.Error("the IPv4-only egress match must not apply to IPv6: IPv6 egress is denied")
		}
	}
}

func TestSelector(t *testing.T) {
	l := map[string]string{"a": "1", "b": "2"}
	for _, tc := range []struct {
		s    Selector
		want bool
	}{
		{Selector{}, true},
		{Selector{MatchLabels: map[string]string{"a": "1"}}, true},
		{Selector{MatchLabels: map[string]string{"a": "2"}}, false},
		{Selector{Exprs: []Requirement{{Key: "c", Op: DoesNotExist}}}, true},
		{Selector{Exprs: []Requirement{{Key: "a", Op: DoesNotExist}}}, false},
		{Selector{Exprs: []Requirement{{Key: "c", Op: NotIn, Values: []string{"x"}}}}, true},
		{Selector{Exprs: []Requirement{{Key: "c", Op: In, Values: []string{"x"}}}}, false},
	} {
		if got := tc.s.Matches(l); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.s, got, tc.want)
		}
	}
}
