package wireguard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// testOffset is the device's headroom in front of a packet.
const testOffset = 16

// superFrame builds what the TUN hands over for a TCP (proto 6) or UDP
// super-packet of payload bytes cut at mss: the virtio header (GSO type,
// NEEDS_CSUM at the L4 checksum) and the packet, whose L4 checksum field
// holds only the pseudo-header sum, as the kernel leaves it.
func superFrame(v6 bool, proto uint8, payload []byte, mss int, tcpFlagsIn uint8) (virtioHdr, []byte) {
	l3 := 20
	if v6 {
		l3 = ip6HdrLen
	}
	l4 := udpHdr
	if proto == protoTCP {
		l4 = 20
	}
	pkt := make([]byte, l3+l4+len(payload))
	if v6 {
		pkt[0] = 0x60
		binary.BigEndian.PutUint16(pkt[ip6PayloadLen:], uint16(l4+len(payload)))
		pkt[ip6Next] = proto
		pkt[7] = 64
		copy(pkt[ip6Src:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
		copy(pkt[ip6Src+16:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	} else {
		pkt[0] = 0x45
		binary.BigEndian.PutUint16(pkt[ip4TotalLen:], uint16(len(pkt)))
		binary.BigEndian.PutUint16(pkt[ip4ID:], 0xfff0)
		pkt[ip4FragOff] = 0x40 // DF
		pkt[8] = 64
		pkt[ip4Proto] = proto
		copy(pkt[ip4Src:], []byte{10, 244, 1, 5, 10, 244, 2, 7})
		binary.BigEndian.PutUint16(pkt[ip4Csum:], ^checksum.Checksum(pkt[:20], 0))
	}
	h := pkt[l3:]
	binary.BigEndian.PutUint16(h[0:], 40000)
	binary.BigEndian.PutUint16(h[2:], 5201)
	at := udpCsum
	gso := uint8(gsoUDPL4)
	if proto == protoTCP {
		binary.BigEndian.PutUint32(h[tcpSeq:], 0xfffff000) // wraps
		h[tcpOff] = 5 << 4
		h[tcpFlags] = tcpFlagsIn
		binary.BigEndian.PutUint16(h[14:], 512)
		at = tcpCsum
		gso = gsoTCPv4
		if v6 {
			gso = gsoTCPv6
		}
	} else {
		binary.BigEndian.PutUint16(h[udpLen:], uint16(l4+len(payload)))
	}
	copy(pkt[l3+l4:], payload)
	binary.BigEndian.PutUint16(h[at:], pseudoSum(pkt, v6, proto, len(h)))
	return virtioHdr{flags: virtioNeedsCsum, gsoType: gso, hdrLen: uint16(l3 + l4), gsoSize: uint16(mss), csumStart: uint16(l3), csumOffset: uint16(at)}, pkt
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
		l3 = ip6HdrLen
		if int(binary.BigEndian.Uint16(pkt[ip6PayloadLen:]))+ip6HdrLen != len(pkt) {
			t.Fatalf("IPv6 payload length %d, packet %d", binary.BigEndian.Uint16(pkt[ip6PayloadLen:]), len(pkt))
		}
	} else {
		if int(binary.BigEndian.Uint16(pkt[ip4TotalLen:])) != len(pkt) {
			t.Fatalf("IPv4 total length %d, packet %d", binary.BigEndian.Uint16(pkt[ip4TotalLen:]), len(pkt))
		}
		if checksum.Checksum(pkt[:20], 0) != 0xffff {
			t.Fatal("IPv4 header checksum wrong")
		}
	}
	l4 = pkt[l3:]
	if checksum.Checksum(l4, pseudoSum(pkt, v6, proto, len(l4))) != 0xffff {
		t.Fatal("L4 checksum wrong")
	}
	hl := udpHdr
	if proto == protoTCP {
		hl = int(l4[tcpOff]>>4) * 4
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
		{"tcp4 in place", false, protoTCP, 65000, 1368, true},
		{"tcp4 copied", false, protoTCP, 65000, 1368, false},
		{"tcp6 in place", true, protoTCP, 30001, 1348, true},
		{"udp4 in place", false, protoUDP, 13920, 1392, true},
		{"udp6 odd tail", true, protoUDP, 5001, 1000, true},
		{"tcp4 one segment", false, protoTCP, 500, 1368, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, pkt := superFrame(tc.v6, tc.proto, payload[:tc.n], tc.mss, tcpFIN|tcpPSH|tcpCWR|0x10)
			bufs, sizes := testBufs(64)
			src := pkt
			if tc.inPlace {
				src = bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
			}
			k, err := splitFrame(&h, src, bufs, sizes, testOffset, tc.inPlace)
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
				if tc.proto == protoTCP {
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
	h, pkt := superFrame(false, protoUDP, []byte("hello, pod"), 1400, 0)
	h.gsoType, h.gsoSize = gsoNone, 0
	bufs, sizes := testBufs(1)
	src := bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
	k, err := splitFrame(&h, src, bufs, sizes, testOffset, true)
	if err != nil || k != 1 || sizes[0] != len(pkt) {
		t.Fatalf("split = %d, %v; size %d, want 1 packet of %d", k, err, sizes[0], len(pkt))
	}
	checkSegment(t, bufs[0][testOffset:testOffset+sizes[0]], false, protoUDP)

	// Without NEEDS_CSUM the packet is left exactly as read.
	h.flags = 0
	src = bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
	if k, err := splitFrame(&h, src, bufs, sizes, testOffset, true); err != nil || k != 1 || !bytes.Equal(bufs[0][testOffset:testOffset+sizes[0]], pkt) {
		t.Fatalf("split = %d, %v: packet changed", k, err)
	}
}

func TestSplitFrameMalformed(t *testing.T) {
	good, pkt := superFrame(false, protoTCP, make([]byte, 5000), 1000, 0x10)
	for _, tc := range []struct {
		name string
		edit func(h *virtioHdr, p []byte) []byte
		bufs int
		want error
	}{
		{"zero mss", func(h *virtioHdr, p []byte) []byte { h.gsoSize = 0; return p }, 8, errBadFrame},
		{"unknown gso type", func(h *virtioHdr, p []byte) []byte { h.gsoType = 3; return p }, 8, errBadFrame},
		{"tcp6 type on ipv4", func(h *virtioHdr, p []byte) []byte { h.gsoType = gsoTCPv6; return p }, 8, errBadFrame},
		{"udp type on tcp", func(h *virtioHdr, p []byte) []byte { h.gsoType = gsoUDPL4; return p }, 8, errBadFrame},
		{"ip version 5", func(h *virtioHdr, p []byte) []byte { p[0] = 0x55; return p }, 8, errBadFrame},
		{"short ihl", func(h *virtioHdr, p []byte) []byte { p[0] = 0x44; return p }, 8, errBadFrame},
		{"fragment", func(h *virtioHdr, p []byte) []byte { p[ip4FragOff] = 0x20; return p }, 8, errBadFrame},
		{"tcp data offset 4", func(h *virtioHdr, p []byte) []byte { p[20+tcpOff] = 4 << 4; return p }, 8, errBadFrame},
		{"tcp data offset past the end", func(h *virtioHdr, p []byte) []byte { p[20+tcpOff] = 15 << 4; return p[:50] }, 8, errBadFrame},
		{"headers only", func(h *virtioHdr, p []byte) []byte { return p[:40] }, 8, errBadFrame},
		{"truncated ip", func(h *virtioHdr, p []byte) []byte { return p[:10] }, 8, errBadFrame},
		{"mss over 64k", func(h *virtioHdr, p []byte) []byte { h.gsoSize = 65500; return p }, 8, errBadFrame},
		{"more segments than buffers", func(h *virtioHdr, p []byte) []byte { return p }, 4, errTooManySegments},
		{"no buffers", func(h *virtioHdr, p []byte) []byte { return p }, 0, errTooManySegments},
		{"csum start past the end", func(h *virtioHdr, p []byte) []byte {
			h.gsoType, h.csumStart = gsoNone, 6000
			return p
		}, 8, errBadFrame},
		{"odd csum offset", func(h *virtioHdr, p []byte) []byte { h.gsoType, h.csumOffset = gsoNone, 7; return p }, 8, errBadFrame},
		{"empty lone packet", func(h *virtioHdr, p []byte) []byte { h.gsoType = gsoNone; return p[:0] }, 8, errBadFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := good
			p := tc.edit(&h, bytes.Clone(pkt))
			bufs, sizes := testBufs(tc.bufs)
			if _, err := splitFrame(&h, p, bufs, sizes, testOffset, false); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVirtioHdrRoundTrip(t *testing.T) {
	h := virtioHdr{flags: virtioNeedsCsum, gsoType: gsoTCPv6 | gsoECN, hdrLen: 72, gsoSize: 1348, csumStart: 40, csumOffset: 16}
	var b [virtioHdrLen]byte
	h.encode(b[:])
	var got virtioHdr
	if err := got.decode(b[:]); err != nil || got != h {
		t.Fatalf("decode = %+v, %v; want %+v", got, err, h)
	}
	if err := got.decode(b[:virtioHdrLen-1]); err == nil {
		t.Fatal("short header decoded")
	}
}

func TestSplitFrameZeroAllocs(t *testing.T) {
	h, pkt := superFrame(false, protoTCP, make([]byte, 60000), 1368, 0x10)
	bufs, sizes := testBufs(64)
	allocs := testing.AllocsPerRun(50, func() {
		src := bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], pkt)]
		if _, err := splitFrame(&h, src, bufs, sizes, testOffset, true); err != nil {
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
		for _, proto := range []uint8{protoTCP, protoUDP} {
			h, pkt := superFrame(v6, proto, make([]byte, 3000), 1000, 0x18)
			var b [virtioHdrLen]byte
			h.encode(b[:])
			f.Add(append(b[:], pkt...))
		}
	}
	bufs, sizes := testBufs(8)
	f.Fuzz(func(t *testing.T, frame []byte) {
		var h virtioHdr
		if h.decode(frame) != nil {
			return
		}
		for _, inPlace := range []bool{false, true} {
			src := frame[virtioHdrLen:]
			if inPlace {
				src = bufs[0][testOffset : testOffset+copy(bufs[0][testOffset:], src)]
			}
			k, err := splitFrame(&h, src, bufs, sizes, testOffset, inPlace)
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
