package overlay_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/lab"
)

// startFlow starts a lab.Flow from pod from to pod to, stopped at the
// latest when the test ends.
func startFlow(t *testing.T, l *lab.Lab, from, to lab.Pod) *lab.Flow {
	t.Helper()
	f, err := l.StartFlow(context.Background(), from, to)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// routeVia is the device `ip route get` names for addr inside netns, or
// "blackhole" when the lookup fails and the main table holds weft's
// blackhole route for the cluster CIDR (the kernel answers a lookup through
// a blackhole route with an error).
func routeVia(t *testing.T, l *lab.Lab, netns, addr string) string {
	t.Helper()
	ctx := context.Background()
	out, err := l.Exec(ctx, netns, "ip", "route", "get", addr)
	if err == nil {
		f := strings.Fields(string(out))
		for i, w := range f {
			if w == "dev" && i+1 < len(f) {
				return f[i+1]
			}
		}
		return string(out)
	}
	bh, berr := l.Exec(ctx, netns, "ip", "route", "show", "type", "blackhole", lab.ClusterCIDR)
	if berr == nil && strings.Contains(string(bh), lab.ClusterCIDR) {
		return "blackhole"
	}
	return "error: " + string(out)
}

// TestNetnsRestartFailsClosed: under --transport-policy wireguard, n1's
// weftd is killed (SIGKILL), stopped (SIGTERM) and kept down, and its TUN
// device deleted while it is down, with a pod on n1 sending marked
// datagrams to a pod on n2 all along. On n1's underlay not one frame
// carries the marker or an inner pod address in the clear; the route to
// the remote pod stays on weft0 while the device persists and falls to
// the blackhole when it is gone; peers keep n1 across a SIGTERM (a
// restart, not a leave); and traffic flows again after each restart. A
// hand-off to a new weftd comes first, inside the same capture.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestNetnsRestartFailsClosed(t *testing.T) {
	needNetns(t, "tcpdump")
	l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: "wireguard"})
	waitConverged(t, l)
	n1, n2 := l.Node("n1"), l.Node("n2")
	p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	resumed := func(what string) {
		t.Helper()
		f := startFlow(t, l, p1, p2)
		deadline := time.Now().Add(10 * time.Second)
		for _, got := f.Probes(); got < 5 && time.Now().Before(deadline); _, got = f.Probes() {
			time.Sleep(10 * time.Millisecond)
		}
		r := f.Stop()
		if r.ProbesSent-r.ProbesLost < 5 || !r.Survived {
			t.Fatalf("%s: %+v", what, r)
		}
	}
	resumed("before any restart")

	pcap := capture(t, n1.Netns, n1.UnderlayIf, "", func() {
		f := startFlow(t, l, p1, p2)
		defer f.Stop()
		time.Sleep(300 * time.Millisecond)

		// A hand-off to a new weftd started beside the running one.
		if err := l.HandOffWeftd(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)

		// A crash: the device persists, its route holds the traffic.
		if err := l.StopWeftd("n1", syscall.SIGKILL, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if via := routeVia(t, l, n1.Netns, p2.Address); via != "weft0" {
			t.Errorf("after SIGKILL the route to %s is via %q, want weft0", p2.Address, via)
		}
		if err := l.StartWeftd(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)

		// A stop (what a rollout sends), kept down: peers keep n1.
		if err := l.StopWeftd("n1", syscall.SIGTERM, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if s, _ := peerState(status(t, n2), "n1"); s != "alive" {
			t.Errorf("1 s after n1's SIGTERM, n2 has n1 %q, want alive (a restart is no leave)", s)
		}
		// The device gone as well: the blackhole decides.
		if _, err := l.Exec(ctx, n1.Netns, "ip", "link", "del", "weft0"); err != nil {
			t.Fatal(err)
		}
		if via := routeVia(t, l, n1.Netns, p2.Address); via != "blackhole" {
			t.Errorf("with weft0 deleted the route to %s is %q, want the blackhole", p2.Address, via)
		}
		time.Sleep(2 * time.Second)
		if err := l.StartWeftd(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	})
	inner := innerHeader(p1.Address, p2.Address)
	frames := pcapPackets(t, pcap)
	if len(frames) == 0 {
		t.Fatal("nothing captured on n1's underlay")
	}
	for i, f := range frames {
		if bytes.Contains(f, lab.FlowMarker) || bytes.Contains(f, inner) {
			t.Fatalf("frame %d of %d on n1's underlay carries pod traffic in the clear: % x", i, len(frames), f[:min(len(f), 64)])
		}
		if len(f) >= 14+20 && binary.BigEndian.Uint16(f[12:14]) == 0x0800 && f[14+12] == 10 && f[14+13] == 244 {
			t.Fatalf("frame %d leaves with a pod source address: % x", i, f[:min(len(f), 64)])
		}
	}
	resumed("after the restarts")
}

// TestNetnsRestartKeepsTCP: a TCP transfer from a pod on n1 to a pod on n2
// survives n1's weftd killed (SIGKILL) and stopped (SIGTERM) and started
// again at once, mid-stream, over VXLAN and over WireGuard: every byte
// arrives (SHA-256) on the one connection.
func TestNetnsRestartKeepsTCP(t *testing.T) {
	needNetns(t)
	for _, transport := range []string{"vxlan", "wireguard"} {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			t.Run(transport+"/"+sig.String(), func(t *testing.T) {
				l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: transport})
				waitConverged(t, l)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				f := startFlow(t, l, l.PodsOn("n1")[0], l.PodsOn("n2")[0])
				time.Sleep(300 * time.Millisecond)
				stopped := time.Now()
				if err := l.StopWeftd("n1", sig, 5*time.Second); err != nil {
					t.Fatal(err)
				}
				if err := l.StartWeftd(ctx, "n1"); err != nil {
					t.Fatal(err)
				}
				back := time.Since(stopped)
				time.Sleep(time.Second)
				r := f.Stop()
				t.Logf("%s %s: weftd back %s after the signal; TCP %d MB, longest stall %s, %d retransmits; 10 ms probes: longest gap %s, %d of %d lost",
					transport, sig, back.Round(time.Millisecond), r.Bytes>>20, r.LongestStall, r.Retransmits, r.LongestProbeGap, r.ProbesLost, r.ProbesSent)
				if !r.Survived || r.Bytes == 0 {
					t.Fatalf("the TCP connection did not survive the restart: %+v", r)
				}
				if st := status(t, l.Node("n1")); st.Process.Start != "warm" || st.Process.WarmPeers != 1 {
					t.Errorf("the restarted weftd: %+v, want a warm start from 1 peer", st.Process)
				}
			})
		}
	}
}

