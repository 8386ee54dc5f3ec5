package lab

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

func needRoot(t *testing.T) {
	t.Helper()
	prereqtest.Root(t, "ip")
}

// testPrefix is unique per test so parallel runs and leftovers of a crashed
// run can't collide with this one.
func testPrefix() string { return fmt.Sprintf("wlt%06x", rand.Uint32()&0xffffff) }

func assertNoNetns(t *testing.T, prefix string) {
	t.Helper()
	left, err := listNetns(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}

func TestUpExternalTopology(t *testing.T) {
	needRoot(t)
	prefix := testPrefix()
	dir := filepath.Join(t.TempDir(), "lab")
	t.Cleanup(func() {
		if err := Cleanup(prefix, dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	var log bytes.Buffer
	cfg := DefaultConfig()
	cfg.Prefix = prefix
	cfg.Dir = dir
	cfg.Nodes, cfg.Sites, cfg.PodsPerNode = 3, 2, 0
	cfg.External = []string{"n1", "n2", "n3"}
	cfg.Log = &log
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up: %v\n%s", err, log.String())
	}
	t.Logf("progress:\n%s", log.String())

	// Addressing follows the contract: node i on site ((i-1)%S)+1, .(10+i).
	want := map[string][2]string{
		"n1": {"site1", "192.0.2.11"},
		"n2": {"site2", "198.51.100.12"},
		"n3": {"site1", "192.0.2.13"},
	}
	for _, n := range l.Nodes {
		if w := want[n.Name]; n.Site != w[0] || n.UnderlayAddr != w[1] || !n.External || n.WeftdPID != 0 {
			t.Errorf("node %+v, want site %s addr %s external, no weftd", n, w[0], w[1])
		}
	}

	// Same site (n1→n3, bridged) and across sites (n1→n2, n2→n3, routed).
	for _, pair := range [][2]string{{"n1", "n2"}, {"n2", "n3"}, {"n1", "n3"}, {"n3", "n2"}} {
		from, to := l.Node(pair[0]), l.Node(pair[1])
		if _, err := l.Ping(ctx, from.Netns, to.UnderlayAddr, 2); err != nil {
			t.Errorf("%s→%s: %v", pair[0], pair[1], err)
		}
	}
	// Cross-site traffic really goes through the router: one hop less TTL.
	out, err := l.Exec(ctx, l.Node("n1").Netns, "ping", "-n", "-c", "1", "-W", "2", l.Node("n2").UnderlayAddr)
	if err != nil || !strings.Contains(string(out), "ttl=63") {
		t.Errorf("n1→n2 should be one routed hop (ttl=63): %v\n%s", err, out)
	}

	// Nothing outside TEST-NET is reachable: the router knows only its
	// connected sites, and a node has nothing but lo and eth0.
	if out, err := l.Exec(ctx, l.Router.Netns, "ip", "route", "get", "1.1.1.1"); err == nil {
		t.Errorf("router has a route to 1.1.1.1:\n%s", out)
	}
	if _, err := l.Ping(ctx, l.Node("n1").Netns, "1.1.1.1", 1); err == nil {
		t.Errorf("n1 reached 1.1.1.1")
	}
	routes, err := l.Exec(ctx, l.Node("n2").Netns, "ip", "-4", "route", "show", "table", "all")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range strings.Split(strings.TrimSpace(string(routes)), "\n") {
		if !strings.Contains(r, "198.51.100.") && !strings.Contains(r, "127.") {
			t.Errorf("n2 route outside TEST-NET/loopback: %q", r)
		}
	}
	links, err := l.Exec(ctx, l.Node("n2").Netns, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.TrimSpace(string(links)), "\n") + 1; n != 2 {
		t.Errorf("n2 has %d links, want lo and eth0:\n%s", n, links)
	}
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/eth0/rp_filter", "0"},
	} {
		out, err := l.Exec(ctx, l.Node("n3").Netns, "cat", "/proc/sys/"+kv[0])
		if err != nil || strings.TrimSpace(string(out)) != kv[1] {
			t.Errorf("n3 %s = %q (%v), want %s", kv[0], out, err, kv[1])
		}
	}

	// lab.json round-trips.
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Nodes, l.Nodes) || !reflect.DeepEqual(got.Router, l.Router) ||
		got.Prefix != l.Prefix || got.Dir != l.Dir || got.Transport != "vxlan" ||
		got.ClusterCIDR != ClusterCIDR || got.Version != Version {
		a, _ := l.JSON()
		b, _ := got.JSON()
		t.Errorf("lab.json round trip:\nwrote %s\nread  %s", a, b)
	}
	if !got.Alive() {
		t.Error("loaded lab does not report Alive")
	}

	// A second Up over a live lab is refused and leaves it standing.
	if _, err := Up(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second up: %v, want ErrRunning", err)
	}
	if !netnsExists(l.Router.Netns) {
		t.Fatal("refused Up removed the running lab")
	}

	if err := l.Down(); err != nil {
		t.Errorf("down: %v", err)
	}
	assertNoNetns(t, prefix)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("lab dir still there: %v", err)
	}
	if err := l.Down(); err != nil {
		t.Errorf("second down: %v", err)
	}
}

