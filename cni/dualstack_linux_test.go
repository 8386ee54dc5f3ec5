package cni

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/ipam"
)

// writeDualNode is writeNode for a dual-stack node: 10.244.7.0/24 and
// fd00:10:244:7::/64 (the ULA range the lab's dual-stack option uses).
func (l *lab) writeDualNode() {
	l.t.Helper()
	st := NodeState{
		NodeName:     "n7",
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24"), netip.MustParsePrefix("fd00:10:244:7::/64")},
		Gateway:      netip.MustParseAddr("10.244.7.1"),
		Gateway6:     netip.MustParseAddr("fd00:10:244:7::1"),
		MTU:          1450,
		ClusterCIDR:  netip.MustParsePrefix("10.244.0.0/16"),
		ClusterCIDR6: netip.MustParsePrefix("fd00:10:244::/56"),
	}
	if err := WriteNodeState(l.runDir, st); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) addresses(podNS string) []netip.Addr {
	l.t.Helper()
	s, err := ipam.Open(l.dataDir)
	if err != nil {
		l.t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Addresses(ipam.Owner{ContainerID: podNS, IfName: "eth0"})
	if err != nil {
		l.t.Fatal(err)
	}
	return a
}

// TestPluginDualStack: on a dual-stack node ADD gives a pod one address of
// each family with a default route of each (IPv6 via fe80::1 on the host
// veth), the result carries both, pods reach each other and the node in
// both families, CHECK sees a broken IPv6 half, and DEL and GC free both.
func TestPluginDualStack(t *testing.T) {
	l := newLab(t, "1.1.0") // GC is a 1.1.0 verb
	l.writeDualNode()
	// Stand in for weftd: the gateways on a local interface, forwarding.
	run(t, "ip", "-n", l.nodeNS, "link", "set", "lo", "up")
	run(t, "ip", "-n", l.nodeNS, "addr", "add", "10.244.7.1/32", "dev", "lo")
	run(t, "ip", "-n", l.nodeNS, "addr", "add", "fd00:10:244:7::1/128", "dev", "lo", "nodad")
	run(t, "ip", "netns", "exec", l.nodeNS, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

	p1 := addNetns(t, l.suffix, "p1")
	p2 := addNetns(t, l.suffix, "p2")
	ips := map[string][]string{}
	for _, p := range []string{p1, p2} {
		res, err := l.add(p)
		if err != nil {
			t.Fatalf("ADD %s: %v", p, err)
		}
		r, err := types100.GetResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.IPs) != 2 || r.IPs[0].Address.IP.To4() == nil || r.IPs[1].Address.IP.To4() != nil {
			t.Fatalf("ADD %s: IPs %v, want one IPv4 then one IPv6", p, r.IPs)
		}
		if ones, _ := r.IPs[1].Address.Mask.Size(); ones != 128 || r.IPs[1].Gateway.String() != "fe80::1" {
			t.Fatalf("ADD %s: IPv6 config %v", p, r.IPs[1])
		}
		if len(r.Routes) != 2 || r.Routes[1].Dst.String() != "::/0" || r.Routes[1].GW.String() != "fe80::1" {
			t.Fatalf("ADD %s: routes %v", p, r.Routes)
		}
		for _, ipc := range r.IPs {
			ips[p] = append(ips[p], ipc.Address.IP.String())
		}
		if got := l.addresses(p); len(got) != 2 || got[0].String() != ips[p][0] || got[1].String() != ips[p][1] {
			t.Fatalf("store holds %v for %s, result %v", got, p, ips[p])
		}
		if !strings.HasPrefix(ips[p][1], "fd00:10:244:7::") {
			t.Fatalf("IPv6 address %s outside the node's pod CIDR", ips[p][1])
		}
		if err := l.check(p); err != nil {
			t.Fatalf("CHECK %s: %v", p, err)
		}
	}
	if slices.Equal(ips[p1], ips[p2]) {
		t.Fatalf("both pods got %v", ips[p1])
	}

	prereqtest.Programs(t, "ping")
	ping := func(from, to string) error {
		out, err := exec.Command("ip", "netns", "exec", from, "ping", "-c1", "-W2", to).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ping %s from %s: %v\n%s", to, from, err, out)
		}
		return nil
	}
	for _, tc := range [][2]string{
		{p1, ips[p2][0]}, {p1, ips[p2][1]}, {p2, ips[p1][1]}, {p1, "10.244.7.1"}, {p1, "fd00:10:244:7::1"},
	} {
		if err := ping(tc[0], tc[1]); err != nil {
			t.Fatal(err)
		}
	}

	// CHECK notices the IPv6 half gone: the pod's IPv6 default route.
	run(t, "ip", "-n", p2, "-6", "route", "del", "default")
	if err := l.check(p2); err == nil || !strings.Contains(err.Error(), "fe80::1") {
		t.Fatalf("CHECK with the IPv6 default route gone: %v", err)
	}

	// DEL frees both addresses; GC, naming p2 alone, frees p1's.
	if err := l.del(p2); err != nil {
		t.Fatal(err)
	}
	if got := l.addresses(p2); len(got) != 0 {
		t.Fatalf("DEL left %v", got)
	}
	if err := l.gc(true, p2); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := l.addresses(p1); len(got) != 0 {
		t.Fatalf("GC left %v of p1", got)
	}
	if links := l.weftLinks(); len(links) != 0 {
		t.Fatalf("links left: %v", links)
	}
}
