package cni

// Root-only integration tests: the real weft-cni binary, driven through
// libcni from inside a throwaway "node" netns, wiring throwaway "pod"
// netnses. Every namespace is removed in t.Cleanup; links die with them.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/cni/cnitest"
	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/ipam"
)

func TestMain(m *testing.M) { prereqtest.Main(m) }

// lab is one node netns with weft-cni ready to run in it.
type lab struct {
	t        *testing.T
	suffix   string
	bin      string // holds weft-cni
	nodeNS   string // name under /run/netns
	runDir   string
	dataDir  string
	cni      *libcni.CNIConfig
	confList *libcni.NetworkConfigList
}

func requireRoot(t *testing.T) { t.Helper(); cnitest.RequireRoot(t) }

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	return cnitest.Run(t, name, args...)
}

// addNetns creates /run/netns/wcni-<suffix>-<role> and removes it at cleanup.
func addNetns(t *testing.T, suffix, role string) string {
	t.Helper()
	return cnitest.AddNetns(t, "wcni-"+suffix+"-"+role)
}

func nsPath(name string) string { return "/run/netns/" + name }

func newLab(t *testing.T, cniVersion string) *lab {
	requireRoot(t)
	b := make([]byte, 3)
	rand.Read(b)
	l := &lab{t: t, suffix: hex.EncodeToString(b)}
	l.bin = cnitest.BuildWeft(t)
	l.nodeNS = addNetns(t, l.suffix, "node")
	dir := t.TempDir()
	l.runDir = filepath.Join(dir, "run")
	l.dataDir = filepath.Join(dir, "ipam")
	l.cni = libcni.NewCNIConfigWithCacheDir([]string{l.bin}, filepath.Join(dir, "cache"), nil)
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":"weft","plugins":[{"type":"weft-cni","runDir":%q,"dataDir":%q,"unknownKnob":true}]}`,
		cniVersion, l.runDir, l.dataDir)
	var err error
	l.confList, err = libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *lab) writeNode() {
	l.t.Helper()
	st := NodeState{
		NodeName:    "n7",
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")},
		Gateway:     netip.MustParseAddr("10.244.7.1"),
		MTU:         1450,
		ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"),
	}
	if err := WriteNodeState(l.runDir, st); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) rt(podNS string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: podNS, NetNS: nsPath(podNS), IfName: "eth0"}
}

// inNode runs fn with this thread in the node netns, so that the plugin
// libcni executes inherits it.
func (l *lab) inNode(fn func() error) error {
	return ns.WithNetNSPath(nsPath(l.nodeNS), func(ns.NetNS) error { return fn() })
}

func (l *lab) add(podNS string) (types.Result, error) {
	var res types.Result
	err := l.inNode(func() error {
		var err error
		res, err = l.cni.AddNetworkList(context.Background(), l.confList, l.rt(podNS))
		return err
	})
	return res, err
}

func (l *lab) check(podNS string) error {
	return l.inNode(func() error { return l.cni.CheckNetworkList(context.Background(), l.confList, l.rt(podNS)) })
}

func (l *lab) del(podNS string) error {
	return l.inNode(func() error { return l.cni.DelNetworkList(context.Background(), l.confList, l.rt(podNS)) })
}

func (l *lab) lookup(podNS string) (netip.Addr, bool) {
	l.t.Helper()
	s, err := ipam.Open(l.dataDir)
	if err != nil {
		l.t.Fatal(err)
	}
	defer s.Close()
	a, ok, err := s.Lookup(ipam.Owner{ContainerID: podNS, IfName: "eth0"})
	if err != nil {
		l.t.Fatal(err)
	}
	return a, ok
}

