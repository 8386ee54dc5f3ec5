package overlay_test

// The netns tier for the WireGuard transport and the transport policy.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/overlay/control"
)

// marker is the ping payload pattern the pods exchange; ping -p repeats it.
const marker = "c0ffee5eed"

var markerBytes = []byte{0xc0, 0xff, 0xee, 0x5e, 0xed}

// udpFrame is the part of a captured Ethernet/IPv4/UDP frame a test reads.
type udpFrame struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
	payload          []byte
}

func udpFrames(t *testing.T, pcap string) []udpFrame {
	t.Helper()
	var out []udpFrame
	for _, f := range pcapPackets(t, pcap) {
		if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 17 || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		out = append(out, udpFrame{
			src: netip.AddrFrom4([4]byte(ip[12:16])), dst: netip.AddrFrom4([4]byte(ip[16:20])),
			srcPort: binary.BigEndian.Uint16(udp[0:2]), dstPort: binary.BigEndian.Uint16(udp[2:4]),
			payload: udp[8:],
		})
	}
	return out
}

// innerHeader is the byte pattern of an IPv4 header's source and destination.
func innerHeader(src, dst string) []byte {
	a, b := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	return append(a[:], b[:]...)
}

func pingMarked(t *testing.T, l *lab.Lab, from lab.Pod, to string) {
	t.Helper()
	if out, err := l.Exec(context.Background(), from.Netns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-p", marker, to); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", to, from.Name, err, out)
	}
}

// TestNetnsWireGuardHidesPodTraffic checks, on the underlay between the
// sites, that pod traffic over WireGuard shows neither the inner IP header
// nor the marker the pods exchanged, while the same exchange over VXLAN
// shows both (so the check can fail). Over WireGuard it also checks the
// pod MTU (ping -M do), `wg show` against weft's device, and key rotation.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestNetnsWireGuardHidesPodTraffic(t *testing.T) {
	needNetns(t, "wg", "tcpdump")
	for _, tc := range []struct {
		transport string
		visible   bool
		mtu       int
	}{
		{"vxlan", true, 1450},
		{"wireguard", false, 1440},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: tc.transport})
			waitConverged(t, l)
			n1, n2 := l.Node("n1"), l.Node("n2")
			p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			pcap := capture(t, l.Router.Netns, "br-"+n1.Site, "udp", func() {
				pingMarked(t, l, p1, p2.Address)
				if _, err := l.Transfer(ctx, p1, p2, 1<<20); err != nil {
					t.Fatal(err)
				}
			})
			frames := udpFrames(t, pcap)
			var carried, withMarker, withHeader int
			hdr := innerHeader(p1.Address, p2.Address)
			for _, f := range frames {
				if f.src.String() != n1.UnderlayAddr || f.dst.String() != n2.UnderlayAddr || f.dstPort == 7946 {
					continue // gossip has its own port
				}
				carried++
				if bytes.Contains(f.payload, markerBytes) {
					withMarker++
				}
				if bytes.Contains(f.payload, hdr) {
					withHeader++
				}
			}
			t.Logf("%s: %d frames n1→n2, %d with the marker, %d with the inner header", tc.transport, carried, withMarker, withHeader)
			if carried < 10 {
				t.Fatalf("captured only %d frames from n1 to n2", carried)
			}
			if tc.visible && (withMarker == 0 || withHeader == 0) {
				t.Fatalf("over %s the marker and inner header should be visible", tc.transport)
			}
			if !tc.visible && (withMarker != 0 || withHeader != 0) {
				t.Fatalf("over %s %d frames showed the marker and %d the inner header", tc.transport, withMarker, withHeader)
			}

			// The pod MTU is the underlay MTU minus the exact overhead.
			max := tc.mtu - 28 // IPv4 + ICMP headers
			if out, err := l.Exec(ctx, p1.Netns, "ping", "-M", "do", "-c", "1", "-W", "2", "-s", fmt.Sprint(max), p2.Address); err != nil {
				t.Fatalf("ping -M do -s %d: %v\n%s", max, err, out)
			}
			out, err := l.Exec(ctx, p1.Netns, "ping", "-M", "do", "-c", "1", "-W", "2", "-s", fmt.Sprint(max+1), p2.Address)
			if err == nil || !strings.Contains(strings.ToLower(string(out)), "message too long") {
				t.Fatalf("ping -M do -s %d should fail with 'message too long': %v\n%s", max+1, err, out)
			}
			if tc.transport != "wireguard" {
				return
			}

			// wg show, from wireguard-tools, reads weft's device.
			st2 := status(t, n2)
			out, err = exec.Command("wg", "show", n1.WGName).CombinedOutput()
			if err != nil {
				t.Fatalf("wg show %s: %v\n%s", n1.WGName, err, out)
			}
			for _, want := range []string{"peer: " + st2.Self.WGPublicKey, "endpoint: " + n2.UnderlayAddr + ":51820", "allowed ips: " + n2.PodCIDR, "latest handshake", "transfer"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("wg show lacks %q:\n%s", want, out)
				}
			}

			// Rotate n2's key: every peer reaches it again within 5 s.
			var res map[string]string
			if err := control.Do(ctx, n2.ControlSocket, "wireguard/rotate-key", nil, &res); err != nil {
				t.Fatal(err)
			}
			if res["publicKey"] == "" || res["publicKey"] == st2.Self.WGPublicKey {
				t.Fatalf("rotate-key answered %v", res)
			}
			start := time.Now()
			for {
				if _, err := l.Exec(ctx, p1.Netns, "ping", "-c", "1", "-W", "1", p2.Address); err == nil {
					break
				}
				if time.Since(start) > 5*time.Second {
					t.Fatalf("n2 unreachable %s after its key rotation", time.Since(start))
				}
			}
			t.Logf("reachable again %s after key rotation", time.Since(start).Round(time.Millisecond))
			if got := status(t, n2).Self.WGPublicKey; got != res["publicKey"] {
				t.Fatalf("n2 gossips key %s, want %s", got, res["publicKey"])
			}
			// The ping went through a session under the new key: n1 has it.
			for _, p := range status(t, n1).Peers {
				if p.Name == "n2" && p.WGPublicKey != res["publicKey"] {
					t.Fatalf("n1 still has n2's key %s, want %s", p.WGPublicKey, res["publicKey"])
				}
			}
			if out, err := exec.Command("wg", "show", n1.WGName, "peers").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != res["publicKey"] {
				t.Fatalf("n1's device peers after rotation: %v %q, want only %s", err, out, res["publicKey"])
			}
		})
	}
}

