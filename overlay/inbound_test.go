package overlay

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// inboundRouter is a router on the node owning 10.244.2.0/24 with one peer
// owning 10.244.1.0/24 at 192.0.2.11, a weft node (outer checksums) or not.
func inboundRouter(weft bool) (*Router, *peerEntry) {
	r := New(Config{VNI: 1, LocalMAC: [6]byte{2, 0, 0, 0, 0, 2},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00::2:0/112")}}, nil, nil)
	p := &peerEntry{Peer: Peer{Name: "a", Underlay: netip.MustParseAddrPort("192.0.2.11:4789"),
		PodCIDRs:      []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00::1:0/112")},
		OuterChecksum: weft}, pmtu: &pathMTU{}}
	r.table.Store(newTable([]*peerEntry{p}))
	return r, p
}

// frameOf puts an inner packet behind a VXLAN frame header for the router
// of inboundRouter.
func frameOf(inner []byte) []byte {
	b := make([]byte, vxlan.FrameHeaderLen+len(inner))
	f := vxlan.Frame{VNI: 1, Dst: [6]byte{2, 0, 0, 0, 0, 2}, EtherType: vxlan.EtherTypeFor(inner)}
	if f.EtherType == 0 {
		f.EtherType = vxlan.EtherTypeIPv4
	}
	f.Encode(b)
	copy(b[vxlan.FrameHeaderLen:], inner)
	return b
}

// tcp4 builds an IPv4 TCP segment with flags and payload; its checksum is
// complete, or only the pseudo-header sum when partial (as a kernel
// sender's veth hands it over).
func tcp4(src, dst string, flags byte, payload string, partial bool) []byte {
	p := ipv4(src, dst, string(make([]byte, 20))+payload)
	p[9] = protoTCP
	binary.BigEndian.PutUint16(p[10:12], 0)
	binary.BigEndian.PutUint16(p[10:12], ^refChecksum(p[:20]))
	tcp := p[20:]
	binary.BigEndian.PutUint16(tcp[0:2], 40000)
	binary.BigEndian.PutUint16(tcp[2:4], 5201)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:16], 64240)
	ps := offload.PseudoSum(p[12:16], p[16:20], protoTCP, len(tcp))
	if partial {
		binary.BigEndian.PutUint16(tcp[16:18], ps)
	} else {
		binary.BigEndian.PutUint16(tcp[16:18], ^offload.Checksum(tcp, ps))
	}
	return p
}

// ipv6Packet builds an IPv6 packet of next header nh with payload.
func ipv6Packet(src, dst string, nh byte, payload []byte) []byte {
	p := make([]byte, 40+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:6], uint16(len(payload)))
	p[6], p[7] = nh, 64
	copy(p[8:24], netip.MustParseAddr(src).AsSlice())
	copy(p[24:40], netip.MustParseAddr(dst).AsSlice())
	copy(p[40:], payload)
	return p
}

// reChecksum recomputes an IPv4 header checksum after a test edited it.
func reChecksum(p []byte) []byte {
	offload.PutIPv4Checksum(p[:int(p[0]&0x0f)*4])
	return p
}

// malformedInner is every inner packet the receive path must refuse, with
// the counter it must raise. Each is from the peer's pod to a local pod
// unless it says otherwise.
func malformedInner() []struct {
	name, counter string
	inner         []byte
} {
	return malformedInnerFor("10.244.1.2", "10.244.2.2", "192.0.2.12", "10.244.3.2")
}

