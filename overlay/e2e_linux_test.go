package overlay_test

// The netns tier: real weftd processes in lab node namespaces, real TUN
// devices, real UDP between sites through the lab's router, pods wired by
// the real weft-cni. Needs root; skipped with -short.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/overlay/control"
)

func TestMain(m *testing.M) { prereqtest.Main(m) }

func needNetns(t *testing.T, programs ...string) {
	t.Helper()
	prereqtest.Netns(t, append([]string{"ip"}, programs...)...)
}

// startLab brings up a lab with a unique prefix and tears it down when the
// test ends, pass or fail.
func startLab(t *testing.T, cfg lab.Config) *lab.Lab {
	t.Helper()
	cfg.Prefix = fmt.Sprintf("wte%05x", rand.Uint32()&0xfffff)
	cfg.Dir = filepath.Join(t.TempDir(), "lab")
	cfg.BinDir = prereqtest.Binaries(t)
	if cfg.Sites == 0 {
		cfg.Sites = 2
	}
	if cfg.Transport == "" {
		cfg.Transport = "vxlan"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	t.Cleanup(func() {
		if l != nil {
			if t.Failed() {
				for _, n := range l.Nodes {
					if b, err := os.ReadFile(n.LogFile); err == nil {
						t.Logf("weftd log of %s:\n%s", n.Name, b)
					}
				}
			}
			if err := l.Down(); err != nil {
				t.Errorf("lab down: %v", err)
			}
		}
		if err := lab.Cleanup(cfg.Prefix, cfg.Dir); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	return l
}

func status(t *testing.T, n *lab.Node) control.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := control.Get(ctx, n.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func waitConverged(t *testing.T, l *lab.Lab) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
}

func ping(t *testing.T, l *lab.Lab, netns, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if r, err := l.Ping(ctx, netns, addr, 3); err != nil {
		t.Fatalf("%v\n%s", err, r.Output)
	}
}

// TestNetnsPodToPodAcrossSites sends pings and a TCP stream between pods on
// two nodes at different sites, through both weftds.
func TestNetnsPodToPodAcrossSites(t *testing.T) {
	needNetns(t)
	l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1})
	waitConverged(t, l)
	n1, n2 := l.Node("n1"), l.Node("n2")
	if n1.Site == n2.Site {
		t.Fatalf("nodes share site %s; want a routed path between sites", n1.Site)
	}
	p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	ping(t, l, p1.Netns, p2.Address)
	ping(t, l, p2.Netns, p1.Address)
	// A node reaches a remote pod too (sourced from its gateway address).
	ping(t, l, n1.Netns, p2.Address)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := l.Transfer(ctx, p1, p2, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("TCP %s → %s: %.1f MB/s", p1.Address, p2.Address, res.MBps())

	st := status(t, n1)
	var found bool
	for _, p := range st.Peers {
		if p.Name == "n2" {
			found = true
			if p.State != "alive" || len(p.PodCIDRs) != 1 || p.PodCIDRs[0] != n2.PodCIDR || p.UnderlayAddr != n2.UnderlayAddr+":4789" {
				t.Errorf("n1 sees n2 as %+v", p)
			}
		}
	}
	if !found {
		t.Fatalf("n1's status has no n2: %+v", st.Peers)
	}
	if st.Counters["tx_packets"] == 0 || st.Counters["rx_packets"] == 0 {
		t.Errorf("n1 counters show no traffic: %v", st.Counters)
	}
	// weftd's default queue for the TUN (--tun-queue-len), not the
	// kernel's 500.
	if out, err := l.Exec(ctx, n1.Netns, "ip", "link", "show", "weft0"); err != nil || !strings.Contains(string(out), " qlen 16000") {
		t.Errorf("weft0 on n1: %s (%v), want qlen 16000", out, err)
	}
}

// capture runs tcpdump on iface inside netns while fn runs and returns the
// pcap file.
func capture(t *testing.T, netns, iface, filter string, fn func()) string {
	t.Helper()
	prereqtest.Programs(t, "tcpdump")
	pcap := filepath.Join(t.TempDir(), "capture.pcap")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dump := exec.CommandContext(ctx, "ip", "netns", "exec", netns,
		"tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-s", "0", "-w", pcap, filter)
	stderr, err := dump.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	// tcpdump says "listening on" once its capture is open; keep the rest
	// of what it says for the failure report.
	listening := make(chan struct{})
	started := listening
	var dumpLog strings.Builder
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if listening != nil && strings.Contains(sc.Text(), "listening on") {
				close(listening)
				listening = nil
			}
			dumpLog.WriteString(sc.Text() + "\n")
		}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		dump.Process.Kill()
		t.Fatal("tcpdump did not start listening")
	}
	fn()
	time.Sleep(300 * time.Millisecond)
	dump.Process.Signal(os.Interrupt)
	<-logDone
	dump.Wait()
	t.Logf("tcpdump on %s/%s: %s", netns, iface, strings.TrimSpace(dumpLog.String()))
	return pcap
}

