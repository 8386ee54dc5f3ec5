package peer

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// BenchmarkConvergence measures, for clusters of 64, 128 and 256
// in-process nodes gossiping over 127.0.0.1 with memberlist's LAN
// settings (what weftd runs), how long a new node's CIDR takes to reach
// every node and how long a failed node (shut down without leaving)
// takes to be withdrawn by every node. Run it once per size:
//
//	go test -run XXX -bench BenchmarkConvergence -benchtime 1x ./peer/
func BenchmarkConvergence(b *testing.B) {
	for _, n := range []int{64, 128, 256} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchConvergence(b, n) })
	}
}

func benchRecord(i int) Record {
	return Record{
		Name:       fmt.Sprintf("b%d", i),
		Underlay:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)}), 4789),
		PodCIDRs:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)},
		VTEPMAC:    [6]byte{2, 0, 0, 0, byte(i >> 8), byte(i)},
		Caps:       CapVXLAN,
		Generation: 1,
	}
}

func benchJoin(b *testing.B, i int, seed string) *Membership {
	cfg := DefaultConfig() // memberlist LAN values
	cfg.BindAddr = loopback
	cfg.BindPort = 0
	if seed != "" {
		cfg.Seeds = []string{seed}
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	m, err := Join(cfg, benchRecord(i))
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// waitEvery polls until ok holds for every member, or fails after limit.
func waitEvery(b *testing.B, ms []*Membership, limit time.Duration, what string, ok func(*Membership) bool) time.Duration {
	start := time.Now()
	for {
		done := 0
		for _, m := range ms {
			if ok(m) {
				done++
			}
		}
		if done == len(ms) {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			b.Fatalf("%s: %d of %d nodes after %v", what, done, len(ms), limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sees(name string, alive bool) func(*Membership) bool {
	return func(m *Membership) bool {
		i := slices.IndexFunc(m.Peers(), func(p Peer) bool { return p.Record.Name == name && p.State == StateAlive })
		return (i >= 0) == alive
	}
}

func benchConvergence(b *testing.B, n int) {
	nodes := make([]*Membership, 0, n)
	defer func() {
		var wg sync.WaitGroup
		for _, m := range nodes {
			wg.Add(1)
			go func() { defer wg.Done(); m.Close() }()
		}
		wg.Wait()
	}()
	nodes = append(nodes, benchJoin(b, 0, ""))
	seed := nodes[0].GossipAddr().String()
	for i := 1; i < n; i++ {
		nodes = append(nodes, benchJoin(b, i, seed))
	}
	waitEvery(b, nodes, 2*time.Minute, "initial convergence", func(m *Membership) bool { return len(m.Peers()) == n-1 })

	var join, fail time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A node joins through a random member; its record (with its
		// CIDR) must reach all n existing nodes.
		start := time.Now()
		nm := benchJoin(b, n+i, nodes[(i*7919)%n].GossipAddr().String())
		waitEvery(b, nodes, time.Minute, "join", sees(nm.Self().Name, true))
		join += time.Since(start)
		// It fails (no leave): every node must withdraw it.
		start = time.Now()
		nm.Close()
		waitEvery(b, nodes, 2*time.Minute, "failure", sees(nm.Self().Name, false))
		fail += time.Since(start)
	}
	b.StopTimer()
	lan := memberlist.DefaultLANConfig()
	b.ReportMetric(join.Seconds()/float64(b.N), "s-join-to-all")
	b.ReportMetric(fail.Seconds()/float64(b.N), "s-failed-withdrawn")
	b.ReportMetric(lan.GossipInterval.Seconds(), "s-gossip-interval")
	b.ReportMetric(float64(lan.GossipNodes), "gossip-fanout")
	b.ReportMetric(lan.ProbeInterval.Seconds(), "s-probe-interval")
	b.ReportMetric(lan.ProbeTimeout.Seconds(), "s-probe-timeout")
	b.ReportMetric(float64(lan.SuspicionMult), "suspicion-mult")
	b.ReportMetric(float64(lan.SuspicionMaxTimeoutMult), "suspicion-max-mult")
}