// malformedInnerFor is malformedInner from the pod address src to the local
// pod address dst; node is the receiving node's underlay address, other a
// pod address on a third node.
func malformedInnerFor(src, dst, node, other string) []struct {
	name, counter string
	inner         []byte
} {
	good := func() []byte { return udp4(src, dst, 1, 2, "payload") }
	edit := func(f func(p []byte)) []byte { p := good(); f(p); return reChecksum(p) }
	return []struct {
		name, counter string
		inner         []byte
	}{
		{"ihl 4", "drop_bad_inner_ip", edit(func(p []byte) { p[0] = 0x44 })},
		{"ihl past the end", "drop_bad_inner_length", func() []byte { p := good()[:24]; p[0] = 0x46; return p }()},
		{"total length over the bytes", "drop_bad_inner_length", edit(func(p []byte) { binary.BigEndian.PutUint16(p[2:4], uint16(len(p)+1)) })},
		{"total length under the bytes", "drop_bad_inner_length", append(udp4(src, dst, 1, 2, string(make([]byte, 100))), 0)},
		{"total length under the header", "drop_bad_inner_length", edit(func(p []byte) { binary.BigEndian.PutUint16(p[2:4], 19) })},
		{"truncated", "drop_bad_inner_length", good()[:30]},
		{"header checksum", "drop_bad_checksum", func() []byte { p := good(); p[10] ^= 0xff; return p }()},
		{"reserved flag", "drop_bad_inner_ip", edit(func(p []byte) { p[6] = 0x80 })},
		{"fragment not a multiple of 8", "drop_bad_inner_ip", edit(func(p []byte) { p[6] = 0x20 })},
		{"fragment past 65535", "drop_bad_inner_ip", edit(func(p []byte) { p[6], p[7] = 0x1f, 0xff })},
		{"udp length", "drop_bad_inner_length", edit(func(p []byte) { p[25]++ })},
		{"udp header cut", "drop_bad_inner_length", reChecksum(func() []byte {
			p := ipv4(src, dst, "abc")
			p[9] = protoUDP
			return p
		}())},
		{"tcp data offset under 5", "drop_bad_inner_ip", func() []byte { p := tcp4(src, dst, tcpSYN, "", false); p[32] = 4 << 4; return p }()},
		{"tcp data offset past the end", "drop_bad_inner_ip", func() []byte { p := tcp4(src, dst, tcpSYN, "", false); p[32] = 15 << 4; return p }()},
		{"ipv6 payload length over", "drop_bad_inner_length", func() []byte {
			p := ipv6Packet("fd00::1:2", "fd00::2:2", 59, make([]byte, 80))
			p[5]++
			return p
		}()},
		{"ipv6 jumbo", "drop_bad_inner_length", func() []byte {
			p := ipv6Packet("fd00::1:2", "fd00::2:2", 59, make([]byte, 80))
			p[4], p[5] = 0, 0
			return p
		}()},
		{"ipv6 truncated", "drop_bad_inner_ip", ipv6Packet("fd00::1:2", "fd00::2:2", 59, nil)[:39]},
		{"to the node's underlay address", "drop_not_local", udp4(src, node, 1, 2, "x")},
		{"to another node's pod", "drop_not_local", udp4(src, other, 1, 2, "x")},
		{"to the cluster's outside", "drop_not_local", tcp4(src, "8.8.8.8", tcpSYN, "", false)},
		{"ipv6 to a non-pod", "drop_not_local", ipv6Packet("fd00::1:2", "fd00::9:2", 59, make([]byte, 8))},
	}
}

// TestDecapsulateRefusesMalformedInner: every malformed or misdirected
// inner packet is refused with its own reason, from weft peers and kernel
// peers alike, and the same packets made well are taken.
func TestDecapsulateRefusesMalformedInner(t *testing.T) {
	for _, weft := range []bool{false, true} {
		r, p := inboundRouter(weft)
		for _, tc := range malformedInner() {
			v := r.decapsulate(frameOf(tc.inner), p)
			if verdictNames[v] != tc.counter {
				t.Errorf("weft=%v %s: verdict %q, want %q", weft, tc.name, verdictNames[v], tc.counter)
			}
		}
		for name, inner := range map[string][]byte{
			"udp":              udp4("10.244.1.2", "10.244.2.2", 1, 2, "payload"),
			"to the gateway":   udp4("10.244.1.2", "10.244.2.1", 1, 2, "payload"),
			"tcp syn":          tcp4("10.244.1.2", "10.244.2.2", tcpSYN, "", false),
			"padded to 60":     append(tcp4("10.244.1.2", "10.244.2.2", tcpACK, "", false), 0, 0, 0, 0, 0, 0),
			"first fragment":   reChecksum(func() []byte { p := udp4("10.244.1.2", "10.244.2.2", 1, 2, "12345678"); p[6] = 0x20; return p }()),
			"last fragment":    reChecksum(func() []byte { p := ipv4("10.244.1.2", "10.244.2.2", "tail"); p[9] = protoUDP; p[7] = 2; return p }()),
			"ipv6 no next hdr": ipv6Packet("fd00::1:2", "fd00::2:2", 59, make([]byte, 8)),
		} {
			if v := r.decapsulate(frameOf(inner), p); v != pass {
				t.Errorf("weft=%v %s: verdict %q, want pass", weft, name, verdictNames[v])
			}
		}
	}
}

