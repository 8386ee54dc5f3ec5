package offload

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// testOffset is the device's headroom in front of a packet.
const testOffset = 16

// superFrame builds what the TUN hands over for a TCP (proto 6) or UDP
// super-packet of payload bytes cut at mss: the virtio header (GSO type,
// NEEDS_CSUM at the L4 checksum) and the packet, whose L4 checksum field
// holds only the pseudo-header sum, as the kernel leaves it.
func superFrame(v6 bool, proto uint8, payload []byte, mss int, tcpFlagsIn uint8) (Header, []byte) {
	l3 := 20
	if v6 {
		l3 = ipv6HeaderLen
	}
	l4 := udpHeaderLen
	if proto == ProtoTCP {
		l4 = 20
	}
	pkt := make([]byte, l3+l4+len(payload))
	if v6 {
		pkt[0] = 0x60
		binary.BigEndian.PutUint16(pkt[ip6PayloadLen:], uint16(l4+len(payload)))
		pkt[ip6NextHdr] = proto
		pkt[7] = 64
		copy(pkt[ip6Src:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
		copy(pkt[ip6Src+16:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	} else {
		pkt[0] = 0x45
		binary.BigEndian.PutUint16(pkt[ip4TotalLen:], uint16(len(pkt)))
		binary.BigEndian.PutUint16(pkt[ip4ID:], 0xfff0)
		pkt[ip4Frag] = 0x40 // DF
		pkt[8] = 64
		pkt[ip4Proto] = proto
		copy(pkt[ip4Src:], []byte{10, 244, 1, 5, 10, 244, 2, 7})
		binary.BigEndian.PutUint16(pkt[ip4Csum:], ^Checksum(pkt[:20], 0))
	}
	h := pkt[l3:]
	binary.BigEndian.PutUint16(h[0:], 40000)
	binary.BigEndian.PutUint16(h[2:], 5201)
	at := UDPCsum
	gso := uint8(GSOUDPL4)
	if proto == ProtoTCP {
		binary.BigEndian.PutUint32(h[tcpSeq:], 0xfffff000) // wraps
		h[tcpDataOff] = 5 << 4
		h[tcpFlags] = tcpFlagsIn
		binary.BigEndian.PutUint16(h[14:], 512)
		at = TCPCsum
		gso = GSOTCPv4
		if v6 {
			gso = GSOTCPv6
		}
	} else {
		binary.BigEndian.PutUint16(h[udpLen:], uint16(l4+len(payload)))
	}
	copy(pkt[l3+l4:], payload)
	binary.BigEndian.PutUint16(h[at:], pseudo(pkt, v6, proto, len(h)))
	return Header{Flags: NeedsCsum, GSOType: gso, HdrLen: uint16(l3 + l4), GSOSize: uint16(mss), CsumStart: uint16(l3), CsumOffset: uint16(at)}, pkt
}

// pseudo is the pseudo-header sum of the IP packet pkt.
func pseudo(pkt []byte, v6 bool, proto uint8, l4Len int) uint16 {
	src, dst := Addrs(pkt, v6)
	return PseudoSum(src, dst, proto, l4Len)
}

func testBufs(n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	return bufs, make([]int, n)
}

// checkSegment checks one packet as a receiver would: IP length, IPv4
// header checksum, L4 checksum; and returns its L4 header and payload.
func checkSegment(t *testing.T, pkt []byte, v6 bool, proto uint8) (l4, payload []byte) {
	t.Helper()
	l3 := 20
	if v6 {
		l3 = ipv6HeaderLen
		if int(binary.BigEndian.Uint16(pkt[ip6PayloadLen:]))+ipv6HeaderLen != len(pkt) {
			t.Fatalf("IPv6 payload length %d, packet %d", binary.BigEndian.Uint16(pkt[ip6PayloadLen:]), len(pkt))
		}
	} else {
		if int(binary.BigEndian.Uint16(pkt[ip4TotalLen:])) != len(pkt) {
			t.Fatalf("IPv4 total length %d, packet %d", binary.BigEndian.Uint16(pkt[ip4TotalLen:]), len(pkt))
		}
		if Checksum(pkt[:20], 0) != 0xffff {
			t.Fatal("IPv4 header checksum wrong")
		}
	}
	l4 = pkt[l3:]
	if Checksum(l4, pseudo(pkt, v6, proto, len(l4))) != 0xffff {
		t.Fatal("L4 checksum wrong")
	}
	hl := udpHeaderLen
	if proto == ProtoTCP {
		hl = int(l4[tcpDataOff]>>4) * 4
	} else if int(binary.BigEndian.Uint16(l4[udpLen:])) != len(l4) {
		t.Fatalf("UDP length %d, datagram %d", binary.BigEndian.Uint16(l4[udpLen:]), len(l4))
	}
	return l4, l4[hl:]
}

func TestSplitFrameSegments(t *testing.T) {
	payload := make([]byte, 65000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name    string
		v6      bool
		proto   uint8
		n, mss  int
		inPlace bool
	}{
		{"tcp4 in place", false, ProtoTCP, 65000, 1368, true},
		{"tcp4 copied", false, ProtoTCP, 65000, 1368, false},
		{"tcp6 in place", true, ProtoTCP, 30001, 1348, true},
		{"udp4 in place", false, ProtoUDP, 13920, 1392, true},
		{"udp6 odd tail", true, ProtoUDP, 5001, 1000, true},
		{"tcp4 one segment", false, ProtoTCP, 500, 1368, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, pkt := superFrame(tc.v6, tc.proto, payload[:tc.n], tc.mss, tcpFIN|tcpPSH|tcpCWR|0x10)
			bufs, sizes := testBufs(64)
			src := pkt
			if tc.inPlace {
				src = bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
			}
			k, err := SplitFrame(&h, src, bufs, sizes, testOffset, tc.inPlace)
			if err != nil {
				t.Fatal(err)
			}
			if want := (tc.n + tc.mss - 1) / tc.mss; k != want {
				t.Fatalf("%d segments, want %d", k, want)
			}
			var got []byte
			for i := 0; i < k; i++ {
				seg := bufs[i][testOffset : testOffset+sizes[i]]
				l4, pl := checkSegment(t, seg, tc.v6, tc.proto)
				if i < k-1 && len(pl) != tc.mss {
					t.Fatalf("segment %d carries %d bytes, want %d", i, len(pl), tc.mss)
				}
				got = append(got, pl...)
				if !tc.v6 {
					if id := binary.BigEndian.Uint16(seg[ip4ID:]); id != 0xfff0+uint16(i) {
						t.Fatalf("segment %d IPv4 ID %#x", i, id)
					}
				}
				if tc.proto == ProtoTCP {
					if seq := binary.BigEndian.Uint32(l4[tcpSeq:]); seq != 0xfffff000+uint32(i*tc.mss) {
						t.Fatalf("segment %d seq %#x", i, seq)
					}
					f := l4[tcpFlags]
					if (f&tcpCWR != 0) != (i == 0) || (f&(tcpFIN|tcpPSH) != 0) != (i == k-1) || f&0x10 == 0 {
						t.Fatalf("segment %d of %d flags %#x", i, k, f)
					}
				}
			}
			if !bytes.Equal(got, payload[:tc.n]) {
				t.Fatal("payloads do not add up to the super-packet's")
			}
		})
	}
}

func TestSplitFrameLonePacket(t *testing.T) {
	// A lone UDP datagram with a partial checksum: finished in place.
	h, pkt := superFrame(false, ProtoUDP, []byte("hello, pod"), 1400, 0)
	h.GSOType, h.GSOSize = GSONone, 0
	bufs, sizes := testBufs(1)
	src := bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
	k, err := SplitFrame(&h, src, bufs, sizes, testOffset, true)
	if err != nil || k != 1 || sizes[0] != len(pkt) {
		t.Fatalf("split = %d, %v; size %d, want 1 packet of %d", k, err, sizes[0], len(pkt))
	}
	checkSegment(t, bufs[0][testOffset:testOffset+sizes[0]], false, ProtoUDP)

	// Without NEEDS_CSUM the packet is left exactly as read.
	h.Flags = 0
	src = bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
	if k, err := SplitFrame(&h, src, bufs, sizes, testOffset, true); err != nil || k != 1 || !bytes.Equal(bufs[0][testOffset:testOffset+sizes[0]], pkt) {
		t.Fatalf("split = %d, %v: packet changed", k, err)
	}
}

func TestSplitFrameMalformed(t *testing.T) {
	good, pkt := superFrame(false, ProtoTCP, make([]byte, 5000), 1000, 0x10)
	for _, tc := range []struct {
		name string
		edit func(h *Header, p []byte) []byte
		bufs int
		want error
	}{
		{"zero mss", func(h *Header, p []byte) []byte { h.GSOSize = 0; return p }, 8, ErrMalformed},
		{"unknown gso type", func(h *Header, p []byte) []byte { h.GSOType = 3; return p }, 8, ErrMalformed},
		{"tcp6 type on ipv4", func(h *Header, p []byte) []byte { h.GSOType = GSOTCPv6; return p }, 8, ErrMalformed},
		{"udp type on tcp", func(h *Header, p []byte) []byte { h.GSOType = GSOUDPL4; return p }, 8, ErrMalformed},
		{"ip version 5", func(h *Header, p []byte) []byte { p[0] = 0x55; return p }, 8, ErrMalformed},
		{"short ihl", func(h *Header, p []byte) []byte { p[0] = 0x44; return p }, 8, ErrMalformed},
		{"fragment", func(h *Header, p []byte) []byte { p[ip4Frag] = 0x20; return p }, 8, ErrMalformed},
		{"tcp data offset 4", func(h *Header, p []byte) []byte { p[20+tcpDataOff] = 4 << 4; return p }, 8, ErrMalformed},
		{"tcp data offset past the end", func(h *Header, p []byte) []byte { p[20+tcpDataOff] = 15 << 4; return p[:50] }, 8, ErrMalformed},
		{"headers only", func(h *Header, p []byte) []byte { return p[:40] }, 8, ErrMalformed},
		{"truncated ip", func(h *Header, p []byte) []byte { return p[:10] }, 8, ErrMalformed},
		{"mss over 64k", func(h *Header, p []byte) []byte { h.GSOSize = 65500; return p }, 8, ErrMalformed},
		{"more segments than buffers", func(h *Header, p []byte) []byte { return p }, 4, ErrTooManySegments},
		{"no buffers", func(h *Header, p []byte) []byte { return p }, 0, ErrTooManySegments},
		{"csum start past the end", func(h *Header, p []byte) []byte {
			h.GSOType, h.CsumStart = GSONone, 6000
			return p
		}, 8, ErrMalformed},
		{"odd csum offset", func(h *Header, p []byte) []byte { h.GSOType, h.CsumOffset = GSONone, 7; return p }, 8, ErrMalformed},
		{"empty super-packet", func(h *Header, p []byte) []byte { return p[:0] }, 8, ErrMalformed},
		{"empty lone packet", func(h *Header, p []byte) []byte { h.GSOType = GSONone; return p[:0] }, 8, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := good
			p := tc.edit(&h, bytes.Clone(pkt))
			bufs, sizes := testBufs(tc.bufs)
			if _, err := SplitFrame(&h, p, bufs, sizes, testOffset, false); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVirtioHdrRoundTrip(t *testing.T) {
	h := Header{Flags: NeedsCsum, GSOType: GSOTCPv6 | GSOECN, HdrLen: 72, GSOSize: 1348, CsumStart: 40, CsumOffset: 16}
	var b [HeaderLen]byte
	h.Encode(b[:])
	var got Header
	if err := got.Decode(b[:]); err != nil || got != h {
		t.Fatalf("decode = %+v, %v; want %+v", got, err, h)
	}
	if err := got.Decode(b[:HeaderLen-1]); err == nil {
		t.Fatal("short header decoded")
	}
}

func TestSplitFrameZeroAllocs(t *testing.T) {
	h, pkt := superFrame(false, ProtoTCP, make([]byte, 60000), 1368, 0x10)
	bufs, sizes := testBufs(64)
	allocs := testing.AllocsPerRun(50, func() {
		src := bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
		if _, err := SplitFrame(&h, src, bufs, sizes, testOffset, true); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per split, want 0", allocs)
	}
}

// FuzzSplitFrame: any header and packet either split into packets whose
// sizes fit the buffers, or are refused with an error; never a panic.
func FuzzSplitFrame(f *testing.F) {
	for _, v6 := range []bool{false, true} {
		for _, proto := range []uint8{ProtoTCP, ProtoUDP} {
			h, pkt := superFrame(v6, proto, make([]byte, 3000), 1000, 0x18)
			var b [HeaderLen]byte
			h.Encode(b[:])
			f.Add(append(b[:], pkt...))
		}
	}
	bufs, sizes := testBufs(8)
	f.Fuzz(func(t *testing.T, frame []byte) {
		var h Header
		if h.Decode(frame) != nil {
			return
		}
		for _, inPlace := range []bool{false, true} {
			src := frame[HeaderLen:]
			if inPlace {
				src = bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], src)]
			}
			k, err := SplitFrame(&h, src, bufs, sizes, testOffset, inPlace)
			if err != nil {
				continue
			}
			if k < 1 || k > len(bufs) {
				t.Fatalf("%d packets from a batch of %d", k, len(bufs))
			}
			for i := 0; i < k; i++ {
				if sizes[i] < 1 || testOffset+sizes[i] > len(bufs[i]) {
					t.Fatalf("packet %d size %d", i, sizes[i])
				}
			}
		}
	})
}

func TestFinishChecksum(t *testing.T) {
	h, p := superFrame(false, ProtoTCP, make([]byte, 700), 1400, 0x18) // partial checksum, as the TUN gives it
	h.GSOType, h.GSOSize = GSONone, 0
	if err := FinishChecksum(&h, p); err != nil {
		t.Fatal(err)
	}
	if Checksum(p[20:], pseudo(p, false, ProtoTCP, len(p)-20)) != 0xffff {
		t.Fatal("checksum not complete")
	}
	for _, bad := range []Header{
		{Flags: NeedsCsum, CsumStart: 2000, CsumOffset: 16},
		{Flags: NeedsCsum, CsumStart: 20, CsumOffset: 2000},
		{Flags: NeedsCsum, CsumStart: 20, CsumOffset: 15},
	} {
		if FinishChecksum(&bad, p) == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
}

func TestSegmentAllocs(t *testing.T) {
	h, p := superFrame(false, ProtoTCP, make([]byte, 60000), 1388, 0x10)
	hdr := make([]byte, MaxHdrLen)
	if n := testing.AllocsPerRun(100, func() {
		s, err := ParseSuper(&h, p)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < s.Segs; i++ {
			s.Segment(i, hdr, false)
		}
	}); n != 0 {
		t.Fatalf("%v allocs per super-packet", n)
	}
}

// BenchmarkSegment measures header building and checksumming of a 64 KiB
// TCP super-packet (bytes are payload bytes).
func BenchmarkSegment(b *testing.B) {
	h, p := superFrame(false, ProtoTCP, make([]byte, 65535-40), 1388, 0x10)
	hdr := make([]byte, MaxHdrLen)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		s, _ := ParseSuper(&h, p)
		for i := 0; i < s.Segs; i++ {
			s.Segment(i, hdr, false)
		}
	}
}
