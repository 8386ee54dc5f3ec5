package lab

import (
	"bufio"
	"context"
	"encoding/binary"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

// TestUpIPv6Underlay is the IPv6-underlay lab end to end over each
// transport: three nodes on two sites whose only underlay addresses are
// 2001:db8:<site>::<10+i>, with dual-stack pods. Gossip converges over
// IPv6; every peer is known at its IPv6 underlay address; the pod MTU has
// the IPv6 headroom (1500 - 70 for VXLAN, - 80 for WireGuard); every
// ordered pair of pods on different nodes exchanges ping and a checksummed
// TCP stream in both families; and a capture on the router's bridges shows
// the traffic on the wire as IPv6 UDP to the transport's port, never IPv4.
func TestUpIPv6Underlay(t *testing.T) {
	prereqtest.Netns(t, "ip", "tcpdump")
	bin := prereqtest.Binaries(t)
	for _, tc := range []struct {
		transport string
		port      uint16
		mtu       int
	}{{"vxlan", 4789, 1430}, {"wireguard", 51820, 1420}} {
		t.Run(tc.transport, func(t *testing.T) {
			ctx, l, dir := upDualStack(t, bin, tc.transport, func(c *Config) { c.Underlay = UnderlayIPv6 })
			if saved, err := Load(dir); err != nil || saved.Underlay != UnderlayIPv6 || saved.Router.Sites[1].Subnet != "2001:db8:2::/64" {
				t.Fatalf("lab.json: %v %+v", err, saved)
			}
			for _, n := range l.Nodes {
				// The node has no IPv4 address to fall back on.
				if out, err := l.Exec(ctx, n.Netns, "ip", "-4", "-o", "addr", "show", "dev", n.UnderlayIf); err != nil || strings.TrimSpace(string(out)) != "" {
					t.Fatalf("node %s has IPv4 on %s (%v): %s", n.Name, n.UnderlayIf, err, out)
				}
				st, err := l.Status(ctx, n.Name)
				if err != nil {
					t.Fatal(err)
				}
				if st.Self.MTU != tc.mtu {
					t.Errorf("node %s pod MTU %d, want %d (1500 minus the IPv6 %s overhead)", n.Name, st.Self.MTU, tc.mtu, tc.transport)
				}
				for _, p := range st.Peers {
					want := netip.AddrPortFrom(netip.MustParseAddr(l.Node(p.Name).UnderlayAddr), 4789).String()
					if p.UnderlayAddr != want {
						t.Errorf("%s knows peer %s at %s, want %s", n.Name, p.Name, p.UnderlayAddr, want)
					}
					if p.Transport != tc.transport {
						t.Errorf("%s reaches peer %s over %q, want %s", n.Name, p.Name, p.Transport, tc.transport)
					}
				}
			}
			primePairs(ctx, t, l)
			var bridges []string
			for _, s := range l.Router.Sites {
				bridges = append(bridges, bridgeName(s))
			}
			frames := captureUDP(t, l.Router.Netns, bridges, func() { pairsBothFamilies(ctx, t, l, 2<<20) })
			var v6, v4 int
			for _, f := range slices.Concat(slices.Collect(maps.Values(frames))...) {
				switch {
				case f.v4:
					v4++
				case f.dstPort == tc.port || f.srcPort == tc.port:
					v6++
				}
			}
			t.Logf("captured UDP frames: %d IPv6 to or from port %d, %d IPv4", v6, tc.port, v4)
			if v4 != 0 {
				t.Errorf("%d IPv4 UDP frames on the IPv6 underlay", v4)
			}
			// 12 pings and 12 transfers of 2 MiB: thousands of frames.
			if v6 < 1000 {
				t.Errorf("%d IPv6 UDP frames on port %d, want the pods' traffic (>= 1000)", v6, tc.port)
			}
		})
	}
}

// primePairs waits, up to 15 s per pair, until one echo gets through
// between every ordered pair of pods on nodes with an underlay family in
// common. Under WireGuard the first packets between two peers wait for
// their handshake, and when both ends' first initiations cross a peer
// that is not configured yet, the next one follows WireGuard's 5 s retry:
// longer than a checked ping waits. A pair that never answers fails in
// the checks that follow.
func primePairs(ctx context.Context, t *testing.T, l *Lab) {
	t.Helper()
	for _, from := range l.Pods {
		for _, to := range l.Pods {
			if from.Node == to.Node || !l.ShareFamily(from.Node, to.Node) {
				continue
			}
			start := time.Now()
			for {
				if _, err := l.Ping(ctx, from.Netns, to.Address, 1); err == nil || time.Since(start) > 15*time.Second || ctx.Err() != nil {
					break
				}
			}
			if d := time.Since(start); d > time.Second {
				t.Logf("first echo %s→%s after %.1fs", from.Name, to.Name, d.Seconds())
			}
		}
	}
}

// udpFrame is what captureUDP keeps of one captured UDP frame.
type udpFrame struct {
	v4               bool
	srcPort, dstPort uint16
}

// captureUDP runs tcpdump for UDP on each of ifaces inside netns while fn
// runs, and returns every UDP frame seen, IPv4 or IPv6, by interface.
func captureUDP(t *testing.T, netns string, ifaces []string, fn func()) map[string][]udpFrame {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type dump struct {
		cmd  *exec.Cmd
		pcap string
		done chan struct{}
		log  strings.Builder
	}
	var dumps []*dump
	defer func() {
		for _, d := range dumps {
			if d.cmd.ProcessState == nil {
				d.cmd.Process.Kill()
				d.cmd.Wait()
			}
		}
	}()
	for _, iface := range ifaces {
		d := &dump{pcap: filepath.Join(t.TempDir(), iface+".pcap"), done: make(chan struct{})}
		// A snap length of 128 keeps headers only: the payload is not
		// looked at, and GSO frames run to 64 KB.
		d.cmd = exec.CommandContext(ctx, "ip", "netns", "exec", netns,
			"tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-s", "128", "-w", d.pcap, "udp")
		stderr, err := d.cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, d)
		listening := make(chan struct{})
		go func() {
			defer close(d.done)
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if listening != nil && strings.Contains(sc.Text(), "listening on") {
					close(listening)
					listening = nil
				}
				d.log.WriteString(sc.Text() + "\n")
			}
		}()
		select {
		case <-listening:
		case <-time.After(10 * time.Second):
			t.Fatalf("tcpdump on %s/%s did not start listening", netns, iface)
		}
	}
	fn()
	time.Sleep(300 * time.Millisecond)
	out := map[string][]udpFrame{}
	for i, d := range dumps {
		d.cmd.Process.Signal(os.Interrupt)
		<-d.done
		d.cmd.Wait()
		t.Logf("tcpdump: %s", strings.TrimSpace(d.log.String()))
		out[ifaces[i]] = pcapUDP(t, d.pcap)
	}
	return out
}

