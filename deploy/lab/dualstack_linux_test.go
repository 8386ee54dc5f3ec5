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
// pairs alike.
func TestUpDualStack(t *testing.T) {
	prereqtest.Netns(t, "ip")
	bin := prereqtest.Binaries(t)
	for _, transport := range []string{"vxlan", "wireguard"} {
		t.Run(transport, func(t *testing.T) {
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
			if err != nil || !saved.DualStack || saved.ClusterCIDR6 != ClusterCIDR6 || saved.Node("n2").PodCIDR6 != "fd00:10:244:2::/64" {
				t.Fatalf("lab.json: %v %+v", err, saved)
			}
			st, err := l.Status(ctx, "n1")
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range st.Peers {
				n := l.Node(p.Name)
				if !slices.Contains(p.PodCIDRs, n.PodCIDR) || !slices.Contains(p.PodCIDRs, n.PodCIDR6) {
					t.Errorf("n1 has peer %s with pod CIDRs %v, want %s and %s", p.Name, p.PodCIDRs, n.PodCIDR, n.PodCIDR6)
				}
			}
			for _, p := range l.Pods {
				a, err := netip.ParseAddr(p.Address6)
				if err != nil || !netip.MustParsePrefix(l.Node(p.Node).PodCIDR6).Contains(a) {
					t.Fatalf("pod %s IPv6 address %q outside its node's %s", p.Name, p.Address6, l.Node(p.Node).PodCIDR6)
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
