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
			ctx, l, dir := upDualStack(t, bin, transport, func(c *Config) { c.ClaimCIDRs = tc.claims })
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
			primePairs(ctx, t, l)
			pairsBothFamilies(ctx, t, l, 2<<20)
		})
	}
}

// upDualStack brings up a lab (weft binaries in bin) of three nodes on two sites, one pod each
// with an address of each family, over transport, with cfg changed by
// mod; it waits until gossip has converged. The lab is torn down, and
// checked gone, when the test ends; with a failure the nodes' logs are
// printed first. The context bounds the test (3 minutes).
func upDualStack(t *testing.T, bin, transport string, mod func(*Config)) (context.Context, *Lab, string) {
	t.Helper()
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
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up: %v\n%s", err, log.String())
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes {
				t.Logf("%s log:\n%s", n.Name, tail(n.LogFile, 30))
			}
		}
		l.Down()
	})
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	err = l.WaitConverged(cctx)
	ccancel()
	if err != nil {
		t.Fatal(err)
	}
	return ctx, l, dir
}

// pairsBothFamilies: every ordered pair of pods on different nodes with
// an underlay family in common exchanges ping and a checksummed TCP
// stream of size bytes at each of the target's two addresses.
func pairsBothFamilies(ctx context.Context, t *testing.T, l *Lab, size int64) {
	t.Helper()
	for _, from := range l.Pods {
		for _, to := range l.Pods {
			if from.Node == to.Node || !l.ShareFamily(from.Node, to.Node) {
				continue
			}
			for _, addr := range []string{to.Address, to.Address6} {
				if _, err := l.Ping(ctx, from.Netns, addr, 2); err != nil {
					t.Errorf("%v", err)
				}
				r, err := l.TransferTo(ctx, from, to, addr, size)
				if err != nil {
					t.Errorf("%v", err)
				} else {
					t.Logf("%s→%s %s: %.1f MB/s", from.Name, to.Name, addr, r.MBps())
				}
			}
		}
	}
}