// pcapPackets reads a classic pcap file of Ethernet frames.
func pcapPackets(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 {
		t.Fatalf("pcap %s: %d bytes, no header", path, len(b))
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	default:
		bo = binary.BigEndian
	}
	if lt := bo.Uint32(b[20:24]); lt != 1 {
		t.Fatalf("pcap link type %d, want 1 (Ethernet)", lt)
	}
	var pkts [][]byte
	for off := 24; off+16 <= len(b); {
		n := int(bo.Uint32(b[off+8:]))
		off += 16
		if off+n > len(b) {
			break
		}
		pkts = append(pkts, b[off:off+n])
		off += n
	}
	return pkts
}

// udpFrom returns the outer IPv4 packets of a capture that are UDP from src
// and long enough to hold VXLAN with an inner IPv4 TCP header: outer
// Ethernet (14) | IPv4 | UDP (8) | VXLAN (8) | inner Ethernet (14) | inner IPv4.
func udpFrom(t *testing.T, pcap string, src [4]byte) [][]byte {
	var out [][]byte
	for _, f := range pcapPackets(t, pcap) {
		if len(f) < 14+20+8+8+14+40 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
			continue
		}
		ip := f[14:]
		if ip[9] == 17 && bytes.Equal(ip[12:16], src[:]) && len(ip) >= int(ip[0]&0x0f)*4+8+8+14+40 {
			out = append(out, ip)
		}
	}
	return out
}

// tcpSum is the folded, not complemented, ones' complement sum of an IPv4
// TCP pseudo-header and seg: with seg nil, what a partial checksum field
// holds; over a whole segment, 0xffff when its checksum is right.
func tcpSum(src, dst []byte, l4Len int, seg []byte) uint16 { return l4Sum(6, src, dst, l4Len, seg) }