// pcapUDP reads a classic pcap file of Ethernet frames and returns its UDP
// frames: outer Ethernet (14) | IPv4 (IHL) or IPv6 (40, UDP as the next
// header, as weft and the kernel send it) | UDP.
func pcapUDP(t *testing.T, path string) []udpFrame {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 {
		t.Fatalf("pcap %s: %d bytes, no header", path, len(b))
	}
	var bo binary.ByteOrder = binary.BigEndian
	if m := binary.LittleEndian.Uint32(b); m == 0xa1b2c3d4 || m == 0xa1b23c4d {
		bo = binary.LittleEndian
	}
	if lt := bo.Uint32(b[20:24]); lt != 1 {
		t.Fatalf("pcap %s: link type %d, want 1 (Ethernet)", path, lt)
	}
	var out []udpFrame
	for off := 24; off+16 <= len(b); {
		n := int(bo.Uint32(b[off+8:]))
		off += 16
		if off+n > len(b) {
			break
		}
		f := b[off : off+n]
		off += n
		if len(f) < 14 {
			continue
		}
		switch binary.BigEndian.Uint16(f[12:14]) {
		case 0x0800:
			ip := f[14:]
			if len(ip) < 20 || ip[9] != 17 || len(ip) < int(ip[0]&0x0f)*4+8 {
				continue
			}
			udp := ip[int(ip[0]&0x0f)*4:]
			out = append(out, udpFrame{v4: true, srcPort: binary.BigEndian.Uint16(udp[0:2]), dstPort: binary.BigEndian.Uint16(udp[2:4])})
		case 0x86dd:
			ip := f[14:]
			if len(ip) < 40+8 || ip[6] != 17 {
				continue
			}
			udp := ip[40:]
			out = append(out, udpFrame{srcPort: binary.BigEndian.Uint16(udp[0:2]), dstPort: binary.BigEndian.Uint16(udp[2:4])})
		}
	}
	return out
}