// TestNetnsWireGuardAcrossSites checks on n1's underlay interface that,
// under wireguard-across-sites, traffic to a node of the same site is VXLAN
// (marker visible, port 4789) and traffic to the other site is WireGuard
// (port 51820, marker hidden).
func TestNetnsWireGuardAcrossSites(t *testing.T) {
	needNetns(t)
	l := startLab(t, lab.Config{Nodes: 3, Sites: 2, PodsPerNode: 1, Transport: "wireguard-across-sites"})
	waitConverged(t, l)
	n1, n2, n3 := l.Node("n1"), l.Node("n2"), l.Node("n3")
	if n1.Site != n3.Site || n1.Site == n2.Site {
		t.Fatalf("lab plan changed: sites %s %s %s", n1.Site, n2.Site, n3.Site)
	}
	p1, p2, p3 := l.PodsOn("n1")[0], l.PodsOn("n2")[0], l.PodsOn("n3")[0]
	pcap := capture(t, n1.Netns, n1.UnderlayIf, "udp and not port 7946", func() {
		pingMarked(t, l, p1, p3.Address)
		pingMarked(t, l, p1, p2.Address)
	})
	count := map[string]int{}
	for _, f := range udpFrames(t, pcap) {
		if f.src.String() != n1.UnderlayAddr {
			continue
		}
		key := fmt.Sprintf("%s:%d marker=%v", f.dst, f.dstPort, bytes.Contains(f.payload, markerBytes))
		count[key]++
	}
	t.Logf("frames from n1: %v", count)
	if count[n3.UnderlayAddr+":4789 marker=true"] < 3 {
		t.Errorf("same-site traffic n1→n3 should be VXLAN with the marker visible")
	}
	if count[n2.UnderlayAddr+":51820 marker=false"] < 3 {
		t.Errorf("cross-site traffic n1→n2 should be WireGuard on port 51820")
	}
	for k := range count {
		if strings.HasPrefix(k, n2.UnderlayAddr+":4789") || strings.HasSuffix(k, "marker=true") && strings.HasPrefix(k, n2.UnderlayAddr) {
			t.Errorf("cross-site frames in the clear: %s", k)
		}
	}
	for _, p := range status(t, n1).Peers {
		want := map[string]string{"n2": "wireguard", "n3": "vxlan"}[p.Name]
		if p.Transport != want {
			t.Errorf("n1's status shows %s over %s, want %s", p.Name, p.Transport, want)
		}
	}
}