// l4Sum is tcpSum for any protocol number and either family's addresses
// (the pseudo-header sums the same way over 4 or 16 bytes each).
func l4Sum(proto byte, src, dst []byte, l4Len int, seg []byte) uint16 {
	sum := uint32(proto) + uint32(l4Len)
	for _, b := range [][]byte{src, dst, seg} {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// TestNetnsWireFormat captures the underlay between the sites with tcpdump
// and checks the frames byte by byte against RFC 7348: outer IPv4/UDP to
// port 4789, VXLAN flags and VNI, inner Ethernet with both VTEP MACs, and
// the pod's own IPv4 packet.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestNetnsWireFormat(t *testing.T) {
	needNetns(t, "tcpdump")
	l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1})
	waitConverged(t, l)
	n1, n2 := l.Node("n1"), l.Node("n2")
	p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	mac1, mac2 := status(t, n1).Self.VTEPMAC, status(t, n2).Self.VTEPMAC

	const marker = "c0ffee5eed"
	pcap := capture(t, l.Router.Netns, "br-"+n1.Site, "udp port 4789", func() {
		if out, err := l.Exec(context.Background(), p1.Netns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-p", marker, p2.Address); err != nil {
			t.Fatalf("ping: %v\n%s", err, out)
		}
	})

	u1, u2 := netip.MustParseAddr(n1.UnderlayAddr).As4(), netip.MustParseAddr(n2.UnderlayAddr).As4()
	a1, a2 := netip.MustParseAddr(p1.Address).As4(), netip.MustParseAddr(p2.Address).As4()
	hw1, _ := net.ParseMAC(mac1)
	hw2, _ := net.ParseMAC(mac2)
	want := 0
	for _, ip := range udpFrom(t, pcap, u1) {
		if !bytes.Equal(ip[16:20], u2[:]) {
			continue
		}
		udp := ip[int(ip[0]&0x0f)*4:]
		if binary.BigEndian.Uint16(udp[2:4]) != vxlan.DefaultPort {
			t.Errorf("outer UDP dst port %d, want %d", binary.BigEndian.Uint16(udp[2:4]), vxlan.DefaultPort)
		}
		vx := udp[8:]
		if !bytes.Equal(vx[:8], []byte{0x08, 0, 0, 0, 0, 0, 1, 0}) {
			t.Errorf("VXLAN header % x, want 08 00 00 00 00 00 01 00 (I flag, VNI 1)", vx[:8])
		}
		eth := vx[8:]
		if !bytes.Equal(eth[0:6], hw2) || !bytes.Equal(eth[6:12], hw1) || binary.BigEndian.Uint16(eth[12:14]) != 0x0800 {
			t.Errorf("inner Ethernet % x, want dst %s src %s type 0800", eth[:14], mac2, mac1)
		}
		inner := eth[14:]
		if inner[0]>>4 != 4 || !bytes.Equal(inner[12:16], a1[:]) || !bytes.Equal(inner[16:20], a2[:]) || inner[9] != 1 {
			t.Errorf("inner IPv4 header % x, want ICMP %s → %s", inner[:20], p1.Address, p2.Address)
		}
		if bytes.Contains(inner, []byte{0xc0, 0xff, 0xee, 0x5e, 0xed}) {
			want++
		}
	}
	if want < 2 {
		t.Fatalf("found %d VXLAN frames carrying the pod's marked echo requests, want 2", want)
	}
	// tcpdump's own decoder agrees.
	out, err := exec.Command("tcpdump", "-nn", "-r", pcap).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "VXLAN, flags [I] (0x08), vni 1") || !strings.Contains(string(out), p1.Address+" > "+p2.Address+": ICMP echo request") {
		t.Fatalf("tcpdump does not decode VXLAN with the pod's packet:\n%s", out)
	}

	// TCP between two weft nodes travels with remote checksum offload
	// (both announce it) where it leaves as super-packets: the RCO flag,
	// the checksum start (inner Ethernet 14 + IPv4 20 = 34, halved: 0x11)
	// in the VXLAN header, and in the inner TCP header only the
	// pseudo-header sum. Segments the kernel handed over one by one take
	// the per-packet path with complete checksums. The stream arrives whole.
	var res lab.TransferResult
	pcap = capture(t, l.Router.Netns, "br-"+n1.Site, "udp port 4789", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var err error
		if res, err = l.Transfer(ctx, p1, p2, 4<<20); err != nil {
			t.Fatal(err)
		}
	})
	if res.Bytes != 4<<20 {
		t.Fatalf("transfer moved %d bytes, want %d", res.Bytes, 4<<20)
	}
	rco, plain := 0, 0
	for _, ip := range udpFrom(t, pcap, u1) {
		vx := ip[int(ip[0]&0x0f)*4+8:]
		inner := vx[8+14:]
		if inner[9] != 6 || int(binary.BigEndian.Uint16(inner[2:4])) <= 20+int(inner[32]>>4)*4 {
			continue // not a TCP segment with payload
		}
		l4Len := int(binary.BigEndian.Uint16(inner[2:4])) - 20
		switch {
		case bytes.Equal(vx[:8], []byte{0x08, 0x20, 0, 0, 0, 0, 1, 0x11}):
			if got, want := binary.BigEndian.Uint16(inner[36:38]), tcpSum(inner[12:16], inner[16:20], l4Len, nil); got != want {
				t.Fatalf("RCO frame: inner TCP checksum field %#04x, want the pseudo-header sum %#04x", got, want)
			}
			rco++
		case bytes.Equal(vx[:8], []byte{0x08, 0, 0, 0, 0, 0, 1, 0}):
			if len(inner) >= 20+l4Len && tcpSum(inner[12:16], inner[16:20], l4Len, inner[20:20+l4Len]) != 0xffff {
				t.Fatalf("plain TCP frame with a bad inner checksum")
			}
			plain++
		default:
			t.Fatalf("TCP data frame with VXLAN header % x", vx[:8])
		}
	}
	if rco == 0 {
		t.Fatalf("no TCP data frame with RCO (%d plain)", plain)
	}
	t.Logf("TCP data frames (or GSO batches): %d with RCO, %d plain", rco, plain)
}

