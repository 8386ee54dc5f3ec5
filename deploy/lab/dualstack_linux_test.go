package lab

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

// TestUpDualStack is the dual-stack lab end to end over each transport:
// real weftd on three nodes on two sites, each with 10.244.<i>.0/24 and
// fd00:10:244:<i>::/64; pods get an address of each family through the
// real weft-cni; every ordered pair of pods exchanges ping and a
// checksummed TCP stream in both families; peers carry both pod CIDRs;
// lab.json records the IPv6 half. Two sites: same-site and cross-site
// pairs alike. "claims" runs the same without given pod CIDRs: each weftd
// claims a /24 and a /64 over gossip (--node-cidr-size), none overlapping.
func TestUpDualStack(t *testing.T) {
	prereqtest.Netns(t, "ip")
	bin := prereqtest.Binaries(t)
	for _, tc := range []struct {
		name, transport string
		claims          bool
	}{{"vxlan", "vxlan", false}, {"wireguard", "wireguard", false}, {"claims", "vxlan", true}} {
		transport := tc.transport
		t.Run(tc.name, func(t *testing.T) {
			prefix := testPrefix()
			dir := filepath.Join(t.TempDir(), "lab")
			t.Cleanup(func() {
				if err := Cleanup(prefix, dir); err != nil {
					t.Errorf("cleanup: %v", err)
				}
				assertNoNetns(t, prefix)
			})
			var log bytes.Buffer
			cfg := DefaultConfig()
			cfg.Prefix, cfg.Dir, cfg.BinDir, cfg.Log = prefix, dir, bin, &log
			cfg.Nodes, cfg.Sites, cfg.PodsPerNode = 3, 2, 1
			cfg.Transport = transport
			cfg.DualStack = true
			cfg.ClaimCIDRs = tc.claims
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			l, err := Up(ctx, cfg)
			if err != nil {
				t.Fatalf("up: %v\n%s", err, log.String())
			}
			defer l.Down()
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			err = l.WaitConverged(cctx)
			ccancel()
			if err != nil {
				t.Fatal(err)
			}
			saved, err := Load(dir)
			if err != nil || !saved.DualStack || saved.ClusterCIDR6 != ClusterCIDR6 || (!tc.claims && saved.Node("n2").PodCIDR6 != "fd00:10:244:2::/64") {
				t.Fatalf("lab.json: %v %+v", err, saved)
			}
			// Each node's pod CIDRs: the lab's, or with claims the /24 and
			// /64 its weftd claimed, distinct from every other node's.
			cidrs := map[string][2]netip.Prefix{}
			for _, n := range l.Nodes {
				if !tc.claims {
					cidrs[n.Name] = [2]netip.Prefix{netip.MustParsePrefix(n.PodCIDR), netip.MustParsePrefix(n.PodCIDR6)}
					continue
				}
				self, err := l.Status(ctx, n.Name)
				if err != nil {
					t.Fatal(err)
				}
				got := self.Self.PodCIDRs
				if len(got) != 2 {
					t.Fatalf("%s claimed %v, want one block per family", n.Name, got)
				}
				c4, c6 := netip.MustParsePrefix(got[0]), netip.MustParsePrefix(got[1])
				if c4.Bits() != 24 || c6.Bits() != 64 || !netip.MustParsePrefix(ClusterCIDR).Contains(c4.Addr()) || !netip.MustParsePrefix(ClusterCIDR6).Contains(c6.Addr()) {
					t.Fatalf("%s claimed %v, want a /24 of %s and a /64 of %s", n.Name, got, ClusterCIDR, ClusterCIDR6)
				}
				for o, oc := range cidrs {
					if oc[0].Overlaps(c4) || oc[1].Overlaps(c6) {
						t.Fatalf("%s and %s both claim %v / %v", o, n.Name, oc, got)
					}
				}
				cidrs[n.Name] = [2]netip.Prefix{c4, c6}
			}
			st, err := l.Status(ctx, "n1")
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range st.Peers {
				c := cidrs[p.Name]
				if !slices.Contains(p.PodCIDRs, c[0].String()) || !slices.Contains(p.PodCIDRs, c[1].String()) {
					t.Errorf("n1 has peer %s with pod CIDRs %v, want %s and %s", p.Name, p.PodCIDRs, c[0], c[1])
				}
			}
			for _, p := range l.Pods {
				a, err := netip.ParseAddr(p.Address6)
				if err != nil || !cidrs[p.Node][1].Contains(a) {
					t.Fatalf("pod %s IPv6 address %q outside its node's %s", p.Name, p.Address6, cidrs[p.Node][1])
				}
			}
			// One echo per pair first, unchecked: under WireGuard the first
			// packet between two peers waits for their handshake, which
			// can outlast a ping's 2 s (seen once in 12 pairs).
			for _, from := range l.Pods {
				for _, to := range l.Pods {
					if from.Node != to.Node {
						l.Ping(ctx, from.Netns, to.Address, 1)
					}
				}
			}
			for _, from := range l.Pods {
				for _, to := range l.Pods {
					if from.Node == to.Node {
						continue
					}
					for _, addr := range []string{to.Address, to.Address6} {
						if _, err := l.Ping(ctx, from.Netns, addr, 2); err != nil {
							t.Errorf("%v", err)
						}
						r, err := l.TransferTo(ctx, from, to, addr, 2<<20)
						if err != nil {
							t.Errorf("%v", err)
						} else {
							t.Logf("%s→%s %s: %.1f MB/s", from.Name, to.Name, addr, r.MBps())
						}
					}
				}
			}
		})
	}
}
