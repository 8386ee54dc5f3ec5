package overlay_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/overlay"
)

// TestMasqueradeIPv6: ApplyMasquerade in a node namespace between a pod
// namespace (fd00:10:244:1::5, a ULA the outside cannot answer) and an
// "outside" one (2001:db8:9::2, no route back to the pods). With the IPv6
// half the pod's connection arrives from the node's 2001:db8:9::1 and the
// ip6 table holds the rule; pod→cluster traffic is not in it. Applied
// again without the IPv6 half, the ip6 table goes (the ip one stays) and
// the pod no longer gets out; nil removes both. Needs root; netns tier.
func TestMasqueradeIPv6(t *testing.T) {
	prereqtest.Netns(t, "ip", "nft")
	base := fmt.Sprintf("wmq%05x", rand.Uint32()&0xfffff)
	pod, node, out := base+"-p", base+"-n", base+"-o"
	run := func(args ...string) string {
		t.Helper()
		b, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	for _, n := range []string{pod, node, out} {
		run("ip", "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	run("ip", "link", "add", "p0", "netns", pod, "type", "veth", "peer", "name", "n0", "netns", node)
	run("ip", "link", "add", "n1", "netns", node, "type", "veth", "peer", "name", "o1", "netns", out)
	for _, c := range [][]string{
		{pod, "addr", "add", "fd00:10:244:1::5/64", "dev", "p0", "nodad"},
		{node, "addr", "add", "fd00:10:244:1::1/64", "dev", "n0", "nodad"},
		{node, "addr", "add", "2001:db8:9::1/64", "dev", "n1", "nodad"},
		{out, "addr", "add", "2001:db8:9::2/64", "dev", "o1", "nodad"},
		{pod, "link", "set", "p0", "up"}, {node, "link", "set", "n0", "up"}, {node, "link", "set", "n1", "up"}, {out, "link", "set", "o1", "up"},
		{pod, "-6", "route", "add", "default", "via", "fd00:10:244:1::1"},
	} {
		run(append([]string{"ip", "-n", c[0]}, c[1:]...)...)
	}
	run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

	pfx := netip.MustParsePrefix
	dual := &overlay.Masquerade{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), PodCIDR6: pfx("fd00:10:244:1::/64"), ClusterCIDR6: pfx("fd00:10:244::/56")}
	apply := func(m *overlay.Masquerade) {
		t.Helper()
		h, err := ns.GetNS("/run/netns/" + node)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.Do(func(ns.NetNS) error { return overlay.ApplyMasquerade(m) }); err != nil {
			t.Fatal(err)
		}
	}
	seen := func() (netip.Addr, error) {
		return seenFrom(t, "/run/netns/"+out, "2001:db8:9::2", "/run/netns/"+pod)
	}
	tables := func() string { return run("ip", "netns", "exec", node, "nft", "list", "tables") }

	apply(dual)
	if src, err := seen(); err != nil || src != netip.MustParseAddr("2001:db8:9::1") {
		t.Fatalf("pod → outside over IPv6: source %v (%v), want the node's 2001:db8:9::1", src, err)
	}
	rules := run("ip", "netns", "exec", node, "nft", "list", "table", "ip6", overlay.MasqTable)
	if !strings.Contains(rules, "ip6 saddr fd00:10:244:1::/64 ip6 daddr != fd00:10:244::/56 masquerade") {
		t.Fatalf("ip6 %s:\n%s", overlay.MasqTable, rules)
	}
	apply(dual) // idempotent
	if got := tables(); strings.Count(got, "table ip "+overlay.MasqTable) != 1 || strings.Count(got, "table ip6 "+overlay.MasqTable) != 1 {
		t.Fatalf("tables after a second apply:\n%s", got)
	}

	v4only := *dual
	v4only.PodCIDR6, v4only.ClusterCIDR6 = netip.Prefix{}, netip.Prefix{}
	apply(&v4only)
	if got := tables(); !strings.Contains(got, "table ip "+overlay.MasqTable) || strings.Contains(got, "table ip6 "+overlay.MasqTable) {
		t.Fatalf("tables without the IPv6 half:\n%s", got)
	}
	if src, err := seen(); err == nil {
		t.Fatalf("without the ip6 table the pod still got out (source %v)", src)
	}
	apply(nil)
	apply(nil) // nothing left to remove: no error
	if got := tables(); strings.Contains(got, overlay.MasqTable) {
		t.Fatalf("tables after removal:\n%s", got)
	}
}
