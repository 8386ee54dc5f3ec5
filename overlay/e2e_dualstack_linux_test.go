package overlay_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/lab"
)

// TestNetnsPathMTULoweredMidPathIPv6 is TestNetnsPathMTULoweredMidPath for
// IPv6 pods of a dual-stack lab: once the underlay path narrows, a full-size
// IPv6 packet from a pod is answered by weftd with an ICMPv6 "packet too
// big" carrying the inner MTU that fits, the pod's kernel takes it, and a
// TCP stream over IPv6 crosses the narrowed path; IPv4 on the same path
// still gets "fragmentation needed".
//
// Both nodes sit on one site, and the narrower path is a route MTU toward
// the peer in n1 (what the kernel records when a router reports one).
func TestNetnsPathMTULoweredMidPathIPv6(t *testing.T) {
	needNetns(t)
	for _, tc := range []struct {
		transport string
		podMTU    int
		inner     int // what fits a 1400-byte path
	}{{"vxlan", 1450, 1350}, {"wireguard", 1440, 1328}} {
		t.Run(tc.transport, func(t *testing.T) {
			l := startLab(t, lab.Config{Nodes: 2, Sites: 1, PodsPerNode: 1, Transport: tc.transport, DualStack: true})
			waitConverged(t, l)
			n1, n2 := l.Node("n1"), l.Node("n2")
			p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if _, err := l.Ping(ctx, p1.Netns, p2.Address6, 2); err != nil {
				t.Fatalf("IPv6 before narrowing: %v", err)
			}
			const pathMTU = 1400
			if out, err := l.Exec(ctx, n1.Netns, "ip", "route", "replace", n2.UnderlayAddr+"/32", "dev", n1.UnderlayIf, "mtu", fmt.Sprint(pathMTU)); err != nil {
				t.Fatalf("lower path mtu: %v\n%s", err, out)
			}
			want := fmt.Sprintf("mtu=%d", tc.inner)
			deadline := time.Now().Add(10 * time.Second)
			for {
				// IPv6 header 40 + ICMPv6 echo 8: a packet of the pod MTU.
				out, _ := l.Exec(ctx, p1.Netns, "ping", "-6", "-M", "do", "-c", "1", "-W", "1", "-s", fmt.Sprint(tc.podMTU-48), p2.Address6)
				// "Packet too big: mtu=1350" first, then, with the MTU
				// cached, "local error: message too long, mtu: 1350".
				flat := strings.ReplaceAll(strings.ReplaceAll(string(out), " ", ""), "mtu:", "mtu=")
				if strings.Contains(flat, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("pod never heard 'packet too big, %s': %s", want, out)
				}
				time.Sleep(200 * time.Millisecond)
			}
			// IPv4 beside it on the same path: "fragmentation needed".
			deadline = time.Now().Add(10 * time.Second)
			for {
				out, _ := l.Exec(ctx, p1.Netns, "ping", "-M", "do", "-c", "1", "-W", "1", "-s", fmt.Sprint(tc.podMTU-28), p2.Address)
				if flat := strings.ReplaceAll(string(out), " ", ""); strings.Contains(flat, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("pod never heard 'frag needed, %s' over IPv4: %s", want, out)
				}
				time.Sleep(200 * time.Millisecond)
			}
			res, err := l.TransferTo(ctx, p1, p2, p2.Address6, 1<<20)
			if err != nil {
				t.Fatalf("1 MB over IPv6 across the narrowed path: %v", err)
			}
			st := status(t, n1)
			t.Logf("%s: 1 MB over IPv6 in %s; n1 sent %d packet-too-big, dropped %d too big", tc.transport, res.Duration.Round(time.Millisecond), st.Counters["icmp6_packet_too_big_sent"], st.Counters["drop_too_big"])
			if st.Counters["icmp6_packet_too_big_sent"] == 0 || st.Counters["icmp_frag_needed_sent"] == 0 {
				t.Fatalf("weftd counted %d ICMPv6 packet too big, %d ICMP frag needed; want both", st.Counters["icmp6_packet_too_big_sent"], st.Counters["icmp_frag_needed_sent"])
			}
		})
	}
}
