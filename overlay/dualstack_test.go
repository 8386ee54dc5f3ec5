package overlay

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// Dual-stack: IPv6 pod packets beside IPv4 ones, through the same router.
// The pods' IPv6 ranges are from the ULA range, fd00:10:244::/56, one /64
// per node, as the lab's dual-stack option uses.

// dualNode is newTestNode with an IPv6 pod CIDR beside the IPv4 one, and
// both ICMP sources.
func dualNode(t *testing.T, n *memNet, name, underlay string, i byte, pmtu func(netip.Addr) (int, error)) *testNode {
	t.Helper()
	tn := &testNode{tun: tuntest.NewChannelTUN(), bind: n.bind(underlay)}
	v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, i, 0}), 24)
	v6 := netip.MustParsePrefix("fd00:10:244:" + string('0'+i) + "::/64")
	tn.peer = Peer{Name: name, Underlay: tn.bind.addr, PodCIDRs: []netip.Prefix{v4, v6}, VTEPMAC: [6]byte{0x0a, 0x58, 0, 0, 0, i}}
	tn.r = New(Config{VNI: 1, LocalMAC: tn.peer.VTEPMAC, PodCIDRs: tn.peer.PodCIDRs, PathMTU: pmtu,
		ICMPSource: v4.Addr().Next(), ICMPSource6: v6.Addr().Next()}, tn.tun.TUN(), tn.bind)
	if err := tn.r.Start(tn.bind.addr.Port()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.r.Close() })
	return tn
}