// TestNetnsKernelVXLANInterop puts a Linux vxlan device, configured the way
// flannel configures flannel.1 (VNI 1, port 8472, no learning, static FDB
// and neighbour entries), on node n2 and has it exchange traffic with the
// weftd on n1 in both directions.
func TestNetnsKernelVXLANInterop(t *testing.T) {
	needNetns(t, "bridge")
	const (
		kernelMAC  = "0e:00:00:00:02:00"
		kernelAddr = "10.244.2.0" // flannel gives flannel.1 the network address of its CIDR
		port       = "8472"
	)
	// n2's underlay address follows the lab's plan (node 2 on site 2).
	l := startLab(t, lab.Config{
		Nodes: 2, Sites: 2, PodsPerNode: 1, External: []string{"n2"},
		WeftdArgs: []string{"--vxlan-port", port, "--static-peer", "name=n2,addr=198.51.100.12:" + port + ",cidr=10.244.2.0/24,mac=" + kernelMAC},
	})
	n1, n2 := l.Node("n1"), l.Node("n2")
	if n2.UnderlayAddr != "198.51.100.12" || n2.PodCIDR != "10.244.2.0/24" {
		t.Fatalf("lab plan changed: n2 is %s with %s", n2.UnderlayAddr, n2.PodCIDR)
	}
	kernelVXLAN(t, l, n1, n2, kernelMAC, kernelAddr, port)
	ctx := context.Background()
	p1 := l.PodsOn("n1")[0]
	ping(t, l, p1.Netns, kernelAddr) // weft pod → kernel vxlan → back
	ping(t, l, n2.Netns, p1.Address) // kernel vxlan → weft pod → back
	st := status(t, n1)
	if st.Counters["rx_packets"] < 6 || st.Counters["tx_packets"] < 6 {
		t.Fatalf("weftd counters after 6 exchanges each way: %v", st.Counters)
	}
	if out, _ := l.Exec(ctx, n2.Netns, "ip", "-s", "link", "show", "flannel.1"); !strings.Contains(string(out), "RX:") {
		t.Logf("flannel.1: %s", out)
	}
}

// kernelVXLAN makes the external node kernel a flannel-style Linux vxlan
// peer of the weft node n1: flannel.1 (VNI 1, no learning, default
// offloads) with the address addr and the MAC mac, a route to n1's pod
// CIDR through n1's gateway, and static neighbour and FDB entries.
func kernelVXLAN(t *testing.T, l *lab.Lab, n1, kernel *lab.Node, mac, addr, port string) {
	t.Helper()
	kernelVXLANOver(t, l, n1, kernel, mac, addr, port, kernel.UnderlayAddr, n1.UnderlayAddr, 1450)
}

