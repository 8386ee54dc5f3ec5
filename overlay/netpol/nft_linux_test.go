package netpol

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

func TestMain(m *testing.M) { prereqtest.Main(m) }

// A node namespace with three pod namespaces on veths (proxy ARP, /32
// routes, as weft-cni wires them), for traffic through the real table.
type nodeLab struct {
	t      testing.TB
	prefix string
	nodeFd int
}

func (l *nodeLab) ns(name string) string { return l.prefix + "-" + name }

func (l *nodeLab) run(args ...string) {
	l.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		l.t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (l *nodeLab) ping(from, to string) bool {
	return exec.Command("ip", "netns", "exec", l.ns(from), "ping", "-c2", "-i0.2", "-W1", "-q", to).Run() == nil
}

// labPods and labPods6 are the pods' addresses of each family. IPv6 is
// wired as weft-cni does: the pod's /128, a default route via fe80::1,
// the host's veth holding fe80::1 and a /128 route per pod; neighbour
// discovery on both sides.
var (
	labPods  = map[string]string{"a": "10.244.9.2", "b": "10.244.9.3", "c": "10.244.9.4"}
	labPods6 = map[string]string{"a": "fd00:10:244:9::2", "b": "fd00:10:244:9::3", "c": "fd00:10:244:9::4"}
)

func newNodeLab(t testing.TB) *nodeLab {
	prereqtest.Netns(t, "ip", "ping")
	l := &nodeLab{t: t, prefix: fmt.Sprintf("wnp%d", os.Getpid())}
	t.Cleanup(func() {
		for _, n := range []string{"node", "a", "b", "c"} {
			exec.Command("ip", "netns", "del", l.ns(n)).Run()
		}
	})
	for _, n := range []string{"node", "a", "b", "c"} {
		l.run("ip", "netns", "add", l.ns(n))
	}
	node := l.ns("node")
	l.run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	l.run("ip", "-n", node, "addr", "add", "10.244.9.1/32", "dev", "lo")
	l.run("ip", "-n", node, "link", "set", "lo", "up")
	for name, ip := range labPods {
		host := PodInterfaces + name // as weft-cni names them: the spoofed-source rule's interfaces
		l.run("ip", "-n", node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", l.ns(name))
		l.run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.conf."+host+".proxy_arp=1", "net.ipv4.neigh."+host+".proxy_delay=0")
		l.run("ip", "-n", node, "link", "set", host, "up")
		l.run("ip", "-n", node, "route", "add", ip+"/32", "dev", host)
		l.run("ip", "-n", l.ns(name), "addr", "add", ip+"/32", "dev", "eth0")
		l.run("ip", "-n", l.ns(name), "link", "set", "eth0", "up")
		l.run("ip", "-n", l.ns(name), "route", "add", "10.244.9.0/24", "dev", "eth0")
		ip6 := labPods6[name]
		l.run("ip", "-n", node, "addr", "add", "fe80::1/64", "dev", host, "nodad")
		l.run("ip", "-n", node, "route", "add", ip6+"/128", "dev", host)
		l.run("ip", "-n", l.ns(name), "addr", "add", ip6+"/128", "dev", "eth0", "nodad")
		l.run("ip", "-n", l.ns(name), "route", "add", "default", "via", "fe80::1", "dev", "eth0")
	}
	f, err := os.Open("/run/netns/" + node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l.nodeFd = int(f.Fd())
	return l
}

func labState(pols ...Policy) State {
	st := State{Namespaces: []Namespace{{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}}}, Policies: pols}
	for name, ip := range labPods {
		st.Pods = append(st.Pods, Pod{Namespace: "x", Name: name, Labels: map[string]string{"app": name}, IPs: []netip.Addr{netip.MustParseAddr(ip), netip.MustParseAddr(labPods6[name])}, Node: "node"})
	}
	return st
}

func sel(app string) Selector { return Selector{MatchLabels: map[string]string{"app": app}} }

// TestTableTraffic applies compiled policies in a node namespace and
// checks pings between its pods and from the node: ingress allow-list,
// egress, replies by conntrack, the node's own traffic, the counters,
// drift repair and removal.
func TestTableTraffic(t *testing.T) {
	l := newNodeLab(t)
	tab := NewTable(l.nodeFd)
	t.Cleanup(func() { tab.Remove() })
	apply := func(st State) *Ruleset {
		t.Helper()
		rs, errs := Compile("node", st)
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		if err := tab.Apply(rs); err != nil {
			t.Fatal(err)
		}
		return rs
	}
	// expect pings pod to from pod from over each family.
	expect := func(what string, from, to string, want bool) {
		t.Helper()
		for _, addr := range []string{labPods[to], labPods6[to]} {
			if got := l.ping(from, addr); got != want {
				t.Errorf("%s: ping %s → %s (%s): %v, want %v", what, from, to, addr, got, want)
			}
		}
	}
	apply(labState())
	expect("no policy", "a", "b", true)
	expect("no policy", "c", "b", true)

	// c sends with a's address, then with an address of the /64 no pod
	// has: both dropped where they come in (counted), none of the
	// legitimate traffic above was.
	spoofed := func() uint64 {
		t.Helper()
		d, err := tab.Counters()
		if err != nil {
			t.Fatal(err)
		}
		s, ok := d[SpoofedCounter]
		if !ok {
			t.Fatalf("no %s counter in %v", SpoofedCounter, d)
		}
		return s.Egress
	}
	if n := spoofed(); n != 0 {
		t.Fatalf("%d legitimate packets counted as spoofed", n)
	}
	for i, src := range []string{labPods["a"], "fd00:10:244:9::99"} {
		l.run("ip", "-n", l.ns("c"), "addr", "add", src, "dev", "eth0", "nodad")
		dst := labPods["b"]
		if i == 1 {
			dst = labPods6["b"]
		}
		exec.Command("ip", "netns", "exec", l.ns("c"), "ping", "-c2", "-i0.2", "-W1", "-q", "-I", src, dst).Run()
		if n := spoofed(); n < uint64(2*(i+1)) {
			t.Fatalf("c's pings to %s from %s: %d packets counted as spoofed, want %d", dst, src, n, 2*(i+1))
		}
		l.run("ip", "-n", l.ns("c"), "addr", "del", src, "dev", "eth0")
	}
	expect("after the spoofing, c itself", "c", "b", true)

	onlyA := Policy{Namespace: "x", Name: "only-a", PodSelector: sel("b"), Ingress: true,
		IngressRules: []Rule{{Peers: []Peer{{Pods: &Selector{MatchLabels: map[string]string{"app": "a"}}}}}}}
	rs := apply(labState(onlyA))
	expect("b accepts only a", "a", "b", true)
	expect("b accepts only a", "c", "b", false)
	expect("b is not egress-isolated; replies pass", "b", "c", true)
	if out, err := exec.Command("ip", "netns", "exec", l.ns("node"), "ping", "-c2", "-i0.2", "-W1", "-q", labPods["b"]).CombinedOutput(); err != nil {
		t.Errorf("the node itself must reach its pods: %v: %s", err, out)
	}
	drops, err := tab.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := drops[rs.Policies[0].ID]; d.Ingress == 0 || d.Egress != 0 {
		t.Errorf("drops of x/only-a %+v, want ingress > 0 (c's ping)", d)
	}

	// Egress of a: TCP 80 to c only; a's ping to b now stops at a's
	// egress, b's ping to a is answered (a is not ingress-isolated).
	aOut := Policy{Namespace: "x", Name: "a-out", PodSelector: sel("a"), Egress: true,
		EgressRules: []Rule{{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix(labPods["c"] + "/32")}}}, Ports: []Port{{Proto: TCP, Port: 80, EndPort: 80}}}}}
	apply(labState(onlyA, aOut))
	expect("a's egress", "a", "b", false)
	expect("a's egress", "a", "c", false)
	// a is egress-isolated: its neighbour advertisements to the node
	// (and solicitations of fe80::1) still pass, or IPv6 to a breaks.
	l.run("ip", "-n", l.ns("a"), "neigh", "flush", "all")
	l.run("ip", "-n", l.ns("node"), "neigh", "flush", "all")
	expect("replies to a, neighbour discovery of an egress-isolated pod", "b", "a", true)

	// An IPv6 ipBlock with except: b admits the /64 but c; IPv4 is
	// denied for all (the block has no IPv4 member).
	v6Block := Policy{Namespace: "x", Name: "v6-block", PodSelector: sel("b"), Ingress: true,
		IngressRules: []Rule{{Peers: []Peer{{Block: &IPBlock{CIDR: netip.MustParsePrefix("fd00:10:244:9::/64"), Except: []netip.Prefix{netip.MustParsePrefix(labPods6["c"] + "/128")}}}}}}}
	apply(labState(v6Block))
	if !l.ping("a", labPods6["b"]) || l.ping("c", labPods6["b"]) || l.ping("a", labPods["b"]) {
		t.Errorf("IPv6 ipBlock except c: a → b over IPv6 %v (want true), c → b over IPv6 %v, a → b over IPv4 %v (want false)",
			l.ping("a", labPods6["b"]), l.ping("c", labPods6["b"]), l.ping("a", labPods["b"]))
	}

	// Many policies in one batch: more acknowledgements than a default
	// netlink receive buffer holds (ENOBUFS before sockBuf).
	many := []Policy{onlyA, aOut}
	for i := 0; i < 300; i++ {
		many = append(many, Policy{Namespace: "x", Name: fmt.Sprintf("m%03d", i), PodSelector: sel("c"), Ingress: true,
			IngressRules: []Rule{{Peers: []Peer{{Pods: &Selector{}}}, Ports: []Port{{Proto: UDP, Port: uint16(2000 + i), EndPort: uint16(2000 + i)}}}}})
	}
	if rs := apply(labState(many...)); rs.Rules() < 300 {
		t.Fatalf("%d rules", rs.Rules())
	}
	expect("c under 300 UDP-only policies", "b", "c", false)
	apply(labState(onlyA, aOut))

	// Drift: a chain of someone else's in weft's table, and a missing
	// dispatch rule, repaired by the next Apply; counters kept.
	c, err := nftables.New(nftables.WithNetNSFd(l.nodeFd))
	if err != nil {
		t.Fatal(err)
	}
	c.AddChain(&nftables.Chain{Name: "stray", Table: table})
	c.FlushChain(&nftables.Chain{Name: chainIngress + "4", Table: table})
	c.FlushChain(&nftables.Chain{Name: chainIngress + "6", Table: table})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	expect("drifted: ingress checks gone", "c", "b", true)
	apply(labState(onlyA, aOut))
	expect("repaired", "c", "b", false)
	chains, _, _, err := existing(c)
	if err != nil {
		t.Fatal(err)
	}
	if chains["stray"] {
		t.Error("the stray chain survived Apply")
	}
	after, _ := tab.Counters()
	if after[rs.Policies[0].ID].Ingress < drops[rs.Policies[0].ID].Ingress {
		t.Errorf("counters reset by Apply: %+v, before %+v", after, drops)
	}

	if err := tab.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err == nil {
		t.Error("table still there after Remove")
	} else if !notExist(err) {
		t.Fatal(err)
	}
	expect("removed", "c", "b", true)
	if err := tab.Remove(); err != nil {
		t.Errorf("Remove of no table: %v", err)
	}
	_ = unix.ENOENT
}