func dualNodes(t *testing.T, pmtu func(netip.Addr) (int, error)) (a, b *testNode) {
	n := &memNet{}
	a = dualNode(t, n, "a", "192.0.2.11:4789", 1, pmtu)
	b = dualNode(t, n, "b", "198.51.100.12:4789", 2, pmtu)
	if err := a.r.SetPeers([]Peer{b.peer}); err != nil {
		t.Fatal(err)
	}
	if err := b.r.SetPeers([]Peer{a.peer}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// udp6 builds an IPv6 UDP datagram with a complete checksum.
func udp6(src, dst string, payload string) []byte {
	l4 := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(l4[0:2], 40000)
	binary.BigEndian.PutUint16(l4[2:4], 5201)
	binary.BigEndian.PutUint16(l4[4:6], uint16(len(l4)))
	copy(l4[8:], payload)
	p := ipv6Packet(src, dst, protoUDP, l4)
	s, d := addrs(p, true)
	binary.BigEndian.PutUint16(p[40+6:], ^offload.Checksum(p[40:], offload.PseudoSum(s, d, protoUDP, len(l4))))
	return p
}

// TestRouterCarriesIPv6 carries IPv6 pod packets both ways between two
// dual-stack nodes, next to IPv4, and drops IPv6 frames with a spoofed
// source or a destination outside the receiver's pod CIDRs, as for IPv4.
func TestRouterCarriesIPv6(t *testing.T) {
	a, b := dualNodes(t, nil)
	ab := udp6("fd00:10:244:1::2", "fd00:10:244:2::2", "ping a->b")
	a.tun.Outbound <- ab
	if got := recvTUN(t, b); !bytes.Equal(got, ab) {
		t.Fatalf("b got % x, want % x", got, ab)
	}
	ba := udp6("fd00:10:244:2::2", "fd00:10:244:1::2", "pong b->a")
	b.tun.Outbound <- ba
	if got := recvTUN(t, a); !bytes.Equal(got, ba) {
		t.Fatalf("a got % x, want % x", got, ba)
	}
	v4 := ipv4("10.244.1.2", "10.244.2.2", "and IPv4 beside it")
	a.tun.Outbound <- v4
	if got := recvTUN(t, b); !bytes.Equal(got, v4) {
		t.Fatalf("b got % x, want % x", got, v4)
	}
	a.tun.Outbound <- udp6("fd00:10:244:1::2", "fd00:10:244:9::2", "nobody owns this")
	waitCounter(t, func() uint64 { return a.r.Stats().Drops("drop_no_route") }, 1)

	frame := func(inner []byte) []byte {
		f := vxlan.Frame{VNI: 1, Dst: b.peer.VTEPMAC, Src: a.peer.VTEPMAC, EtherType: vxlan.EtherTypeIPv6}
		out := make([]byte, vxlan.FrameHeaderLen+len(inner))
		f.Encode(out)
		copy(out[vxlan.FrameHeaderLen:], inner)
		return out
	}
	from := a.peer.Underlay.String()
	for _, tc := range []struct{ counter, src, dst string }{
		{"drop_spoofed_source", "fd00:10:244:2::7", "fd00:10:244:2::2"}, // b's own range, from a
		{"drop_not_local", "fd00:10:244:1::2", "fd00:10:244:3::2"},
		{"drop_not_local", "fd00:10:244:1::2", "2001:db8::12"},
	} {
		before := b.r.Stats().Drops(tc.counter)
		b.bind.inject(from, frame(udp6(tc.src, tc.dst, "x")))
		waitCounter(t, func() uint64 { return b.r.Stats().Drops(tc.counter) }, before+1)
		expectNothing(t, b)
	}
	// An IPv6 packet in a frame labelled IPv4 is refused too.
	before := b.r.Stats().Drops("drop_bad_ethertype")
	f := frame(udp6("fd00:10:244:1::2", "fd00:10:244:2::2", "x"))
	f[20], f[21] = 0x08, 0x00
	b.bind.inject(from, f)
	time.Sleep(50 * time.Millisecond)
	expectNothing(t, b)
	if b.r.Stats().Drops("drop_bad_ethertype")+b.r.Stats().Drops("drop_bad_inner_ip") == before {
		t.Fatalf("IPv6 in an IPv4 frame not counted: %v", b.r.Stats().Snapshot())
	}
}

// TestPacketTooBig checks the ICMPv6 message against RFC 4443: header
// fields, the checksum over the pseudo-header, the quote, and the packets
// that get no answer.
func TestPacketTooBig(t *testing.T) {
	src := netip.MustParseAddr("fd00:10:244:1::1")
	buf := make([]byte, icmpBufLen)
	for _, size := range []int{100, 1400, 9000} {
		pkt := udp6("fd00:10:244:1::2", "fd00:10:244:2::2", string(make([]byte, size)))
		n := packetTooBig(buf, src, pkt, 1370)
		wantQuote := min(len(pkt), 1280-48)
		if n != 48+wantQuote || n > 1280 {
			t.Fatalf("size %d: length %d, want %d", size, n, 48+wantQuote)
		}
		b := buf[:n]
		ip, ok := parseIP(b)
		if !ok || !ip.v6 || ip.proto != protoICMPv6 || ip.length != n || b[7] != 64 {
			t.Fatalf("size %d: IPv6 header % x", size, b[:40])
		}
		if netip.AddrFrom16([16]byte(b[8:24])) != src || netip.AddrFrom16([16]byte(b[24:40])).String() != "fd00:10:244:1::2" {
			t.Fatalf("size %d: addresses % x", size, b[8:40])
		}
		s, d := addrs(b, true)
		if offload.Checksum(b[40:], offload.PseudoSum(s, d, protoICMPv6, n-40)) != 0xffff {
			t.Fatalf("size %d: bad ICMPv6 checksum", size)
		}
		if b[40] != 2 || b[41] != 0 || binary.BigEndian.Uint32(b[44:48]) != 1370 {
			t.Fatalf("size %d: not type 2 code 0 MTU 1370: % x", size, b[40:48])
		}
		if !bytes.Equal(b[48:], pkt[:wantQuote]) {
			t.Fatalf("size %d: quote is not the packet's start", size)
		}
	}
	icmpErr := ipv6Packet("fd00:10:244:1::2", "fd00:10:244:2::2", protoICMPv6, []byte{1, 4, 0, 0, 0, 0, 0, 0})
	echo := ipv6Packet("fd00:10:244:1::2", "fd00:10:244:2::2", protoICMPv6, []byte{128, 0, 0, 0, 0, 1, 0, 1})
	for name, tc := range map[string]struct {
		pkt  []byte
		src  netip.Addr
		want bool
	}{
		"echo request":     {echo, src, true},
		"icmpv6 error":     {icmpErr, src, false},
		"ipv4 packet":      {ipv4("10.244.1.2", "10.244.2.2", "x"), src, false},
		"ipv4 source":      {echo, netip.MustParseAddr("10.244.1.1"), false},
		"from unspecified": {ipv6Packet("::", "fd00:10:244:2::2", 59, nil), src, false},
		"from multicast":   {ipv6Packet("ff02::1", "fd00:10:244:2::2", 59, nil), src, false},
		"truncated":        {echo[:39], src, false},
		"empty":            {nil, src, false},
	} {
		if got := packetTooBig(buf, tc.src, tc.pkt, 1370) != 0; got != tc.want {
			t.Errorf("%s: answered %v, want %v", name, got, tc.want)
		}
	}
}

// TestRouterAnswersTooBigIPv6 lowers the path MTU toward a peer: an IPv6
// packet that no longer fits is answered with an ICMPv6 "packet too big"
// from the node's IPv6 gateway, carrying the inner MTU, while an IPv4 one
// still gets "fragmentation needed".
func TestRouterAnswersTooBigIPv6(t *testing.T) {
	a, b := dualNodes(t, func(netip.Addr) (int, error) { return 1400, nil })
	a.r.refreshPathMTUs()
	a.tun.Outbound <- udp6("fd00:10:244:1::2", "fd00:10:244:2::2", string(make([]byte, 1360)))
	select {
	case reply := <-a.tun.Inbound:
		if reply[0]>>4 != 6 || reply[6] != protoICMPv6 || reply[40] != 2 || binary.BigEndian.Uint32(reply[44:48]) != 1350 {
			t.Fatalf("reply is not packet-too-big with MTU 1350: % x", reply[:48])
		}
		if netip.AddrFrom16([16]byte(reply[8:24])).String() != "fd00:10:244:1::1" {
			t.Fatalf("reply from %v, want the IPv6 gateway", netip.AddrFrom16([16]byte(reply[8:24])))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no ICMPv6 packet too big came back")
	}
	expectNothing(t, b)
	small := udp6("fd00:10:244:1::2", "fd00:10:244:2::2", string(make([]byte, 1300)))
	a.tun.Outbound <- small
	if got := recvTUN(t, b); !bytes.Equal(got, small) {
		t.Fatalf("small packet: got %d bytes", len(got))
	}
	if a.r.Stats().ICMPPacketTooBig.Load() != 1 || a.r.Stats().ICMPFragNeeded.Load() != 0 || a.r.Stats().Drops("drop_too_big") != 1 {
		t.Fatalf("counters: %v", a.r.Stats().Snapshot())
	}
}

// FuzzPacketTooBig: whatever the TUN hands the router, the answer fits
// the buffer and the minimum MTU, and is a well-formed ICMPv6 error with a
// right checksum.
func FuzzPacketTooBig(f *testing.F) {
	f.Add(udp6("fd00:10:244:1::2", "fd00:10:244:2::2", "payload"))
	f.Add(ipv6Packet("fd00:10:244:1::2", "fd00:10:244:2::2", protoICMPv6, []byte{1, 4, 0, 0, 0, 0, 0, 0}))
	f.Add(ipv4("10.244.1.2", "10.244.2.2", "x"))
	f.Add([]byte{0x60})
	src := netip.MustParseAddr("fd00:10:244:1::1")
	buf := make([]byte, icmpBufLen)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		n := packetTooBig(buf, src, pkt, 1350)
		if n == 0 {
			return
		}
		if n > ipv6MinMTU || n < 48 {
			t.Fatalf("length %d", n)
		}
		b := buf[:n]
		var ip ipHeader
		if !ip.parse(b) || ip.length != n || ip.proto != protoICMPv6 || b[40] != 2 {
			t.Fatalf("not an ICMPv6 packet too big: % x", b[:48])
		}
		if checkInner(b, &ip) != pass {
			t.Fatal("the router's own answer fails its inbound checks")
		}
		s, d := addrs(b, true)
		if offload.Checksum(b[40:], offload.PseudoSum(s, d, protoICMPv6, n-40)) != 0xffff {
			t.Fatal("bad checksum")
		}
	})
}

// TestPacketPathAllocsIPv6 pins the IPv6 per-packet path at zero
// allocations, as TestPacketPathAllocs does for IPv4: encapsulate, then
// decapsulate with every inbound check, and the ICMPv6 answer.
func TestPacketPathAllocsIPv6(t *testing.T) {
	a, b := dualNodes(t, nil)
	ta, tb := a.r.table.Load(), b.r.table.Load()
	inner := udp6("fd00:10:244:1::2", "fd00:10:244:2::2", "allocs")
	buf := make([]byte, bufSize)
	icmp := make([]byte, icmpBufLen)
	src := netip.MustParseAddr("fd00:10:244:1::1")
	allocs := testing.AllocsPerRun(1000, func() {
		copy(buf[tunOffset:], inner)
		if _, v := a.r.encapsulate(ta, buf, len(inner)); v != pass {
			t.Fatalf("encapsulate verdict %d", v)
		}
		frame := buf[tunOffset-vxlan.FrameHeaderLen : tunOffset+len(inner)]
		if v := b.r.decapsulate(frame, tb.peerAt(a.peer.Underlay.Addr())); v != pass {
			t.Fatalf("decapsulate verdict %d", v)
		}
		if packetTooBig(icmp, src, inner, 1350) == 0 {
			t.Fatal("no packet too big")
		}
	})
	if allocs != 0 {
		t.Fatalf("IPv6 per-packet path allocates %v times, want 0", allocs)
	}
}

// TestPathFitsByUnderlayFamily: the outer headers counted against a peer's
// path MTU are those of its underlay family: VXLAN 50 over IPv4 and 70 over
// IPv6, WireGuard 60 and 80 (plus its 16-byte padding).
func TestPathFitsByUnderlayFamily(t *testing.T) {
	for _, tc := range []struct {
		underlay  string
		transport Transport
		inner     int // the largest inner packet a 1400-byte path carries
	}{
		{"192.0.2.12:4789", TransportVXLAN, 1350},
		{"[2001:db8::12]:4789", TransportVXLAN, 1330},
		{"192.0.2.12:51820", TransportWireGuard, 1328},
		{"[2001:db8::12]:51820", TransportWireGuard, 1312},
	} {
		p := &peerEntry{Peer: Peer{Underlay: netip.MustParseAddrPort(tc.underlay), Transport: tc.transport}, pmtu: &pathMTU{}}
		p.pmtu.v.Store(1400)
		if got := p.innerMTU(); got != tc.inner {
			t.Errorf("%s %v: inner MTU %d, want %d", tc.underlay, tc.transport, got, tc.inner)
		}
		if !p.fits(tc.inner, 0) || p.fits(tc.inner+16, 0) {
			t.Errorf("%s %v: fits(%d) %v, fits(%d) %v", tc.underlay, tc.transport, tc.inner, p.fits(tc.inner, 0), tc.inner+16, p.fits(tc.inner+16, 0))
		}
	}
}

// TestWireGuardFullSizeFits: on a 1500-byte path a pod packet of the
// device MTU fits WireGuard over either family, because WireGuard pads
// only up to the device MTU: 1440 over IPv4 (a multiple of 16 anyway) and
// 1420 over IPv6 (which is not; padded to 1424 it would not fit). One byte
// more does not fit, and a smaller packet is padded in full.
func TestWireGuardFullSizeFits(t *testing.T) {
	for _, tc := range []struct {
		underlay string
		devMTU   int
	}{{"192.0.2.12:51820", 1440}, {"[2001:db8::12]:51820", 1420}} {
		p := &peerEntry{Peer: Peer{Underlay: netip.MustParseAddrPort(tc.underlay), Transport: TransportWireGuard}, pmtu: &pathMTU{}}
		p.pmtu.v.Store(1500)
		if !p.fits(tc.devMTU, tc.devMTU) {
			t.Errorf("%s: a %d-byte packet with device MTU %d does not fit a 1500-byte path", tc.underlay, tc.devMTU, tc.devMTU)
		}
		if p.fits(tc.devMTU+1, tc.devMTU+1) {
			t.Errorf("%s: a %d-byte packet fits a 1500-byte path", tc.underlay, tc.devMTU+1)
		}
	}
	for _, tc := range []struct{ size, devMTU, want int }{
		{1409, 1420, 1420}, {1420, 1420, 1420}, {1400, 1420, 1408}, {1409, 0, 1424}, {1440, 1440, 1440}, {1500, 1420, 1500},
	} {
		if got := wgPadded(tc.size, tc.devMTU); got != tc.want {
			t.Errorf("wgPadded(%d, %d) = %d, want %d", tc.size, tc.devMTU, got, tc.want)
		}
	}
}
