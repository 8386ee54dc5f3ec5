package netpol_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/overlay/netpol"
)

// TestNetnsDualStackAcrossWeft: a dual-stack netns lab (two weftd, VXLAN,
// two pods a node, each with an IPv4 and an IPv6 address through
// weft-cni), the tables of both nodes written from one State as the
// controller would. A default deny on n2's pods blocks IPv4 and IPv6 from
// n1 alike; an allow from one pod of n1 admits it over both and nobody
// else; with that pod egress-isolated too (allowed to one server only),
// it still reaches the server over both families after its neighbour
// caches are flushed (ICMPv6 neighbour discovery passes), and not the
// other pod of n2.
func TestNetnsDualStackAcrossWeft(t *testing.T) {
	bin := prereqtest.Binaries(t)
	prereqtest.Netns(t, "ip", "ping")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Config{Prefix: fmt.Sprintf("wnpd%d", os.Getpid()%10000), Dir: t.TempDir(), BinDir: bin,
		Nodes: 2, Sites: 1, PodsPerNode: 2, Transport: "vxlan", DualStack: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down() })
	if err := l.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	addr := func(s string) netip.Addr {
		if pf, err := netip.ParsePrefix(s); err == nil {
			return pf.Addr()
		}
		return netip.MustParseAddr(s)
	}
	client, other := l.PodsOn("n1")[0], l.PodsOn("n1")[1]
	server, server2 := l.PodsOn("n2")[0], l.PodsOn("n2")[1]
	pod := func(p lab.Pod, name, node string, labels map[string]string) netpol.Pod {
		if p.Address6 == "" {
			t.Fatalf("pod %s has no IPv6 address in a dual-stack lab", p.Netns)
		}
		return netpol.Pod{Namespace: "x", Name: name, Labels: labels, Node: node, IPs: []netip.Addr{addr(p.Address), addr(p.Address6)}}
	}
	st := netpol.State{Namespaces: []netpol.Namespace{{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}}}, Pods: []netpol.Pod{
		pod(client, "client", "n1", map[string]string{"app": "client"}),
		pod(other, "other", "n1", map[string]string{"app": "other"}),
		pod(server, "server", "n2", map[string]string{"app": "server", "tier": "back"}),
		pod(server2, "server2", "n2", map[string]string{"app": "server2", "tier": "back"}),
	}}
	var tables []*netpol.Table
	for _, n := range []string{"n1", "n2"} {
		f, err := os.Open("/run/netns/" + l.Node(n).Netns)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		tab := netpol.NewTable(int(f.Fd()))
		t.Cleanup(func() { tab.Remove() })
		tables = append(tables, tab)
	}
	apply := func(pols ...netpol.Policy) {
		t.Helper()
		s := st
		s.Policies = pols
		for i, n := range []string{"n1", "n2"} {
			rs, errs := netpol.Compile(n, s)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			if err := tables[i].Apply(rs); err != nil {
				t.Fatal(err)
			}
		}
	}
	reach := func(from lab.Pod, to string) bool {
		return exec.CommandContext(ctx, "ip", "netns", "exec", from.Netns, "ping", "-c2", "-i0.2", "-W1", "-q", addr(to).String()).Run() == nil
	}
	expect := func(what string, from, to lab.Pod, want bool) {
		t.Helper()
		for _, a := range []string{to.Address, to.Address6} {
			if got := reach(from, a); got != want {
				t.Errorf("%s: %s → %s: reached %v, want %v", what, from.Netns, addr(a), got, want)
			}
		}
	}
	apply()
	expect("no policy", client, server, true)
	expect("no policy", other, server, true)

	back := netpol.Selector{MatchLabels: map[string]string{"tier": "back"}}
	deny := netpol.Policy{Namespace: "x", Name: "deny", PodSelector: back, Ingress: true}
	apply(deny)
	expect("default deny", client, server, false)
	expect("default deny", other, server2, false)

	allow := netpol.Policy{Namespace: "x", Name: "allow-client", PodSelector: back, Ingress: true,
		IngressRules: []netpol.Rule{{Peers: []netpol.Peer{{Pods: &netpol.Selector{MatchLabels: map[string]string{"app": "client"}}}}}}}
	apply(deny, allow)
	expect("allow from client", client, server, true)
	expect("allow from client", client, server2, true)
	expect("allow from client only", other, server, false)

	out := netpol.Policy{Namespace: "x", Name: "client-out", PodSelector: netpol.Selector{MatchLabels: map[string]string{"app": "client"}}, Egress: true,
		EgressRules: []netpol.Rule{{Peers: []netpol.Peer{{Pods: &netpol.Selector{MatchLabels: map[string]string{"app": "server"}}}}}}}
	apply(deny, allow, out)
	for _, ns := range []string{client.Netns, l.Node("n1").Netns} {
		if o, err := exec.CommandContext(ctx, "ip", "-n", ns, "neigh", "flush", "all").CombinedOutput(); err != nil {
			t.Fatalf("neigh flush in %s: %v: %s", ns, err, o)
		}
	}
	expect("egress-isolated client to its server", client, server, true)
	expect("egress-isolated client to another pod", client, server2, false)
	expect("other is not egress-isolated but server denies it", other, server, false)
}