// NewBenchLab is the node lab for bench_linux_test.go (package
// netpol_test): the namespace name of a node or pod, and the node's
// table, removed at the end.
func NewBenchLab(tb testing.TB) (ns func(string) string, tab *Table) {
	l := newNodeLab(tb)
	tab = NewTable(l.nodeFd)
	tb.Cleanup(func() { tab.Remove() })
	return l.ns, tab
}

// TestTableUpgrade: the table ip weft-netpol of IPv4-only weft is there
// (here one chain that drops everything to b); the first Apply writes the
// inet table and deletes the old one in one transaction, after which
// exactly the new policies are in force, over both families; Remove
// deletes whichever tables there are.
func TestTableUpgrade(t *testing.T) {
	l := newNodeLab(t)
	tab := NewTable(l.nodeFd)
	t.Cleanup(func() { tab.Remove() })
	c, err := nftables.New(nftables.WithNetNSFd(l.nodeFd))
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(legacyTable)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: chainIngressForward, Table: legacyTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(10), Policy: &accept})
	c.AddRule(&nftables.Rule{Table: legacyTable, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if l.ping("a", labPods["b"]) {
		t.Fatal("the old table's drop is not in force")
	}
	onlyA := Policy{Namespace: "x", Name: "only-a", PodSelector: sel("b"), Ingress: true,
		IngressRules: []Rule{{Peers: []Peer{{Pods: &Selector{MatchLabels: map[string]string{"app": "a"}}}}}}}
	rs, errs := Compile("node", labState(onlyA))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if err := tab.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if ok, err := tableExists(c, legacyTable); err != nil || ok {
		t.Errorf("table ip %s after Apply: %v, %v; want gone", TableName, ok, err)
	}
	for _, addr := range []string{labPods["b"], labPods6["b"]} {
		if !l.ping("a", addr) || l.ping("c", addr) {
			t.Errorf("after the upgrade, to %s: a %v (want true), c %v (want false)", addr, l.ping("a", addr), l.ping("c", addr))
		}
	}
	// Remove takes both, should an old weftd have written its table
	// again meanwhile.
	c.AddTable(legacyTable)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := tab.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []*nftables.Table{table, legacyTable} {
		if ok, err := tableExists(c, tt); err != nil || ok {
			t.Errorf("table %v %s after Remove: %v, %v", tt.Family, tt.Name, ok, err)
		}
	}
}