// TestNetnsWireGuardResumesAfterLongStop: n1's weftd is killed and kept
// down until n2 has declared it dead and withdrawn its routes, then
// started again. n2 keeps n1's WireGuard peer on standby (not routed), so
// the restarted n1's handshake, sent at once because its peers come from
// the warm snapshot, is answered: the first probe from n1's pod reaches
// n2's pod within a round trip of n1's datapath starting, well before
// gossip brings n1 back or wireguard-go's 5 s handshake retry.
func TestNetnsWireGuardResumesAfterLongStop(t *testing.T) {
	needNetns(t, "wg")
	l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: "wireguard"})
	waitConverged(t, l)
	n2 := l.Node("n2")
	p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := startFlow(t, l, p1, p2)
	if err := l.StopWeftd("n1", syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := status(t, n2)
		if s, _ := peerState(st, "n1"); s == "dead" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2 did not declare n1 dead within 20 s: %+v", st.Peers)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range status(t, n2).Peers {
		if p.Name == "n1" && p.Transport != "-" {
			t.Fatalf("n2 still routes to dead n1 over %s", p.Transport)
		}
	}
	if out, err := l.Exec(ctx, n2.Netns, "wg", "show", n2.WGName, "peers"); err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("n2 dropped dead n1's WireGuard peer instead of keeping it on standby: %q %v", out, err)
	}
	arrived := func() int { _, n := f.Probes(); return n }
	before := arrived()
	started := time.Now()
	if err := l.StartWeftd(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(started)
	for arrived() == before && time.Since(started) < 10*time.Second {
		time.Sleep(2 * time.Millisecond)
	}
	first := time.Since(started)
	t.Logf("weftd ready %s after its start; first probe through %s after the start (%s after ready)", ready.Round(time.Millisecond), first.Round(time.Millisecond), (first - ready).Round(time.Millisecond))
	if arrived() == before || first > ready+time.Second {
		t.Fatalf("first probe %s after ready: the handshake waited for gossip or a retry", first-ready)
	}
	// The TCP stream started before the stop lives through it too.
	if r := f.Stop(); !r.Survived {
		t.Errorf("the TCP connection did not survive a stop of %s: %+v", time.Since(started)+ready, r)
	}
}

// TestNetnsHandOff: a new weftd started beside n1's running one takes the
// datapath over (the TUN device, the VXLAN socket, the peer table) while a
// TCP stream and 10 ms probes run from n1's pod to n2's, over VXLAN and
// over WireGuard; the old weftd exits, the connection lives on, and the new
// one reports the hand-off. Twice in a row, so the new weftd hands off in
// turn.
func TestNetnsHandOff(t *testing.T) {
	needNetns(t)
	for _, transport := range []string{"vxlan", "wireguard"} {
		t.Run(transport, func(t *testing.T) {
			l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: transport})
			waitConverged(t, l)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for round := 1; round <= 2; round++ {
				old := l.Node("n1").WeftdPID
				f := startFlow(t, l, l.PodsOn("n1")[0], l.PodsOn("n2")[0])
				time.Sleep(500 * time.Millisecond)
				began := time.Now()
				if err := l.HandOffWeftd(ctx, "n1"); err != nil {
					t.Fatal(err)
				}
				took := time.Since(began)
				time.Sleep(time.Second)
				r := f.Stop()
				t.Logf("%s round %d: hand-off done %s after the start; TCP %d MB, longest stall %s, %d retransmits; 10 ms probes: longest gap %s, %d of %d lost",
					transport, round, took.Round(time.Millisecond), r.Bytes>>20, r.LongestStall, r.Retransmits, r.LongestProbeGap, r.ProbesLost, r.ProbesSent)
				if !r.Survived || r.Bytes == 0 {
					t.Fatalf("the TCP connection did not survive the hand-off: %+v", r)
				}
				st := status(t, l.Node("n1"))
				if st.Process.Start != "handoff" || st.Process.HandOffFrom != old || st.Process.WarmPeers != 1 || st.Process.PID == old {
					t.Fatalf("the new weftd: %+v, want a hand-off from pid %d with 1 peer", st.Process, old)
				}
				if s, _ := peerState(status(t, l.Node("n2")), "n1"); s != "alive" {
					t.Fatalf("n2 has n1 %q after the hand-off, want alive", s)
				}
			}
		})
	}
}
