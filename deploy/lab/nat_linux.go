package lab

// The NAT topology (TopologyNAT): its plan, its gateways, and what tests do
// to a NAT (forget its mappings).

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// planNAT fills l's router, gateways and nodes for TopologyNAT.
func planNAT(l *Lab, cfg Config) {
	l.Topology = TopologyNAT
	l.Router.Sites = []Site{natInternet}
	i := 0
	for _, s := range natSites {
		g := Gateway{Site: s.name, Netns: cfg.Prefix + "-" + s.netns, LAN: s.lan, LANGW: s.lanGW, WAN: s.wan, Public: map[string]string{}}
		for _, nn := range s.nodes {
			i++
			n := Node{
				Name:         fmt.Sprintf("n%d", i),
				Site:         s.name,
				UnderlayAddr: nn.private,
				UnderlayIf:   "eth0",
				PodCIDR:      fmt.Sprintf("10.244.%d.0/24", i),
				PublicAddr:   nn.public,
			}
			if nn.public != "" {
				g.Public[n.Name] = nn.public
			}
			l.Nodes = append(l.Nodes, n)
		}
		l.Gateways = append(l.Gateways, g)
	}
}

// seedsFor is the --seeds of node n: in the plain topology every node's
// address (Lab.Seed); behind NAT what n can reach: its site-mates'
// internal addresses and every public address.
func (l *Lab) seedsFor(n *Node) string {
	if l.Underlay == UnderlayMixed {
		return l.mixedSeeds(n)
	}
	if l.Topology != TopologyNAT {
		return l.Seed
	}
	var out []string
	for _, m := range l.Nodes {
		switch {
		case m.External || m.Name == n.Name:
		case m.Site == n.Site:
			out = append(out, m.UnderlayAddr)
		case m.PublicAddr != "":
			out = append(out, m.PublicAddr)
		}
	}
	return strings.Join(out, ",")
}

// mixedSeeds is the --seeds of node n in a mixed-underlay lab: every other
// node's addresses in the families n has.
func (l *Lab) mixedSeeds(n *Node) string {
	has := func(v6 bool) bool {
		return is6(n.UnderlayAddr) == v6 || (n.AltUnderlayAddr != "" && is6(n.AltUnderlayAddr) == v6)
	}
	var out []string
	for _, m := range l.Nodes {
		if m.External || m.Name == n.Name {
			continue
		}
		for _, a := range []string{m.UnderlayAddr, m.AltUnderlayAddr} {
			if a != "" && has(is6(a)) {
				out = append(out, a)
			}
		}
	}
	return strings.Join(out, ",")
}

// makeGateways builds the NAT gateways of TopologyNAT: a namespace per
// site with the LAN bridge and a WAN veth on the router's internet bridge,
// and its nftables NAT (natRules).
func (l *Lab) makeGateways(ctx context.Context) error {
	for _, g := range l.Gateways {
		fmt.Fprintf(l.log, "creating NAT gateway %s (%s, wan %s)\n", g.Netns, g.Site, g.WAN)
		if _, err := ip(ctx, "netns", "add", g.Netns); err != nil {
			return err
		}
		if err := setSysctls(g.Netns, map[string]string{
			"net.ipv4.ip_forward":             "1",
			"net.ipv4.conf.all.rp_filter":     "0",
			"net.ipv4.conf.default.rp_filter": "0",
		}); err != nil {
			return err
		}
		bits := prefixLen(natInternet.Subnet)
		cmds := [][]string{
			{"-n", g.Netns, "link", "set", "lo", "up"},
			{"-n", g.Netns, "link", "add", "br-lan", "type", "bridge"},
			{"-n", g.Netns, "addr", "add", fmt.Sprintf("%s/%d", g.LANGW, prefixLen(g.LAN)), "dev", "br-lan"},
			{"-n", g.Netns, "link", "set", "br-lan", "up"},
			{"-n", l.Router.Netns, "link", "add", "v" + strings.TrimPrefix(g.Netns, l.Prefix+"-"), "type", "veth", "peer", "name", "wan", "netns", g.Netns},
			{"-n", l.Router.Netns, "link", "set", "v" + strings.TrimPrefix(g.Netns, l.Prefix+"-"), "master", bridgeName(natInternet)},
			{"-n", l.Router.Netns, "link", "set", "v" + strings.TrimPrefix(g.Netns, l.Prefix+"-"), "up"},
			{"-n", g.Netns, "addr", "add", fmt.Sprintf("%s/%d", g.WAN, bits), "dev", "wan"},
			{"-n", g.Netns, "link", "set", "wan", "up"},
			{"-n", g.Netns, "route", "add", "default", "via", natInternet.Gateway, "dev", "wan"},
		}
		// The public addresses live on the WAN side, so the gateway
		// answers ARP for them on the internet segment.
		for _, node := range sortedKeys(g.Public) {
			cmds = append(cmds, []string{"-n", g.Netns, "addr", "add", fmt.Sprintf("%s/%d", g.Public[node], bits), "dev", "wan"})
		}
		for _, c := range cmds {
			if _, err := ip(ctx, c...); err != nil {
				return fmt.Errorf("gateway %s: %w", g.Netns, err)
			}
		}
		if _, err := runStdin(ctx, l.natRules(g), "ip", "netns", "exec", g.Netns, "nft", "-f", "-"); err != nil {
			return fmt.Errorf("gateway %s nftables: %w", g.Netns, err)
		}
	}
	return nil
}

// natRules is gateway g's nftables ruleset: 1:1 NAT for the nodes with a
// public address (DNAT in, SNAT out), a masquerade with a random port per
// mapping for the rest, and no inbound path but replies and the public
// addresses.
func (l *Lab) natRules(g Gateway) string {
	var b strings.Builder
	b.WriteString("table ip lab-nat {\n")
	b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
	for _, node := range sortedKeys(g.Public) {
		fmt.Fprintf(&b, "\t\tiifname \"wan\" ip daddr %s dnat to %s\n", g.Public[node], l.Node(node).UnderlayAddr)
	}
	b.WriteString("\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
	for _, node := range sortedKeys(g.Public) {
		fmt.Fprintf(&b, "\t\toifname \"wan\" ip saddr %s snat to %s\n", l.Node(node).UnderlayAddr, g.Public[node])
	}
	b.WriteString("\t\toifname \"wan\" masquerade random\n\t}\n")
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n")
	b.WriteString("\t\tiifname \"wan\" ct state established,related accept\n")
	b.WriteString("\t\tiifname \"wan\" ct status dnat accept\n")
	b.WriteString("\t\tiifname \"wan\" drop\n\t}\n}\n")
	return b.String()
}

// FlushConntrack makes site's NAT gateway forget every mapping (what a NAT
// does after a reboot or an idle timeout): the next packet of each flow
// gets a new one, from nodes without a public address on a new random
// port.
func (l *Lab) FlushConntrack(site string) error {
	g := l.Gateway(site)
	if g == nil {
		return fmt.Errorf("no NAT gateway for site %q", site)
	}
	ns, err := netns.GetFromName(g.Netns)
	if err != nil {
		return fmt.Errorf("gateway %s: %w", g.Netns, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("gateway %s: netlink: %w", g.Netns, err)
	}
	defer h.Close()
	if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("gateway %s: flush conntrack: %w", g.Netns, err)
	}
	return nil
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