// TestDecapsulateFinishesPartialChecksums: a kernel vxlan peer on the same
// segment hands over TCP and UDP with only the pseudo-header sum in the
// checksum field; decapsulate finishes them, leaves complete ones alone,
// and never touches a weft peer's (which are never partial).
func TestDecapsulateFinishesPartialChecksums(t *testing.T) {
	r, kernel := inboundRouter(false)
	for _, tc := range []struct {
		name  string
		inner []byte
	}{
		{"tcp syn", tcp4("10.244.1.2", "10.244.2.2", tcpSYN, "", true)},
		{"tcp data", tcp4("10.244.1.2", "10.244.2.2", tcpACK|tcpPSH, "some bytes of a stream", true)},
		{"udp", func() []byte {
			p := udp4("10.244.1.2", "10.244.2.2", 1, 2, "datagram")
			binary.BigEndian.PutUint16(p[26:28], offload.PseudoSum(p[12:16], p[16:20], protoUDP, len(p)-20))
			return p
		}()},
	} {
		f := frameOf(tc.inner)
		if l4ChecksumOK(f[vxlan.FrameHeaderLen:]) {
			t.Fatalf("%s: the test packet's checksum is not partial", tc.name)
		}
		if v := r.decapsulate(f, kernel); v != pass {
			t.Fatalf("%s: verdict %q", tc.name, verdictNames[v])
		}
		if !l4ChecksumOK(f[vxlan.FrameHeaderLen:]) {
			t.Errorf("%s: checksum not finished", tc.name)
		}
	}
	complete := tcp4("10.244.1.2", "10.244.2.2", tcpACK, "abc", false)
	f := frameOf(complete)
	if r.decapsulate(f, kernel) != pass || string(f[vxlan.FrameHeaderLen:]) != string(complete) {
		t.Error("a complete checksum was changed")
	}
	rw, weft := inboundRouter(true)
	partial := tcp4("10.244.1.2", "10.244.2.2", tcpSYN, "", true)
	f = frameOf(partial)
	if rw.decapsulate(f, weft) != pass || string(f[vxlan.FrameHeaderLen:]) != string(partial) {
		t.Error("a weft peer's packet was rewritten")
	}
}

// TestInboundCountsMalformedInner: through the whole portable inbound loop,
// nothing malformed or misdirected reaches the TUN and every frame is
// counted under its reason.
func TestInboundCountsMalformedInner(t *testing.T) {
	_, a, b := twoNodes(t)
	want := map[string]uint64{}
	for _, tc := range malformedInner() {
		inner := append([]byte(nil), tc.inner...)
		// twoNodes: a owns 10.244.1.0/24 and sends to b, which owns
		// 10.244.2.0/24 (IPv4 only).
		if inner[0]>>4 == 6 {
			continue
		}
		f := frameOf(inner)
		copy(f[vxlan.HeaderLen:], b.peer.VTEPMAC[:])
		b.bind.inject(a.peer.Underlay.String(), f)
		want[tc.counter]++
	}
	for name, n := range want {
		waitCounter(t, func() uint64 { return b.r.Stats().Drops(name) }, n)
	}
	expectNothing(t, b)
	if got := b.r.Stats().RxPackets.Load(); got != 0 {
		t.Fatalf("rx_packets %d, want 0", got)
	}
}

// FuzzDecapsulate feeds arbitrary inner packets from a peer to decapsulate:
// nothing may panic, and whatever passes is a whole, well-formed packet
// addressed to a local pod, by a check written independently of
// checkInner.
func FuzzDecapsulate(f *testing.F) {
	f.Add(udp4("10.244.1.2", "10.244.2.2", 1, 2, "payload"), false)
	f.Add(tcp4("10.244.1.2", "10.244.2.2", tcpSYN, "", true), false)
	f.Add(ipv6Packet("fd00::1:2", "fd00::2:2", protoUDP, []byte{0, 1, 0, 2, 0, 8, 0, 0}), true)
	for _, tc := range malformedInner() {
		f.Add(tc.inner, false)
	}
	routers := [2]*Router{}
	peers := [2]*peerEntry{}
	routers[0], peers[0] = inboundRouter(false)
	routers[1], peers[1] = inboundRouter(true)
	f.Fuzz(func(t *testing.T, inner []byte, weft bool) {
		i := 0
		if weft {
			i = 1
		}
		fr := frameOf(inner)
		if routers[i].decapsulate(fr, peers[i]) != pass {
			return
		}
		p := fr[vxlan.FrameHeaderLen:]
		var l3, length int
		var dst netip.Addr
		switch p[0] >> 4 {
		case 4:
			l3, length = int(p[0]&0x0f)*4, int(p[2])<<8|int(p[3])
			dst = netip.AddrFrom4([4]byte(p[16:20]))
			if refChecksum(p[:l3]) != 0xffff {
				t.Fatal("passed with a bad IPv4 header checksum")
			}
		case 6:
			l3, length = 40, 40+(int(p[4])<<8|int(p[5]))
			dst = netip.AddrFrom16([16]byte(p[24:40]))
		default:
			t.Fatalf("passed a version %d packet", p[0]>>4)
		}
		if l3 < 20 || length < l3 || length > len(p) || length < len(p) && len(p) > 46 {
			t.Fatalf("passed header %d, length %d for %d bytes", l3, length, len(p))
		}
		if !netip.MustParsePrefix("10.244.2.0/24").Contains(dst) && !netip.MustParsePrefix("fd00::2:0/112").Contains(dst) {
			t.Fatalf("passed a packet to %s", dst)
		}
	})
}

