package lab

import (
	"strings"
	"testing"
)

// TestPlanUnderlay: the addresses each underlay option plans, the flags
// weftd gets from them, and the combinations validate refuses. No root:
// plan touches nothing.
func TestPlanUnderlay(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Dir, cfg.Nodes, cfg.Sites, cfg.Underlay = "/run/weft-lab-plan", 4, 2, UnderlayIPv6
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	l := plan(cfg)
	if l.Underlay != UnderlayIPv6 || l.Router.Sites[0].Subnet != "2001:db8:1::/64" || l.Router.Sites[1].Gateway != "2001:db8:2::1" {
		t.Fatalf("ipv6 sites: %+v", l.Router.Sites)
	}
	for i, want := range []string{"2001:db8:1::11", "2001:db8:2::12", "2001:db8:1::13", "2001:db8:2::14"} {
		if n := l.Nodes[i]; n.UnderlayAddr != want || n.AltUnderlayAddr != "" {
			t.Errorf("ipv6 node %s: %q %q, want %s only", n.Name, n.UnderlayAddr, n.AltUnderlayAddr, want)
		}
	}
	if got := l.forwardSysctls()["net.ipv6.conf.all.forwarding"]; got != "1" {
		t.Errorf("IPv6 forwarding sysctl %q, want 1", got)
	}

	cfg.Underlay, cfg.Nodes = UnderlayMixed, 6
	l = plan(cfg)
	want := [][2]string{{"192.0.2.11", ""}, {"2001:db8:2::12", ""}, {"192.0.2.13", "2001:db8:1::13"}, {"198.51.100.14", ""}, {"2001:db8:1::15", ""}, {"198.51.100.16", "2001:db8:2::16"}}
	for i, w := range want {
		if n := l.Nodes[i]; n.UnderlayAddr != w[0] || n.AltUnderlayAddr != w[1] {
			t.Errorf("mixed node %s: %q %q, want %q %q", n.Name, n.UnderlayAddr, n.AltUnderlayAddr, w[0], w[1])
		}
	}
	if l.ShareFamily("n1", "n2") || !l.ShareFamily("n1", "n3") || !l.ShareFamily("n2", "n3") || !l.ShareFamily("n2", "n5") {
		t.Error("ShareFamily does not follow the planned families")
	}
	// Seeds in the node's own families only.
	if got := l.seedsFor(l.Node("n1")); got != "192.0.2.13,198.51.100.14,198.51.100.16" {
		t.Errorf("n1 (IPv4) seeds %q", got)
	}
	if got := l.seedsFor(l.Node("n2")); got != "2001:db8:1::13,2001:db8:1::15,2001:db8:2::16" {
		t.Errorf("n2 (IPv6) seeds %q", got)
	}

	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Underlay = "ipv5" }, "want ipv4, ipv6 or mixed"},
		{func(c *Config) { c.Underlay, c.Internet = UnderlayIPv6, true }, "internet namespace is IPv4"},
		{func(c *Config) { c.Underlay, c.Topology = UnderlayMixed, TopologyNAT; c.Transport = "wireguard" }, "only with the plain topology"},
	} {
		c := DefaultConfig()
		c.Dir = "/run/weft-lab-plan"
		tc.mod(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("validate %+v: %v, want %q", c.Underlay, err, tc.want)
		}
	}
}