// TestNetnsStandaloneWireGuardPeer has a plain WireGuard peer — the
// standalone wireguard-go program configured with wg(8), no weft — exchange
// pod traffic with a weft node in both directions: weft speaks real
// WireGuard.
func TestNetnsStandaloneWireGuardPeer(t *testing.T) {
	needNetns(t, "wg")
	dir := t.TempDir()
	wgBin := filepath.Join(dir, "wireguard-go")
	if out, err := exec.Command("go", "build", "-o", wgBin, "golang.zx2c4.com/wireguard").CombinedOutput(); err != nil {
		t.Fatalf("build standalone wireguard-go: %v\n%s", err, out)
	}
	priv, err := exec.Command("wg", "genkey").Output()
	if err != nil {
		t.Fatalf("wg genkey: %v (wireguard-tools installed?)", err)
	}
	keyFile := filepath.Join(dir, "standalone.key")
	if err := os.WriteFile(keyFile, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	pubCmd := exec.Command("wg", "pubkey")
	pubCmd.Stdin = bytes.NewReader(priv)
	pub, err := pubCmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	const addr2, cidr2, standaloneIP = "198.51.100.12", "10.244.2.0/24", "10.244.2.1"
	l := startLab(t, lab.Config{
		Nodes: 2, Sites: 2, PodsPerNode: 1, External: []string{"n2"}, Transport: "wireguard",
		WeftdArgs: []string{"--static-peer", "name=n2,addr=" + addr2 + ",cidr=" + cidr2 + ",wg-key=" + strings.TrimSpace(string(pub))},
	})
	n1, n2 := l.Node("n1"), l.Node("n2")
	if n2.UnderlayAddr != addr2 {
		t.Fatalf("lab plan changed: n2 at %s", n2.UnderlayAddr)
	}
	ifname := l.Prefix + "sa"
	if len(ifname) > 15 {
		ifname = ifname[len(ifname)-15:]
	}
	wgo := exec.Command("ip", "netns", "exec", n2.Netns, wgBin, "-f", ifname)
	wgo.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1")
	if err := wgo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		wgo.Process.Kill()
		wgo.Wait()
		os.Remove("/var/run/wireguard/" + ifname + ".sock")
	})
	sock := "/var/run/wireguard/" + ifname + ".sock"
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("standalone wireguard-go made no UAPI socket %s", sock)
		}
	}
	st1 := status(t, n1)
	ctx := context.Background()
	for _, args := range [][]string{
		{"wg", "set", ifname, "private-key", keyFile, "listen-port", "51820",
			"peer", st1.Self.WGPublicKey, "endpoint", n1.UnderlayAddr + ":51820", "allowed-ips", n1.PodCIDR},
		{"ip", "addr", "add", standaloneIP + "/32", "dev", ifname},
		{"ip", "link", "set", ifname, "up"},
		{"ip", "route", "add", n1.PodCIDR, "dev", ifname},
	} {
		if out, err := l.Exec(ctx, n2.Netns, args...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	p1 := l.PodsOn("n1")[0]
	ping(t, l, p1.Netns, standaloneIP) // weft → plain WireGuard → back
	ping(t, l, n2.Netns, p1.Address)   // plain WireGuard → weft → back
	out, err := exec.Command("wg", "show", ifname, "latest-handshakes").CombinedOutput()
	if err != nil || !strings.Contains(string(out), st1.Self.WGPublicKey) {
		t.Fatalf("standalone peer shows no handshake with weft: %v\n%s", err, out)
	}
}

// TestNetnsPathMTULoweredMidPath lowers the MTU of the router's link into
// the second site, so the underlay path between the nodes shrinks below
// what the pod MTU assumes. Once the node's kernel knows the narrower path
// (from the router's ICMP), a pod's full-size packet with DF gets an ICMP
// "fragmentation needed" from weftd carrying the inner MTU that fits, and a
// 1 MB TCP transfer across the narrowed path completes.
func TestNetnsPathMTULoweredMidPath(t *testing.T) {
	needNetns(t)
	for _, tc := range []struct {
		transport string
		podMTU    int
		inner     int // what fits a 1400-byte path
	}{{"vxlan", 1450, 1350}, {"wireguard", 1440, 1328}} { // WireGuard pads to 16 bytes: (1400-60)&^15
		t.Run(tc.transport, func(t *testing.T) {
			l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: tc.transport})
			waitConverged(t, l)
			n1, n2 := l.Node("n1"), l.Node("n2")
			p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			const pathMTU = 1400
			if out, err := l.Exec(ctx, l.Router.Netns, "ip", "link", "set", "br-"+n2.Site, "mtu", fmt.Sprint(pathMTU)); err != nil {
				t.Fatalf("lower mtu: %v\n%s", err, out)
			}
			// A full-size underlay datagram with DF makes the router report
			// the narrower path to n1's kernel, as weftd's own traffic would.
			l.Exec(ctx, n1.Netns, "ping", "-M", "do", "-c", "1", "-W", "1", "-s", "1472", n2.UnderlayAddr)
			inner := tc.inner
			want := fmt.Sprintf("mtu = %d", inner)
			deadline := time.Now().Add(10 * time.Second)
			for {
				out, _ := l.Exec(ctx, p1.Netns, "ping", "-M", "do", "-c", "1", "-W", "1", "-s", fmt.Sprint(tc.podMTU-28), p2.Address)
				if strings.Contains(string(out), want) || strings.Contains(string(out), fmt.Sprintf("mtu=%d", inner)) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("pod never heard 'frag needed, %s': %s", want, out)
				}
				time.Sleep(200 * time.Millisecond)
			}
			res, err := l.Transfer(ctx, p1, p2, 1<<20)
			if err != nil {
				t.Fatalf("1 MB transfer across the narrowed path: %v", err)
			}
			st := status(t, n1)
			t.Logf("%s: 1 MB in %s; n1 sent %d frag-needed, dropped %d too big", tc.transport, res.Duration.Round(time.Millisecond), st.Counters["icmp_frag_needed_sent"], st.Counters["drop_too_big"])
			if st.Counters["icmp_frag_needed_sent"] == 0 {
				t.Fatal("weftd counted no ICMP frag-needed")
			}
		})
	}
}