func TestUpFailureTearsDown(t *testing.T) {
	needRoot(t)
	prefix := testPrefix()
	dir := filepath.Join(t.TempDir(), "lab")
	t.Cleanup(func() { _ = Cleanup(prefix, dir) })
	cfg := DefaultConfig()
	cfg.Prefix, cfg.Dir = prefix, dir
	cfg.BinDir = t.TempDir() // no weftd there
	cfg.Nodes, cfg.Sites = 2, 2
	_, err := Up(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "weftd") {
		t.Fatalf("up without weftd: %v, want an error about weftd", err)
	}
	assertNoNetns(t, prefix)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("lab dir still there: %v", err)
	}
}

func TestCleanupKillsAndDeletes(t *testing.T) {
	needRoot(t)
	prefix := testPrefix()
	name := prefix + "-n1"
	dir := filepath.Join(t.TempDir(), "lab")
	if err := os.MkdirAll(filepath.Join(dir, "n1"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cmd := exec.Command("ip", "netns", "exec", name, "sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Wait until ip has exec'd sleep inside the namespace.
	for deadline := time.Now().Add(5 * time.Second); ; {
		pids, _ := netnsPIDs(context.Background(), name)
		if len(pids) == 1 && pids[0] == pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep (pid %d) not seen in %s: %v", pid, name, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Cleanup sees our child as a zombie once it dies; its own wait treats
	// a zombie as gone, so this returns without our reaping first.
	if err := Cleanup(prefix, dir); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	select {
	case err := <-exited:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Errorf("sleep ended with %v, want killed by a signal", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sleep still running after Cleanup")
	}
	if netnsExists(name) {
		t.Error("namespace still exists")
	}
	assertNoNetns(t, prefix)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir still there: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"default", func(*Config) {}, true},
		{"four sites", func(c *Config) { c.Sites, c.Nodes = 4, 4 }, false},
		{"fewer nodes than sites", func(c *Config) { c.Sites, c.Nodes = 3, 2 }, false},
		{"dash in prefix", func(c *Config) { c.Prefix = "a-b" }, false},
		{"relative dir", func(c *Config) { c.Dir = "lab" }, false},
		{"top-level dir", func(c *Config) { c.Dir = "/tmp" }, false},
		{"unknown external", func(c *Config) { c.External = []string{"n9"} }, false},
		{"wireguard", func(c *Config) { c.Transport = "wireguard" }, true},
		{"wireguard-across-sites", func(c *Config) { c.Transport = "wireguard-across-sites" }, true},
		{"unknown transport", func(c *Config) { c.Transport = "ipsec" }, false},
		{"nat", func(c *Config) { c.Topology, c.Transport = TopologyNAT, "wireguard-across-sites" }, true},
		{"nat over vxlan", func(c *Config) { c.Topology = TopologyNAT }, false},
		{"nat with 4 nodes", func(c *Config) { c.Topology, c.Transport, c.Nodes = TopologyNAT, "wireguard", 4 }, false},
		{"nat with internet", func(c *Config) { c.Topology, c.Transport, c.Internet = TopologyNAT, "wireguard", true }, false},
		{"unknown topology", func(c *Config) { c.Topology = "mesh" }, false},
		{"dual-stack", func(c *Config) { c.DualStack = true }, true},
		{"dual-stack claims", func(c *Config) { c.DualStack, c.ClaimCIDRs = true, true }, true},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.validate(); (err == nil) != tc.ok {
			t.Errorf("%s: validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestPlanNAT: the NAT topology's plan: the two clouds share their private
// /24, public addresses only where a node has one, one gateway per site,
// and seeds that each node can reach (its site-mates' private addresses,
// every public one, never another site's private one).
func TestPlanNAT(t *testing.T) {
	c := DefaultConfig()
	c.Topology, c.Transport = TopologyNAT, "wireguard-across-sites"
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	l := plan(c)
	if len(l.Nodes) != 7 || len(l.Gateways) != 3 || l.Topology != TopologyNAT {
		t.Fatalf("%d nodes, %d gateways, topology %q", len(l.Nodes), len(l.Gateways), l.Topology)
	}
	if l.Node("n1").UnderlayAddr != l.Node("n3").UnderlayAddr {
		t.Errorf("n1 %s and n3 %s: the clouds should overlap", l.Node("n1").UnderlayAddr, l.Node("n3").UnderlayAddr)
	}
	for name, want := range map[string]string{"n1": "203.0.113.11", "n4": "203.0.113.22", "n5": "", "n6": "", "n7": ""} {
		if got := l.Node(name).PublicAddr; got != want {
			t.Errorf("%s public %q, want %q", name, got, want)
		}
	}
	if got, want := l.seedsFor(l.Node("n6")), "203.0.113.11,203.0.113.12,203.0.113.21,203.0.113.22,198.51.100.12"; got != want {
		t.Errorf("n6 seeds %q, want %q", got, want)
	}
	if got, want := l.seedsFor(l.Node("n3")), "203.0.113.11,203.0.113.12,192.0.2.12,192.0.2.13"; got != want {
		t.Errorf("n3 seeds %q, want %q", got, want)
	}
	rules := l.natRules(*l.Gateway("cloud-b"))
	for _, want := range []string{"ip daddr 203.0.113.21 dnat to 192.0.2.11", "ip saddr 192.0.2.12 snat to 203.0.113.22", "masquerade random", `iifname "wan" drop`} {
		if !strings.Contains(rules, want) {
			t.Errorf("cloud-b rules lack %q:\n%s", want, rules)
		}
	}
	if strings.Contains(l.natRules(*l.Gateway("onprem")), "dnat to") {
		t.Error("the on-premises gateway forwards a port")
	}
}

func TestMain(m *testing.M) { prereqtest.Main(m) }

// TestUpWithWeftd is the lab end to end: real weftd on every node, pods
// through the real weft-cni via libcni, gossip, ping and TCP across sites,
// then pod removal and teardown.
func TestUpWithWeftd(t *testing.T) {
	prereqtest.Netns(t, "ip")
	bin := prereqtest.Binaries(t)
	prefix := testPrefix()
	dir := filepath.Join(t.TempDir(), "lab")
	t.Cleanup(func() {
		if err := Cleanup(prefix, dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	var log bytes.Buffer
	cfg := DefaultConfig()
	cfg.Prefix, cfg.Dir, cfg.BinDir, cfg.Log = prefix, dir, bin, &log
	cfg.Nodes, cfg.Sites, cfg.PodsPerNode = 3, 2, 1
	cfg.External = []string{"n3"}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up: %v\n%s", err, log.String())
	}
	var pids []int
	for _, n := range l.Nodes {
		if n.External != (n.WeftdPID == 0) {
			t.Errorf("node %s external=%v weftd pid %d", n.Name, n.External, n.WeftdPID)
		}
		if n.WeftdPID != 0 {
			pids = append(pids, n.WeftdPID)
		}
	}
	if len(l.Pods) != 2 || len(l.PodsOn("n3")) != 0 {
		t.Fatalf("pods %+v, want one on n1 and one on n2", l.Pods)
	}
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	err = l.WaitConverged(cctx)
	ccancel()
	if err != nil {
		t.Fatal(err)
	}
	st, err := l.Status(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].Name != "n2" || len(st.Peers[0].PodCIDRs) != 1 || st.Peers[0].PodCIDRs[0] != "10.244.2.0/24" {
		t.Errorf("n1 peers %+v, want n2 with 10.244.2.0/24", st.Peers)
	}

	p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	if !strings.HasPrefix(p1.Address, "10.244.1.") || !strings.HasPrefix(p2.Address, "10.244.2.") {
		t.Errorf("pod addresses %s, %s outside their node CIDRs", p1.Address, p2.Address)
	}
	for _, pr := range [][2]Pod{{p1, p2}, {p2, p1}} {
		if _, err := l.Ping(ctx, pr[0].Netns, pr[1].Address, 3); err != nil {
			t.Errorf("%v", err)
		}
		r, err := l.Transfer(ctx, pr[0], pr[1], 4<<20)
		if err != nil {
			t.Errorf("%v", err)
		} else {
			t.Logf("%s→%s: %.1f MB/s", pr[0].Name, pr[1].Name, r.MBps())
		}
	}

	// A second pod on n1 gets the next number and address; removing it
	// takes its namespace and its lab.json entry away.
	p3, err := l.AddPod(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if p3.Name != "n1-p2" || p3.Address == p1.Address {
		t.Errorf("second pod %+v", p3)
	}
	if _, err := l.Ping(ctx, p3.Netns, p2.Address, 1); err != nil {
		t.Errorf("new pod: %v", err)
	}
	if _, err := l.AddPod(ctx, "n3"); err == nil {
		t.Error("AddPod on an external node succeeded")
	}
	if err := l.DelPod(ctx, p3); err != nil {
		t.Errorf("del pod: %v", err)
	}
	if netnsExists(p3.Netns) {
		t.Error("deleted pod's namespace remains")
	}
	if got, err := Load(dir); err != nil || len(got.Pods) != 2 {
		t.Errorf("lab.json after DelPod: %v, %+v", err, got)
	}

	if err := l.Down(); err != nil {
		t.Errorf("down: %v", err)
	}
	assertNoNetns(t, prefix)
	for _, pid := range pids {
		if alive(pid, l.reap) {
			t.Errorf("weftd %d still running after Down", pid)
		}
	}
}
