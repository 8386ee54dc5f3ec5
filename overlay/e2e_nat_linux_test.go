package overlay_test

// The lab across clouds (lab.TopologyNAT): two clouds on the same private
// /24 behind 1:1 NAT, a node without a public address in one of them, and
// an on-premises site with no inbound path at all.

import (
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/overlay/control"
)

// pathTo is how status st reaches peer name (control.Node.Path).
func pathTo(st control.Status, name string) string {
	for _, p := range st.Peers {
		if p.Name == name {
			return p.Path
		}
	}
	return ""
}

// hasInnerHeader reports whether b holds an IPv4 header (version 4, 20
// bytes) whose source and destination are both inside 10.244.0.0/16: an
// inner pod header in the clear. Six fixed bytes keep random ciphertext
// from matching by chance.
func hasInnerHeader(b []byte) bool {
	for i := 0; i+20 <= len(b); i++ {
		if b[i] == 0x45 && b[i+12] == 10 && b[i+13] == 244 && b[i+16] == 10 && b[i+17] == 244 {
			return true
		}
	}
	return false
}

// TestNetnsAcrossNAT: every pod pair across all three sites exchanges
// pings and a TCP transfer; on the internet segment only WireGuard and
// gossip travel (no VXLAN, no inner header, no marker); inside a site it
// is VXLAN on the private addresses; each node reaches each peer the way
// its addresses allow (internal, public, learned, relay); a node without
// an inbound path is withdrawn after a crash and back at once after a
// restart; a NAT that forgets its mappings costs a flow a short gap.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestNetnsAcrossNAT(t *testing.T) {
	needNetns(t, "tcpdump", "nft")
	l := startLab(t, lab.Config{Topology: lab.TopologyNAT, Transport: "wireguard-across-sites", PodsPerNode: 1})
	waitConverged(t, l)
	routedAll := func(_ string, st control.Status) bool {
		for _, p := range st.Peers {
			if p.State != "alive" || p.Path == "-" || p.Path == "" {
				return false
			}
		}
		return len(st.Peers) == len(l.Nodes)-1
	}
	waitAll(t, l, others(l, ""), "every peer routed", 20*time.Second, routedAll)
	// The nodes behind NAT learn it from their public peers' answers and
	// say so in their records; then the paths settle.
	behind := map[string]bool{"n5": true, "n6": true, "n7": true}
	// Usually within two NAT keepalive rounds (10 s each): a first
	// keepalive sent before the public peers joined goes unanswered. Once
	// in about a dozen runs a public node took longer than 25 s (not yet
	// explained, like the restart below); the wait logs how long it took.
	waitAll(t, l, others(l, ""), "nodes behind NAT known as such everywhere", 45*time.Second, func(node string, st control.Status) bool {
		for _, p := range st.Peers {
			across := p.Site != st.Self.Site
			if across && behind[p.Name] && !(p.Path == "learned" || strings.HasPrefix(p.Path, "relay ")) {
				return false
			}
		}
		return true
	})

	// Paths: the address that works from here, and one relay per pair of
	// nodes behind NAT in different sites, the same from both ends.
	st1, st5, st6 := status(t, l.Node("n1")), status(t, l.Node("n5")), status(t, l.Node("n6"))
	for _, c := range []struct {
		st         control.Status
		peer, want string
	}{
		{st1, "n2", "internal"}, {st1, "n3", "public"}, {st1, "n5", "learned"}, {st1, "n6", "learned"},
		{st6, "n7", "internal"}, {st6, "n1", "public"}, {st6, "n4", "public"},
		{st5, "n3", "internal"}, {st5, "n2", "public"},
	} {
		if got := pathTo(c.st, c.peer); got != c.want {
			t.Errorf("%s → %s: path %q, want %q", c.st.Self.Name, c.peer, got, c.want)
		}
	}
	relay := pathTo(st6, "n5")
	if relay != "relay n1" && relay != "relay n2" {
		t.Fatalf("n6 → n5: path %q, want a relay in cloud-a", relay)
	}
	if got := pathTo(st5, "n6"); got != relay {
		t.Fatalf("n5 → n6 path %q, n6 → n5 %q: the ends disagree", got, relay)
	}

	// Every ordered pod pair, captured on the internet segment.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pods := l.Pods
	for _, a := range pods {
		for _, b := range pods {
			if a.Node != b.Node {
				firstEcho(ctx, t, l, a.Netns, b.Address)
			}
		}
	}
	pcap := capture(t, l.Router.Netns, "br-inet", "ip", func() {
		for _, a := range pods {
			for _, b := range pods {
				if a.Node == b.Node {
					continue
				}
				pingMarked(t, l, a, b.Address)
				if _, err := l.Transfer(ctx, a, b, 64<<10); err != nil {
					t.Fatalf("TCP %s → %s: %v", a.Name, b.Name, err)
				}
			}
		}
	})
	var wgData, gossip, other int
	for _, f := range udpFrames(t, pcap) {
		switch {
		case bytes.Contains(f.payload, markerBytes), hasInnerHeader(f.payload):
			t.Fatalf("pod traffic in the clear on the internet segment: %s:%d → %s:%d", f.src, f.srcPort, f.dst, f.dstPort)
		case f.srcPort == 7946 || f.dstPort == 7946:
			gossip++
		case (f.srcPort == 51820 || f.dstPort == 51820) && len(f.payload) >= 32 && f.payload[0] == 4 && f.payload[1]|f.payload[2]|f.payload[3] == 0:
			wgData++
		case (f.srcPort == 51820 || f.dstPort == 51820) && len(f.payload) >= 4 && f.payload[0] >= 1 && f.payload[0] <= 3:
			// handshakes and cookies
		default:
			other++
			t.Errorf("unexpected UDP on the internet segment: %s:%d → %s:%d (%d bytes)", f.src, f.srcPort, f.dst, f.dstPort, len(f.payload))
		}
	}
	t.Logf("internet segment: %d WireGuard data frames, %d gossip frames, %d other", wgData, gossip, other)
	if wgData < 100 {
		t.Fatalf("only %d WireGuard data frames on the internet segment", wgData)
	}

	// Inside a site: VXLAN between the private addresses, inner header visible.
	g := l.Gateway("cloud-a")
	a1, a2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	lan := capture(t, g.Netns, "br-lan", "udp port 4789", func() { pingMarked(t, l, a1, a2.Address) })
	seen := 0
	for _, f := range udpFrames(t, lan) {
		// The same checks as on the internet segment find them here.
		if f.src.String() == l.Node("n1").UnderlayAddr && f.dst.String() == l.Node("n2").UnderlayAddr && bytes.Contains(f.payload, markerBytes) && hasInnerHeader(f.payload) {
			seen++
		}
	}
	if seen == 0 {
		t.Fatal("no VXLAN frame n1 → n2 with the marker and the inner header on cloud-a's LAN")
	}

	// A node without an inbound path: crash withdrawn everywhere, restart
	// routed everywhere.
	if err := l.StopWeftd("n7", syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitAll(t, l, others(l, "n7"), "n7 (no inbound path) SIGKILL withdrawn", 20*time.Second, func(_ string, st control.Status) bool {
		s, _ := peerState(st, "n7")
		return s != "alive"
	})
	if err := l.StartWeftd(ctx, "n7"); err != nil {
		t.Fatal(err)
	}
	waitAll(t, l, others(l, "n7"), "n7 (no inbound path) restarted, routed everywhere", 2*time.Second, func(_ string, st control.Status) bool {
		s, _ := peerState(st, "n7")
		return s == "alive" && pathTo(st, "n7") != "-"
	})
	// The restarted n7 gossips its first record before its keepalives
	// have told it again that it is behind NAT: n5, behind NAT in another
	// site, routes it directly until the record with the flag reaches it,
	// and then through a relay. That has taken from 0.2 s to over 20 s
	// (not yet explained: a known gap of restarts behind NAT); the wait
	// logs how long it took.
	waitAll(t, l, []string{"n5"}, "n5 reaches the restarted n7 through a relay", 45*time.Second, func(_ string, st control.Status) bool {
		return strings.HasPrefix(pathTo(st, "n7"), "relay ")
	})
	p7 := l.PodsOn("n7")[0]
	for _, from := range []string{"n1", "n3", "n5"} {
		firstEcho(ctx, t, l, l.PodsOn(from)[0].Netns, p7.Address)
		ping(t, l, l.PodsOn(from)[0].Netns, p7.Address)
	}

	// The on-premises NAT forgets every mapping under a flow from cloud-a
	// to n6; the next packets get new random ports.
	p6 := l.PodsOn("n6")[0]
	f := startFlow(t, l, a1, p6)
	time.Sleep(time.Second)
	if err := l.FlushConntrack("onprem"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	res := f.Stop()
	t.Logf("conntrack flush on onprem's NAT under a flow n1 → n6: longest probe gap %v, longest TCP stall %v, %d of %d probes lost",
		res.LongestProbeGap, res.LongestStall, res.ProbesLost, res.ProbesSent)
	if !res.Survived {
		t.Fatalf("the flow did not survive the flush: %v", res.Err)
	}
	// With no traffic from behind the NAT, the way back opens with its
	// next WireGuard keepalive (25 s).
	time.Sleep(time.Second)
	if err := l.FlushConntrack("onprem"); err != nil {
		t.Fatal(err)
	}
	flushed := time.Now()
	for {
		r, err := l.Ping(ctx, a1.Netns, p6.Address, 1)
		if err == nil {
			t.Logf("conntrack flush with n6 silent: n1 reaches n6 again after %v", time.Since(flushed).Round(100*time.Millisecond))
			break
		}
		if time.Since(flushed) > 30*time.Second {
			t.Fatalf("n1 → n6 not back 30 s after the flush: %v\n%s", err, r.Output)
		}
	}
}

// firstEcho waits, up to 15 s, until one echo from the pod namespace netns
// to addr gets through, and logs it when that took over a second: the
// first packets between two WireGuard peers wait for their handshake,
// and when both ends' first initiations cross a peer not configured yet
// the next one follows WireGuard's 5 s retry, longer than a checked ping
// waits. A pair that never answers fails in the checks that follow.
func firstEcho(ctx context.Context, t *testing.T, l *lab.Lab, netns, addr string) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 15*time.Second && ctx.Err() == nil {
		if _, err := l.Ping(ctx, netns, addr, 1); err == nil {
			break
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("first echo %s → %s after %.1fs", netns, addr, d.Seconds())
	}
}