// weftLinks lists the node's links named weft*.
func (l *lab) weftLinks() []string {
	l.t.Helper()
	var names []string
	err := l.inNode(func() error {
		links, err := netlinksafe.LinkList()
		for _, k := range links {
			if strings.HasPrefix(k.Attrs().Name, "weft") {
				names = append(names, k.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		l.t.Fatal(err)
	}
	return names
}

func prefixOf(n *net.IPNet) string {
	if n == nil {
		return "default"
	}
	if ones, _ := n.Mask.Size(); ones == 0 {
		return "default"
	}
	return n.String()
}

func TestPluginAddCheckDel(t *testing.T) {
	l := newLab(t, "1.0.0")
	l.writeNode()
	pod := addNetns(t, l.suffix, "p1")

	res, err := l.add(pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r, err := types100.GetResult(res)
	if err != nil {
		t.Fatal(err)
	}
	host := HostVethName(pod, "eth0")
	if len(r.Interfaces) != 2 || r.Interfaces[0].Name != host || r.Interfaces[1].Name != "eth0" ||
		r.Interfaces[1].Sandbox != nsPath(pod) || r.Interfaces[0].Sandbox != "" {
		t.Fatalf("interfaces %v", r.Interfaces)
	}
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.244.7.2/32" || r.IPs[0].Gateway.String() != "10.244.7.1" ||
		r.IPs[0].Interface == nil || *r.IPs[0].Interface != 1 {
		t.Fatalf("ips %v", r.IPs)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "10.244.7.1" {
		t.Fatalf("routes %v", r.Routes)
	}
	if a, ok := l.lookup(pod); !ok || a.String() != "10.244.7.2" {
		t.Fatalf("allocation %v %v", a, ok)
	}

	// Pod side.
	err = ns.WithNetNSPath(nsPath(pod), func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		if link.Attrs().MTU != 1450 || link.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("eth0 mtu %d flags %v", link.Attrs().MTU, link.Attrs().Flags)
		}
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.7.2/32" {
			return fmt.Errorf("eth0 addrs %v", addrs)
		}
		routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, rt := range routes {
			got[prefixOf(rt.Dst)] = fmt.Sprintf("gw=%v scope=%v", rt.Gw, rt.Scope)
		}
		want := map[string]string{
			"default":       "gw=10.244.7.1 scope=universe",
			"10.244.7.1/32": "gw=<nil> scope=link",
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("pod routes %v, want %v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pod side: %v", err)
	}

	// Node side.
	err = l.inNode(func() error {
		link, err := netlinksafe.LinkByName(host)
		if err != nil {
			return err
		}
		if link.Attrs().MTU != 1450 || link.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s mtu %d flags %v", host, link.Attrs().MTU, link.Attrs().Flags)
		}
		v, err := sysctl.Sysctl("net/ipv4/conf/" + host + "/proxy_arp")
		if err != nil || v != "1" {
			return fmt.Errorf("proxy_arp %q %v", v, err)
		}
		routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(routes) != 1 || prefixOf(routes[0].Dst) != "10.244.7.2/32" || routes[0].Scope != netlink.SCOPE_LINK {
			return fmt.Errorf("host routes %v", routes)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("node side: %v", err)
	}

	if err := l.check(pod); err != nil {
		t.Fatalf("CHECK on a healthy pod: %v", err)
	}
	// Break the pod: CHECK must notice.
	run(t, "ip", "-n", pod, "route", "del", "default")
	if err := l.check(pod); err == nil {
		t.Fatal("CHECK passed without the default route")
	}

	if err := l.del(pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if links := l.weftLinks(); len(links) != 0 {
		t.Fatalf("links left after DEL: %v", links)
	}
	out := run(t, "ip", "-n", l.nodeNS, "route", "show", "10.244.7.2/32")
	if strings.TrimSpace(out) != "" {
		t.Fatalf("host route left after DEL: %s", out)
	}
	if out := run(t, "ip", "-n", pod, "link", "show"); strings.Contains(out, "eth0") {
		t.Fatalf("pod eth0 left after DEL: %s", out)
	}
	if a, ok := l.lookup(pod); ok {
		t.Fatalf("allocation %v left after DEL", a)
	}
	if err := l.del(pod); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
}

func TestPluginMissingNodeState(t *testing.T) {
	l := newLab(t, "1.0.0")
	pod := addNetns(t, l.suffix, "p1")
	_, err := l.add(pod)
	var ce *types.Error
	if !errors.As(err, &ce) {
		t.Fatalf("ADD without node.json: err %T %v, want a CNI error", err, err)
	}
	if ce.Code != types.ErrTryAgainLater {
		t.Fatalf("code %d (%v), want %d", ce.Code, ce, types.ErrTryAgainLater)
	}
	if links := l.weftLinks(); len(links) != 0 {
		t.Fatalf("links left: %v", links)
	}
	if out := run(t, "ip", "-n", pod, "link", "show"); strings.Contains(out, "eth0") {
		t.Fatalf("pod eth0 created: %s", out)
	}
	entries, _ := os.ReadDir(l.dataDir)
	for _, e := range entries {
		if _, perr := netip.ParseAddr(e.Name()); perr == nil {
			t.Fatalf("allocation %s left", e.Name())
		}
	}
	// DEL of a pod that was never wired succeeds.
	if err := l.del(pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func TestPluginRollback(t *testing.T) {
	l := newLab(t, "1.0.0")
	l.writeNode()
	pod := addNetns(t, l.suffix, "p1")
	// An eth0 already in the pod makes the veth creation fail after the
	// address was allocated: ADD must give the address back. (A veth, as
	// the test kernel may lack the dummy driver.)
	run(t, "ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
	if _, err := l.add(pod); err == nil {
		t.Fatal("ADD succeeded over an existing eth0")
	}
	if a, ok := l.lookup(pod); ok {
		t.Fatalf("allocation %v left after failed ADD", a)
	}
	if links := l.weftLinks(); len(links) != 0 {
		t.Fatalf("links left after failed ADD: %v", links)
	}
}

func TestPluginTwoPodsPing(t *testing.T) {
	l := newLab(t, "1.0.0")
	l.writeNode()
	// Stand in for weftd, which puts the gateway on weft0: any local
	// interface will do (lo here; the test kernel may lack the dummy
	// driver), plus forwarding.
	run(t, "ip", "-n", l.nodeNS, "addr", "add", "10.244.7.1/32", "dev", "lo")
	run(t, "ip", "netns", "exec", l.nodeNS, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	p1 := addNetns(t, l.suffix, "p1")
	p2 := addNetns(t, l.suffix, "p2")
	ips := map[string]string{}
	for _, p := range []string{p1, p2} {
		res, err := l.add(p)
		if err != nil {
			t.Fatalf("ADD %s: %v", p, err)
		}
		r, err := types100.GetResult(res)
		if err != nil {
			t.Fatal(err)
		}
		ips[p] = r.IPs[0].Address.IP.String()
	}
	if ips[p1] == ips[p2] {
		t.Fatalf("both pods got %s", ips[p1])
	}
	// A retried ADD is refused but must not tear down or free the live pod.
	if _, err := l.add(p1); err == nil {
		t.Fatal("second ADD for a wired pod succeeded")
	}
	if a, ok := l.lookup(p1); !ok || a.String() != ips[p1] {
		t.Fatalf("failed retry freed %s: %v %v", ips[p1], a, ok)
	}
	if err := l.check(p1); err != nil {
		t.Fatalf("CHECK after a refused retry: %v", err)
	}

	prereqtest.Programs(t, "ping")
	ping := func(from, to string) error {
		out, err := exec.Command("ip", "netns", "exec", from, "ping", "-c1", "-W1", to).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ping %s from %s: %v\n%s", to, from, err, out)
		}
		return nil
	}
	if err := ping(p1, ips[p2]); err != nil {
		t.Fatal(err)
	}
	if err := ping(p2, ips[p1]); err != nil {
		t.Fatal(err)
	}
	if err := ping(p1, "10.244.7.1"); err != nil {
		t.Fatal(err)
	}

	// After DEL of p2 its address no longer answers, and p1 is untouched.
	if err := l.del(p2); err != nil {
		t.Fatal(err)
	}
	if err := ping(p1, ips[p2]); err == nil {
		t.Fatal("deleted pod still answers")
	}
	if err := l.check(p1); err != nil {
		t.Fatalf("CHECK p1 after DEL p2: %v", err)
	}
	if err := l.del(p1); err != nil {
		t.Fatal(err)
	}
}

// TestPluginOldVersionAndGoneNetns: results convert to an older requested
// version, and DEL works once the pod netns is gone.
func TestPluginOldVersionAndGoneNetns(t *testing.T) {
	l := newLab(t, "0.3.1")
	l.writeNode()
	pod := "wcni-" + l.suffix + "-p1"
	run(t, "ip", "netns", "add", pod)
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			exec.Command("ip", "netns", "del", pod).Run()
		}
	})
	res, err := l.add(pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if res.Version() != "0.3.1" {
		t.Fatalf("result version %s, want 0.3.1", res.Version())
	}
	run(t, "ip", "netns", "del", pod)
	deleted = true
	if err := l.del(pod); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	if a, ok := l.lookup(pod); ok {
		t.Fatalf("allocation %v left", a)
	}
	if links := l.weftLinks(); len(links) != 0 {
		t.Fatalf("links left: %v", links)
	}
}

func withNS(name string, fn func() error) error {
	return ns.WithNetNSPath(nsPath(name), func(ns.NetNS) error { return fn() })
}