// TestInboundTunnelSuperPacket: a buffer that is one VXLAN frame around an
// inner TCP super-packet (a same-host kernel vxlan peer's TSO packet, taken
// whole by the GRO socket) becomes one GSO write of segments that fit the
// TUN's MTU, with the kernel asked to finish the partial checksum; a
// complete checksum or a broken header is dropped and counted, and frames
// of a normal GRO run are not taken for one.
func TestInboundTunnelSuperPacket(t *testing.T) {
	r, kernel := inboundRouter(false)
	r.mtu = 1450
	payload := string(make([]byte, 9000))
	tab := r.table.Load()
	from := kernel.Underlay.Addr()

	var c coalescer
	var counts batchCounts
	b := frameOf(tcp4("10.244.1.2", "10.244.2.2", tcpACK, payload, true))
	r.decapsulateGRO(tab, b, len(b), from, &c, &counts)
	c.Flush()
	if len(c.Writes) != 1 || counts.packets != 1 {
		t.Fatalf("writes %d, packets %d, drops %v", len(c.Writes), counts.packets, counts.drops)
	}
	var h offload.Header
	if err := h.Decode(c.Writes[0].Head); err != nil {
		t.Fatal(err)
	}
	want := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, HdrLen: 40, GSOSize: 1410, CsumStart: 20, CsumOffset: tcpCsum}
	if h != want || len(c.Writes[0].Head) != offload.HeaderLen+40+9000 {
		t.Errorf("virtio header %+v (write of %d bytes), want %+v", h, len(c.Writes[0].Head), want)
	}

	// The GRO segment size the kernel reports wins when it is smaller.
	c.Reset()
	b = frameOf(tcp4("10.244.1.2", "10.244.2.2", tcpACK, payload, true))
	r.decapsulateGRO(tab, b, 1000, from, &c, &counts)
	c.Flush()
	if len(c.Writes) != 1 || c.Writes[0].Head[4] != 1000&0xff || c.Writes[0].Head[5] != 1000>>8 {
		t.Errorf("gso_size with a reported segment of 1000: writes %d, header % x", len(c.Writes), c.Writes[0].Head[:offload.HeaderLen])
	}

	for _, tc := range []struct {
		name  string
		frame []byte
		want  verdict
	}{
		{"complete checksum", frameOf(tcp4("10.244.1.2", "10.244.2.2", tcpACK, payload, false)), dropBadOffload},
		{"foreign source", frameOf(tcp4("10.244.9.2", "10.244.2.2", tcpACK, payload, true)), dropSpoofedSource},
		{"not local", frameOf(tcp4("10.244.1.2", "192.0.2.12", tcpACK, payload, true)), dropNotLocal},
	} {
		c.Reset()
		counts.reset()
		r.decapsulateGRO(tab, tc.frame, len(tc.frame), from, &c, &counts)
		c.Flush()
		if len(c.Writes) != 0 || counts.drops[tc.want] != 1 {
			t.Errorf("%s: writes %d, drops %v, want one %s", tc.name, len(c.Writes), counts.drops, verdictNames[tc.want])
		}
	}

	// A GRO run of two datagrams is two frames, not a super-packet.
	c.Reset()
	counts.reset()
	one := frameOf(tcp4("10.244.1.2", "10.244.2.2", tcpACK, string(make([]byte, 1000)), false))
	r.decapsulateGRO(tab, append(append([]byte{}, one...), one...), len(one), from, &c, &counts)
	c.Flush()
	if counts.packets != 2 {
		t.Errorf("GRO run of two: packets %d, drops %v", counts.packets, counts.drops)
	}
}