// TestUpMixedUnderlay is a mixed cluster over each transport: n1 has an
// IPv4 underlay address only (site1), n2 an IPv6 one only (site2), n3 one
// of each (site1). All three see each other alive (n1 and n2 through n3's
// gossip); n1 and n2 share no family, and each says so in its status;
// every other ordered pair of pods exchanges ping and TCP in both pod
// families, n1↔n3 over IPv4 and n2↔n3 over IPv6, which the capture
// shows: site2, where only n2 is, carries IPv6 UDP only; site1 both.
func TestUpMixedUnderlay(t *testing.T) {
	prereqtest.Netns(t, "ip", "tcpdump")
	bin := prereqtest.Binaries(t)
	for _, tc := range []struct {
		transport string
		port      uint16
	}{{"vxlan", 4789}, {"wireguard", 51820}} {
		t.Run(tc.transport, func(t *testing.T) {
			ctx, l, _ := upDualStack(t, bin, tc.transport, func(c *Config) { c.Underlay = UnderlayMixed })
			if n1, n2, n3 := l.Node("n1"), l.Node("n2"), l.Node("n3"); n1.UnderlayAddr != "192.0.2.11" || n1.AltUnderlayAddr != "" ||
				n2.UnderlayAddr != "2001:db8:2::12" || n2.AltUnderlayAddr != "" || n3.UnderlayAddr != "192.0.2.13" || n3.AltUnderlayAddr != "2001:db8:1::13" {
				t.Fatalf("mixed plan: %+v %+v %+v", n1, n2, n3)
			}
			for from, to := range map[string]string{"n1": "n2", "n2": "n1"} {
				st, err := l.Status(ctx, from)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range st.Peers {
					switch {
					case p.Name == to && (p.Transport != "-" || !strings.Contains(p.Unreachable, "no common underlay family")):
						t.Errorf("%s shows %s with transport %q, unreachable %q; want not routed, for want of a common family", from, to, p.Transport, p.Unreachable)
					case p.Name == "n3" && (p.Transport != tc.transport || p.Unreachable != "" || p.AltUnderlayAddr != "[2001:db8:1::13]:4789"):
						t.Errorf("%s shows n3 with transport %q, unreachable %q, second address %q", from, p.Transport, p.Unreachable, p.AltUnderlayAddr)
					}
				}
			}
			primePairs(ctx, t, l)
			frames := captureUDP(t, l.Router.Netns, []string{"br-site1", "br-site2"}, func() { pairsBothFamilies(ctx, t, l, 1<<20) })
			count := func(iface string) (v4, v6 int) {
				for _, f := range frames[iface] {
					if f.dstPort != tc.port && f.srcPort != tc.port {
						continue
					}
					if f.v4 {
						v4++
					} else {
						v6++
					}
				}
				return v4, v6
			}
			s1v4, s1v6 := count("br-site1")
			s2v4, s2v6 := count("br-site2")
			t.Logf("port %d: site1 %d IPv4 + %d IPv6 frames, site2 %d IPv4 + %d IPv6", tc.port, s1v4, s1v6, s2v4, s2v6)
			if s2v4 != 0 || s2v6 < 100 {
				t.Errorf("site2 (IPv6-only n2): %d IPv4 and %d IPv6 frames, want none and its traffic with n3", s2v4, s2v6)
			}
			if s1v4 < 100 || s1v6 < 100 {
				t.Errorf("site1 (n1 IPv4, n3 both): %d IPv4 and %d IPv6 frames, want n1↔n3 over IPv4 and n3↔n2 over IPv6", s1v4, s1v6)
			}
		})
	}
}
