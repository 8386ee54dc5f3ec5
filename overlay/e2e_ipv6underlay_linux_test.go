package overlay_test

// The VXLAN datapath over an IPv6 underlay (2001:db8::/32), against the
// Linux vxlan driver as the reference.

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/encap/vxlan"
)

// TestNetnsKernelVXLANInteropIPv6Underlay repeats the kernel vxlan interop
// test over an IPv6 underlay: n1's weftd and a flannel-style Linux vxlan
// device on n2 (local 2001:db8::12, FDB entry toward weft at
// 2001:db8::11, MTU 1430: the underlay's 1500 minus 70) on one site's
// bridge, offloads at their defaults. It checks, in both directions:
//   - ping, and TCP streams that arrive whole; the kernel's TSO packets and
//     weft's GSO sends cross the veth as UDP super-packets over IPv6 (weft's
//     receiver takes them with GRO, its sender makes them with UDP_SEGMENT);
//   - the pod MTU (1450, for n1's IPv4 address) is more than this IPv6 path
//     carries: weft answers a full-size packet with "fragmentation needed"
//     for 1430 (TCP keeps within it by the MSS the kernel side announces);
//   - every outer UDP checksum weft sends over IPv6 is set (never zero), and
//     is right where the veth computes it in full (transmit checksum
//     offload off); the kernel device, which refuses zero IPv6 checksums
//     unless told otherwise (udp6zerocsumrx), takes weft's frames;
//   - a short datagram, a bad VNI from the peer's IPv6 address, and a frame
//     from an unknown IPv6 address are each counted as their drop.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestNetnsKernelVXLANInteropIPv6Underlay(t *testing.T) {
	needNetns(t, "bridge", "ethtool", "tcpdump")
	const (
		kernelMAC  = "0e:00:00:00:02:00"
		kernelAddr = "10.244.2.0"
		port       = "8472"
		weft6      = "2001:db8::11"
		kernel6    = "2001:db8::12"
	)
	l := startLab(t, lab.Config{
		Nodes: 2, Sites: 1, PodsPerNode: 1, External: []string{"n2"},
		WeftdArgs: []string{"--vxlan-port", port, "--static-peer", "name=n2,addr=[" + kernel6 + "]:" + port + ",cidr=10.244.2.0/24,mac=" + kernelMAC},
	})
	n1, n2 := l.Node("n1"), l.Node("n2")
	if n2.PodCIDR != "10.244.2.0/24" || n1.Site != n2.Site {
		t.Fatalf("lab plan changed: n2 has %s on %s", n2.PodCIDR, n2.Site)
	}
	ctx := context.Background()
	exec := func(netns string, args ...string) {
		t.Helper()
		if out, err := l.Exec(ctx, netns, args...); err != nil {
			t.Fatalf("%s: %v: %v\n%s", netns, args, err, out)
		}
	}
	// The IPv6 underlay, beside the lab's IPv4 one on the same veths.
	for _, a := range []struct {
		n    *lab.Node
		addr string
	}{{n1, weft6}, {n2, kernel6}} {
		exec(a.n.Netns, "sysctl", "-qw", "net.ipv6.conf."+a.n.UnderlayIf+".disable_ipv6=0")
		exec(a.n.Netns, "ip", "addr", "add", a.addr+"/64", "dev", a.n.UnderlayIf, "nodad")
	}
	kernelVXLANOver(t, l, n1, n2, kernelMAC, kernelAddr, port, kernel6, weft6, 1500-vxlan.OverheadIPv6)
	// weftd started before its route to the peer existed: wait until its
	// periodic refresh has learned the path MTU toward the IPv6 address.
	waitLog(t, n1, "path MTU to peer changed", "underlay="+kernel6, "mtu=1500")
	p1 := l.PodsOn("n1")[0]
	defer func() {
		if t.Failed() {
			t.Logf("n1 counters: %v", status(t, n1).Counters)
		}
	}()

	w6, k6 := netip.MustParseAddr(weft6).As16(), netip.MustParseAddr(kernel6).As16()
	pcap := capture(t, n1.Netns, n1.UnderlayIf, "ip6 and udp port "+port, func() {
		ping(t, l, p1.Netns, kernelAddr)                      // weft pod → kernel vxlan → back
		ping(t, l, n2.Netns, p1.Address)                      // kernel vxlan → weft pod → back
		tcpTransfer(t, n2.Netns, p1.Netns, p1.Address, 4<<20) // kernel → weft
		tcpTransfer(t, p1.Netns, n2.Netns, kernelAddr, 4<<20) // weft → kernel
	})
	var out, in, bigOut, bigIn int
	for _, u := range udp6Packets(t, pcap) {
		switch {
		case u.src == w6 && u.dst == k6:
			out++
			if u.dport != 8472 {
				t.Fatalf("weft sent to UDP port %d", u.dport)
			}
			if u.csum == 0 {
				t.Fatalf("weft sent a zero UDP checksum over IPv6 (%d bytes)", len(u.udp))
			}
			if len(u.udp) > 1500-40 {
				bigOut++
			}
		case u.src == k6 && u.dst == w6:
			in++
			if len(u.udp) > 1500-40 {
				bigIn++
			}
		}
	}
	t.Logf("IPv6 underlay: %d datagrams weft → kernel (%d GSO super-packets), %d kernel → weft (%d super-packets)", out, bigOut, in, bigIn)
	if bigOut == 0 || bigIn == 0 {
		t.Fatalf("no UDP super-packets on the IPv6 underlay: %d out, %d in", bigOut, bigIn)
	}
	if c := status(t, n1).Counters; c["drop_bad_checksum"] != 0 || c["drop_bad_inner_length"] != 0 {
		t.Fatalf("n1 counters: %v", c)
	}
	// TCP kept within the path by the MSS the kernel side announced; a
	// full-size ping with DF does not fit: the pod hears of 1430.
	pingOut, _ := l.Exec(ctx, p1.Netns, "ping", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", strconv.Itoa(1450-28), kernelAddr)
	if c := status(t, n1).Counters; c["icmp_frag_needed_sent"] == 0 || !strings.Contains(strings.ReplaceAll(string(pingOut), " ", ""), "mtu=1430") {
		t.Fatalf("a 1450-byte packet on a path that carries 1430: ping says\n%s\ncounters %v", pingOut, c)
	}

	// Checksums in full: with transmit checksum offload off on n1's veth
	// the kernel finishes each outer UDP checksum before the capture.
	exec(n1.Netns, "ethtool", "-K", n1.UnderlayIf, "tx", "off")
	pcap = capture(t, n1.Netns, n1.UnderlayIf, "ip6 and udp port "+port, func() {
		ping(t, l, p1.Netns, kernelAddr)
	})
	checked := 0
	for _, u := range udp6Packets(t, pcap) {
		if u.src != w6 {
			continue
		}
		if !udp6ChecksumOK(u) {
			t.Fatalf("weft's UDP checksum %#04x over IPv6 is wrong (%d bytes)", u.csum, len(u.udp))
		}
		checked++
	}
	if checked < 3 {
		t.Fatalf("%d of weft's datagrams checked, want the 3 echo requests", checked)
	}

	// Bad input from IPv6 sources.
	exec(n2.Netns, "ip", "addr", "add", "2001:db8::99/64", "dev", n2.UnderlayIf, "nodad")
	mac1, _ := net.ParseMAC(status(t, n1).Self.VTEPMAC)
	frame := func(vni uint32) []byte {
		b := make([]byte, vxlan.FrameHeaderLen+28)
		f := vxlan.Frame{VNI: vni, Dst: [6]byte(mac1), EtherType: vxlan.EtherTypeIPv4}
		f.Encode(b)
		inner := b[vxlan.FrameHeaderLen:]
		inner[0], inner[3], inner[8], inner[9] = 0x45, 28, 64, 1
		copy(inner[12:16], []byte{10, 244, 2, 9})
		copy(inner[16:20], netip.MustParseAddr(p1.Address).AsSlice())
		return b
	}
	cases := []struct {
		counter, from string
		b             []byte
	}{
		{"drop_short", kernel6, []byte{0x08, 0, 0, 0}},
		{"drop_bad_vni", kernel6, frame(99)},
		{"drop_unknown_peer", "2001:db8::99", frame(1)},
	}
	before := status(t, n1).Counters
	for _, tc := range cases {
		err := ns.WithNetNSPath("/run/netns/"+n2.Netns, func(ns.NetNS) error {
			u, err := net.DialUDP("udp6", &net.UDPAddr{IP: net.ParseIP(tc.from)}, &net.UDPAddr{IP: net.ParseIP(weft6), Port: 8472})
			if err != nil {
				return err
			}
			defer u.Close()
			_, err = u.Write(tc.b)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := status(t, n1).Counters
		var wrong []string
		for _, tc := range cases {
			if d := after[tc.counter] - before[tc.counter]; d != 1 {
				wrong = append(wrong, tc.counter+"+"+strconv.FormatUint(d, 10))
			}
		}
		if len(wrong) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drop counters, want each +1: %v", wrong)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ping(t, l, n2.Netns, p1.Address) // still healthy
}

// waitLog waits up to 10 s for a line of n's weftd log holding all of
// parts.
func waitLog(t *testing.T, n *lab.Node, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(n.LogFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(line, p)
			}
			if found {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line with %q in the log of %s", parts, n.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// udp6 is one UDP datagram over IPv6 from a capture.
type udp6 struct {
	src, dst [16]byte
	dport    uint16
	csum     uint16
	udp      []byte // UDP header and payload
}

// udp6Packets returns the UDP datagrams over IPv6 (no extension headers)
// of a capture of Ethernet frames.
func udp6Packets(t *testing.T, pcap string) []udp6 {
	var out []udp6
	for _, f := range pcapPackets(t, pcap) {
		if len(f) < 14+40+8 || binary.BigEndian.Uint16(f[12:14]) != 0x86dd {
			continue
		}
		ip := f[14:]
		n := int(binary.BigEndian.Uint16(ip[4:6]))
		if ip[6] != 17 || len(ip) < 40+n || n < 8 {
			continue
		}
		u := udp6{src: [16]byte(ip[8:24]), dst: [16]byte(ip[24:40]), udp: ip[40 : 40+n]}
		u.dport = binary.BigEndian.Uint16(u.udp[2:4])
		u.csum = binary.BigEndian.Uint16(u.udp[6:8])
		out = append(out, u)
	}
	return out
}

// udp6ChecksumOK verifies a UDP checksum over the IPv6 pseudo-header
// (RFC 8200 section 8.1).
func udp6ChecksumOK(u udp6) bool {
	return u.csum != 0 && l4Sum(17, u.src[:], u.dst[:], len(u.udp), u.udp) == 0xffff
}