// kernelVXLANOver is kernelVXLAN with the underlay addresses given: the
// device's local address and n1's, of either family, and the device's
// MTU (flannel's: the underlay MTU minus 50 over IPv4, 70 over IPv6).
func kernelVXLANOver(t *testing.T, l *lab.Lab, n1, kernel *lab.Node, mac, addr, port, local, remote string, mtu int) {
	t.Helper()
	mac1 := status(t, n1).Self.VTEPMAC
	gw1 := netip.MustParsePrefix(n1.PodCIDR).Addr() // flannel routes via the peer's network address
	for _, args := range [][]string{
		{"ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", local, "dev", kernel.UnderlayIf, "dstport", port, "nolearning"},
		{"ip", "link", "set", "flannel.1", "address", mac, "mtu", strconv.Itoa(mtu), "up"},
		{"ip", "addr", "add", addr + "/32", "dev", "flannel.1"},
		{"ip", "route", "add", n1.PodCIDR, "via", gw1.String(), "dev", "flannel.1", "onlink"},
		{"ip", "neigh", "replace", gw1.String(), "lladdr", mac1, "dev", "flannel.1", "nud", "permanent"},
		{"bridge", "fdb", "append", mac1, "dev", "flannel.1", "dst", remote},
	} {
		if out, err := l.Exec(context.Background(), kernel.Netns, args...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// sendUDP sends payload to dst from inside netns.
func sendUDP(t *testing.T, netns, dst string, payload []byte) {
	t.Helper()
	err := ns.WithNetNSPath("/run/netns/"+netns, func(ns.NetNS) error {
		c, err := net.Dial("udp", dst)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestNetnsBadInputDropped fires malformed and unauthorised VXLAN frames at
// a real weftd over UDP and checks each is dropped and counted.
func TestNetnsBadInputDropped(t *testing.T) {
	needNetns(t)
	l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1})
	waitConverged(t, l)
	n1, n2 := l.Node("n1"), l.Node("n2")
	p1 := l.PodsOn("n1")[0]
	mac1 := status(t, n1).Self.VTEPMAC
	hw1, _ := net.ParseMAC(mac1)
	frame := func(vni uint32, src, dst string) []byte {
		inner := make([]byte, 28)
		inner[0], inner[3], inner[8], inner[9] = 0x45, 28, 64, 1
		s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
		copy(inner[12:], s[:])
		copy(inner[16:], d[:])
		inner[20] = 8 // ICMP echo request
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(inner[i])<<8 | uint32(inner[i+1])
		}
		sum = sum>>16 + sum&0xffff
		inner[10], inner[11] = ^byte(sum>>8), ^byte(sum) // the IPv4 header checksum
		f := vxlan.Frame{VNI: vni, Dst: [6]byte(hw1), EtherType: vxlan.EtherTypeIPv4}
		b := make([]byte, vxlan.FrameHeaderLen+len(inner))
		f.Encode(b)
		copy(b[vxlan.FrameHeaderLen:], inner)
		return b
	}
	dst := net.JoinHostPort(n1.UnderlayAddr, "4789")
	peerPod := netip.MustParsePrefix(n2.PodCIDR).Addr().Next().Next().String()
	cases := []struct {
		counter string
		from    string // netns
		b       []byte
	}{
		{"drop_unknown_peer", l.Router.Netns, frame(1, peerPod, p1.Address)},
		{"drop_bad_vni", n2.Netns, frame(99, peerPod, p1.Address)},
		{"drop_spoofed_source", n2.Netns, frame(1, "10.244.77.7", p1.Address)},
		{"drop_short", n2.Netns, []byte{0x08, 0, 0, 0}},
		{"drop_bad_flags", n2.Netns, append([]byte{0x0c}, frame(1, peerPod, p1.Address)[1:]...)},
		{"drop_bad_ethertype", n2.Netns, func() []byte { b := frame(1, peerPod, p1.Address); b[20], b[21] = 0x08, 0x06; return b }()},
	}
	before := status(t, n1).Counters
	for _, c := range cases {
		sendUDP(t, c.from, dst, c.b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := status(t, n1).Counters
		var missing []string
		for _, c := range cases {
			if after[c.counter] <= before[c.counter] {
				missing = append(missing, c.counter)
			}
		}
		if len(missing) == 0 {
			if after["rx_packets"] != before["rx_packets"] {
				t.Fatalf("bad frames were delivered: rx_packets %d → %d", before["rx_packets"], after["rx_packets"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters not raised: %v (before %v, after %v)", missing, before, after)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// weftd is still healthy after all of it.
	ping(t, l, l.PodsOn("n2")[0].Netns, p1.Address)
}
