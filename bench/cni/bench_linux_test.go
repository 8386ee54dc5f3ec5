// Package cni benchmarks weft-cni's ADD and DEL latency against the
// reference bridge + host-local plugins, on the same machine, in the same
// run, interleaved pod by pod so that machine drift hits both alike.
//
// Run as root:
//
//	go test -run XXX -bench . -benchtime 1x ./bench/cni/
//
// Each plugin is driven through libcni from inside one node netns, exactly
// as the lab and containerd drive it; the latency is the wall time of
// AddNetworkList / DelNetworkList (plugin exec included, netns creation not).
package cni

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	weftcni "github.com/weftnet/weft/cni"
	"github.com/weftnet/weft/cni/cnitest"
	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

func TestMain(m *testing.M) { prereqtest.Main(m) }

var pods = flag.Int("pods", 200, "pods per plugin (at most 250: one /24 each)")

type plugin struct {
	name string
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	add  []time.Duration
	del  []time.Duration
}

func newPlugin(b *testing.B, name, conf string, path []string) *plugin {
	l, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		b.Fatal(err)
	}
	return &plugin{name: name, cni: libcni.NewCNIConfigWithCacheDir(path, b.TempDir(), nil), list: l}
}

func (p *plugin) rt(pod string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: pod, NetNS: cnitest.NSPath(pod), IfName: "eth0"}
}

func BenchmarkAddDel(b *testing.B) {
	cnitest.RequireRoot(b)
	if *pods < 1 || *pods > 250 {
		b.Fatalf("-pods %d out of [1, 250]", *pods)
	}
	weftBin := cnitest.BuildWeft(b)
	refBin := b.TempDir()
	cnitest.InstallReference(b, refBin, "main/bridge", "ipam/host-local")
	dir := b.TempDir()
	node := cnitest.AddNetns(b, "wbench-node")
	if err := weftcni.WriteNodeState(filepath.Join(dir, "run"), weftcni.NodeState{
		NodeName: "bench", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")},
		Gateway: netip.MustParseAddr("10.244.7.1"), MTU: 1450, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"),
	}); err != nil {
		b.Fatal(err)
	}
	weft := newPlugin(b, "weft-cni", fmt.Sprintf(
		`{"cniVersion":"1.1.0","name":"weft","plugins":[{"type":"weft-cni","runDir":%q,"dataDir":%q}]}`,
		filepath.Join(dir, "run"), filepath.Join(dir, "ipam")), []string{weftBin})
	// The reference: a Linux bridge with the gateway on it, host-local
	// IPAM on disk; no ipMasq, so neither side touches the firewall.
	ref := newPlugin(b, "bridge+host-local", fmt.Sprintf(
		`{"cniVersion":"1.1.0","name":"ref","plugins":[{"type":"bridge","bridge":"wbench0","isGateway":true,"ipMasq":false,`+
			`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.8.0/24"}]],"dataDir":%q}}]}`,
		filepath.Join(dir, "host-local")), []string{refBin})
	both := []*plugin{weft, ref}

	names := make([]string, *pods)
	for i := range names {
		names[i] = cnitest.AddNetns(b, fmt.Sprintf("wbench-p%03d", i))
	}
	// Both plugins wire the same pod netnses, weft as eth0 and the
	// reference as eth1, so netns setup is shared and identical.
	ifname := map[*plugin]string{weft: "eth0", ref: "eth1"}
	rt := func(p *plugin, pod string) *libcni.RuntimeConf {
		r := p.rt(pod)
		r.IfName = ifname[p]
		return r
	}
	inNode := func(fn func() error) error {
		return ns.WithNetNSPath(cnitest.NSPath(node), func(ns.NetNS) error { return fn() })
	}
	ctx := context.Background()

	for range b.N {
		for _, p := range both {
			p.add, p.del = p.add[:0], p.del[:0]
		}
		// One warm-up pod each: page cache, bridge creation.
		for _, p := range both {
			if err := inNode(func() error {
				if _, err := p.cni.AddNetworkList(ctx, p.list, rt(p, names[0])); err != nil {
					return err
				}
				return p.cni.DelNetworkList(ctx, p.list, rt(p, names[0]))
			}); err != nil {
				b.Fatalf("%s warm-up: %v", p.name, err)
			}
		}
		b.ResetTimer()
		for i, pod := range names {
			// Alternate which plugin goes first, so neither always
			// runs right after the other's fsyncs.
			order := both
			if i%2 == 1 {
				order = []*plugin{ref, weft}
			}
			for _, p := range order {
				err := inNode(func() error {
					t0 := time.Now()
					_, err := p.cni.AddNetworkList(ctx, p.list, rt(p, pod))
					p.add = append(p.add, time.Since(t0))
					return err
				})
				if err != nil {
					b.Fatalf("%s ADD %s: %v", p.name, pod, err)
				}
			}
		}
		for i, pod := range names {
			order := both
			if i%2 == 1 {
				order = []*plugin{ref, weft}
			}
			for _, p := range order {
				err := inNode(func() error {
					t0 := time.Now()
					err := p.cni.DelNetworkList(ctx, p.list, rt(p, pod))
					p.del = append(p.del, time.Since(t0))
					return err
				})
				if err != nil {
					b.Fatalf("%s DEL %s: %v", p.name, pod, err)
				}
			}
		}
		b.StopTimer()
	}

	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.Logf("%d pods each, interleaved, CNI 1.1.0 via libcni", *pods)
	b.Logf("%-18s %9s %9s %9s %9s", "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99")
	for _, p := range both {
		b.Logf("%-18s %7.2fms %7.2fms %7.2fms %7.2fms", p.name,
			ms(pct(p.add, 50)), ms(pct(p.add, 99)), ms(pct(p.del, 50)), ms(pct(p.del, 99)))
	}
	ratio := func(w, r []time.Duration, q float64) float64 { return float64(pct(w, q)) / float64(pct(r, q)) }
	b.Logf("ratio weft/ref: ADD p50 %.2f  ADD p99 %.2f  DEL p50 %.2f  DEL p99 %.2f (target ADD p99 <= 1.5)",
		ratio(weft.add, ref.add, 50), ratio(weft.add, ref.add, 99), ratio(weft.del, ref.del, 50), ratio(weft.del, ref.del, 99))
	b.ReportMetric(ms(pct(weft.add, 50)), "weft-add-p50-ms")
	b.ReportMetric(ms(pct(weft.add, 99)), "weft-add-p99-ms")
	b.ReportMetric(ms(pct(ref.add, 99)), "ref-add-p99-ms")
	b.ReportMetric(ratio(weft.add, ref.add, 99), "add-p99-ratio")
	b.ReportMetric(ratio(weft.del, ref.del, 99), "del-p99-ratio")
}

// pct is the q-th percentile by the nearest-rank method.
func pct(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
