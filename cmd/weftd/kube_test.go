package main

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/cni"
)

func TestParseFlagsKube(t *testing.T) {
	t.Setenv("NODE_NAME", "node-from-downward-api")
	c, err := parseFlags([]string{"--kube", "--insecure-gossip"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.kubeMode() || c.Name != "node-from-downward-api" {
		t.Fatalf("kube=%v name=%q, want Kubernetes mode named by $NODE_NAME", c.kubeMode(), c.Name)
	}
	if c.PodCIDR.IsValid() || c.UnderlayAddr.IsValid() || c.VTEPMAC != ([6]byte{}) {
		t.Fatalf("pod CIDR, underlay and MAC must wait for the Node: %v %v %x", c.PodCIDR, c.UnderlayAddr, c.VTEPMAC)
	}
	if c, err := parseFlags([]string{"--kubeconfig", "/x", "--name", "n1", "--insecure-gossip"}); err != nil || !c.kubeMode() || c.Name != "n1" {
		t.Fatalf("--kubeconfig: %v %v %q", err, c.kubeMode(), c.Name)
	}
	for _, args := range [][]string{
		{"--kube", "--pod-cidr", "10.244.1.0/24", "--insecure-gossip"},
		{"--kube", "--node-cidr-size", "24", "--insecure-gossip"},
	} {
		if _, err := parseFlags(args); err == nil || !strings.Contains(err.Error(), "--kube takes the pod CIDR") {
			t.Errorf("parseFlags(%q) = %v, want the --kube conflict", args, err)
		}
	}
	if c, err := parseFlags([]string{"--kube", "--kube-alt-underlay", "--insecure-gossip"}); err != nil || !c.KubeAltUnderlay {
		t.Fatalf("--kube --kube-alt-underlay: %v %v", err, c.KubeAltUnderlay)
	}
	if _, err := parseFlags([]string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--pod-cidr", "10.244.1.0/24", "--kube-alt-underlay", "--insecure-gossip"}); err == nil || !strings.Contains(err.Error(), "--kube-alt-underlay needs --kube") {
		t.Fatalf("--kube-alt-underlay without --kube: %v", err)
	}
}

// readyz turns true only once the pod CIDR is known and node.json is
// written for it; healthz is true while waiting (weftd is doing its job).
func TestHealthEndpoints(t *testing.T) {
	dir := t.TempDir()
	c := config{RunDir: dir, kubeFlags: kubeFlags{Kube: true, HealthAddr: "127.0.0.1:0"}}
	k := &kubeMode{c: &c, log: slog.New(slog.NewTextHandler(io.Discard, nil)), cancel: func() {}}
	if err := k.ready(); err == nil {
		t.Fatal("ready before the pod CIDR is known")
	}
	if err := k.live(context.Background()); err != nil {
		t.Fatalf("not live while waiting: %v", err)
	}
	pod := netip.MustParsePrefix("10.244.3.0/24")
	// A node.json from an earlier run, for another CIDR, does not count.
	old := cni.NodeState{NodeName: "n1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")}, Gateway: netip.MustParseAddr("10.244.9.1"), MTU: 1450, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	if err := cni.WriteNodeState(dir, old); err != nil {
		t.Fatal(err)
	}
	k.podCIDR.Store(&pod)
	if err := k.ready(); err == nil {
		t.Fatal("ready with a stale node.json")
	}
	st := old
	st.PodCIDRs, st.Gateway = []netip.Prefix{pod}, netip.MustParseAddr("10.244.3.1")
	if err := cni.WriteNodeState(dir, st); err != nil {
		t.Fatal(err)
	}
	if err := k.ready(); err != nil {
		t.Fatalf("not ready: %v", err)
	}
	// Ready, but no control socket answers: not live.
	if err := k.live(context.Background()); err == nil {
		t.Fatal("live without a control socket")
	}

	if err := k.serveHealth(nil); err != nil {
		t.Fatal(err)
	}
	defer k.Close()
}

func TestSiteOf(t *testing.T) {
	zone := map[string]string{"topology.kubernetes.io/zone": "zone-a", "rack": "r7"}
	for _, tc := range []struct {
		site, label string
		want        string
	}{
		{"", "topology.kubernetes.io/zone", "zone-a"}, // the default label
		{"", "rack", "r7"},
		{"given", "topology.kubernetes.io/zone", "given"}, // --site wins
		{"", "", ""},        // --site-label "": no site
		{"", "missing", ""}, // a Node without the label
	} {
		c := config{Site: tc.site}
		c.SiteLabel = tc.label
		if got := siteOf(c, zone); got != tc.want {
			t.Errorf("site %q, label %q: %q, want %q", tc.site, tc.label, got, tc.want)
		}
	}
}

// TestKubePodCIDR6: a dual-stack Node's IPv6 pod CIDR is taken when
// --cluster-cidr has an IPv6 range and it fits inside; otherwise weftd runs
// IPv4 pods only, or (a block outside the range) refuses to start.
func TestKubePodCIDR6(t *testing.T) {
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	dual := config{Name: "n1", clusterCIDR: "10.244.0.0/16,fd00:10:244::/56"}
	if err := dual.parseClusterCIDRs(); err != nil {
		t.Fatal(err)
	}
	if p, err := kubePodCIDR6(dual, cidrs); err != nil || p != cidrs[1] {
		t.Fatalf("dual-stack: %v %v", p, err)
	}
	if p, err := kubePodCIDR6(dual, cidrs[:1]); err != nil || p.IsValid() {
		t.Fatalf("IPv4-only Node: %v %v", p, err)
	}
	v4 := config{Name: "n1", clusterCIDR: "10.244.0.0/16"}
	if err := v4.parseClusterCIDRs(); err != nil {
		t.Fatal(err)
	}
	if p, err := kubePodCIDR6(v4, cidrs); err != nil || p.IsValid() {
		t.Fatalf("IPv4-only cluster CIDR: %v %v", p, err)
	}
	outside := []netip.Prefix{cidrs[0], netip.MustParsePrefix("fd00:99::/64")}
	if _, err := kubePodCIDR6(dual, outside); err == nil || !strings.Contains(err.Error(), "not a /120-or-larger block inside") {
		t.Fatalf("outside: %v", err)
	}
}
