package overlay

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// superTCP builds a TCP super-packet as the TUN hands it over: IPv4 or
// IPv6, headers of a bulk sender (timestamps option), payload of n bytes,
// the given flags, and a partial (pseudo-header only) checksum.
func superTCP(v6 bool, n int, flags byte, seed uint64) []byte {
	l3 := 20
	if v6 {
		l3 = 40
	}
	const tcpLen = 32
	p := make([]byte, l3+tcpLen+n)
	if v6 {
		p[0] = 0x60
		binary.BigEndian.PutUint16(p[4:6], uint16(tcpLen+n))
		p[6], p[7] = protoTCP, 64
		copy(p[8:24], netip.MustParseAddr("fd00::1:2").AsSlice())
		copy(p[24:40], netip.MustParseAddr("fd00::2:2").AsSlice())
	} else {
		p[0] = 0x45
		binary.BigEndian.PutUint16(p[2:4], uint16(min(len(p), 65535)))
		binary.BigEndian.PutUint16(p[4:6], 0xfff0) // wraps during segmentation
		p[6] = 0x40                                // DF
		p[8], p[9] = 64, protoTCP
		copy(p[12:16], []byte{10, 244, 1, 2})
		copy(p[16:20], []byte{10, 244, 2, 2})
	}
	tcp := p[l3:]
	binary.BigEndian.PutUint16(tcp[0:2], 40000)
	binary.BigEndian.PutUint16(tcp[2:4], 5201)
	binary.BigEndian.PutUint32(tcp[4:8], 0xffff_f000) // wraps too
	binary.BigEndian.PutUint32(tcp[8:12], 777)
	tcp[12] = tcpLen / 4 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:16], 512)
	copy(tcp[20:32], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := l3 + tcpLen; i < len(p); i++ {
		p[i] = byte(rng.Uint32())
	}
	var acc uint16
	if v6 {
		acc = offload.PseudoSum(p[8:24], p[24:40], protoTCP, len(p)-l3)
	} else {
		acc = offload.PseudoSum(p[12:16], p[16:20], protoTCP, len(p)-l3)
	}
	binary.BigEndian.PutUint16(tcp[16:18], acc)
	return p
}

// refChecksum is the plain RFC 1071 sum, byte pair by byte pair: the
// yardstick for the router's checksums.
func refChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// checkIPv4 verifies an IPv4 header's checksum and total length.
func checkIPv4(t *testing.T, p []byte) {
	t.Helper()
	ihl := int(p[0]&0x0f) * 4
	if refChecksum(p[:ihl]) != 0xffff {
		t.Fatalf("bad IPv4 header checksum: % x", p[:ihl])
	}
	if got := int(binary.BigEndian.Uint16(p[2:4])); got != len(p) {
		t.Fatalf("IPv4 total length %d, packet is %d", got, len(p))
	}
}

// l4ChecksumOK verifies a TCP or UDP checksum of a whole packet.
func l4ChecksumOK(p []byte) bool {
	var src, dst []byte
	var l3 int
	var proto uint8
	if p[0]>>4 == 6 {
		src, dst, l3, proto = p[8:24], p[24:40], 40, p[6]
	} else {
		src, dst, l3, proto = p[12:16], p[16:20], int(p[0]&0x0f)*4, p[9]
	}
	pseudo := append(append(append([]byte{}, src...), dst...), 0, proto, byte((len(p)-l3)>>8), byte(len(p)-l3))
	return refChecksum(append(pseudo, p[l3:]...)) == 0xffff
}

// TestSegmentTCP builds every segment of TCP super-packets, as the gather
// path sends them (VXLAN header in front), and decodes each: frame header,
// IP and TCP checksums, lengths, IDs, sequence continuity, flag placement,
// the short last segment, and the payloads adding up to the original.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestSegmentTCP(t *testing.T) {
	for _, tc := range []struct {
		name  string
		v6    bool
		n     int
		mss   int
		flags byte
	}{
		{"v4 even", false, 1388 * 40, 1388, tcpACK | tcpPSH},
		{"v4 short tail", false, 1388*40 + 17, 1388, tcpACK | tcpPSH | tcpFIN | tcpCWR},
		{"v4 odd mss", false, 5000, 999, tcpACK | tcpCWR | tcpECE},
		{"v4 max", false, 65535 - 52, 1448, tcpACK},
		{"v4 one segment", false, 1000, 1388, tcpACK | tcpPSH},
		{"v6", true, 1368*30 + 5, 1368, tcpACK | tcpPSH | tcpFIN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := superTCP(tc.v6, tc.n, tc.flags, 1)
			pkt := append([]byte(nil), orig...)
			typ := uint8(offload.GSOTCPv4)
			if tc.v6 {
				typ = offload.GSOTCPv6
			}
			h := offload.Header{Flags: offload.NeedsCsum, GSOType: typ, GSOSize: uint16(tc.mss)}
			sp, err := offload.ParseSuper(&h, pkt)
			if err != nil {
				t.Fatal(err)
			}
			l3 := sp.L3Len
			if want := (tc.n + tc.mss - 1) / tc.mss; sp.Segs != want {
				t.Fatalf("segs %d, want %d", sp.Segs, want)
			}
			f := vxlan.Frame{VNI: 7, Dst: [6]byte{2, 0, 0, 0, 0, 2}, Src: [6]byte{2, 0, 0, 0, 0, 1}, EtherType: vxlan.EtherTypeIPv4}
			if tc.v6 {
				f.EtherType = vxlan.EtherTypeIPv6
			}
			var joined []byte
			hdr := make([]byte, segHdrLen)
			seq0 := binary.BigEndian.Uint32(orig[l3+4:])
			id0 := binary.BigEndian.Uint16(orig[4:6])
			for i := 0; i < sp.Segs; i++ {
				h := hdr[:vxlan.FrameHeaderLen+sp.HdrLen]
				f.Encode(h)
				payload := sp.Segment(i, h[vxlan.FrameHeaderLen:], false)
				frame := append(append([]byte(nil), h...), payload...)
				var got vxlan.Frame
				if err := got.Decode(frame); err != nil || got != f {
					t.Fatalf("segment %d: frame %+v, %v", i, got, err)
				}
				seg := frame[vxlan.FrameHeaderLen:]
				if tc.v6 {
					if pl := int(binary.BigEndian.Uint16(seg[4:6])); pl+40 != len(seg) {
						t.Fatalf("segment %d: payload length %d, packet %d", i, pl, len(seg))
					}
				} else {
					checkIPv4(t, seg)
					if id := binary.BigEndian.Uint16(seg[4:6]); id != id0+uint16(i) {
						t.Fatalf("segment %d: IP ID %d, want %d", i, id, id0+uint16(i))
					}
				}
				if !l4ChecksumOK(seg) {
					t.Fatalf("segment %d: bad TCP checksum", i)
				}
				if seq := binary.BigEndian.Uint32(seg[l3+4:]); seq != seq0+uint32(len(joined)) {
					t.Fatalf("segment %d: seq %d, want %d", i, seq, seq0+uint32(len(joined)))
				}
				last := i == sp.Segs-1
				fl := seg[l3+13]
				want := tc.flags
				if !last {
					want &^= tcpFIN | tcpPSH
				}
				if i > 0 {
					want &^= tcpCWR
				}
				if fl != want {
					t.Fatalf("segment %d: flags %#x, want %#x", i, fl, want)
				}
				if !last && len(payload) != tc.mss {
					t.Fatalf("segment %d: %d payload bytes, want %d", i, len(payload), tc.mss)
				}
				if !bytes.Equal(seg[l3+20:sp.HdrLen], orig[l3+20:sp.HdrLen]) {
					t.Fatalf("segment %d: TCP options changed", i)
				}
				joined = append(joined, payload...)
			}
			if !bytes.Equal(joined, orig[sp.HdrLen:]) {
				t.Fatal("payloads do not add up to the super-packet's")
			}
			if !bytes.Equal(pkt, orig) {
				t.Fatal("segment modified the super-packet")
			}
		})
	}
}

// TestSegmentUDP covers USO super-packets: lengths and checksums per
// datagram, payloads in order.
func TestSegmentUDP(t *testing.T) {
	const n, mss = 1200*10 + 3, 1200
	p := make([]byte, 28+n)
	p[0] = 0x45
	p[8], p[9] = 64, protoUDP
	copy(p[12:16], []byte{10, 244, 1, 2})
	copy(p[16:20], []byte{10, 244, 2, 2})
	binary.BigEndian.PutUint16(p[20:22], 1234)
	binary.BigEndian.PutUint16(p[22:24], 5678)
	for i := 28; i < len(p); i++ {
		p[i] = byte(i * 7)
	}
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOUDPL4, GSOSize: mss}
	sp, err := offload.ParseSuper(&h, p)
	if err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+2000)
	}
	sizes := make([]int, 4)
	var joined []byte
	for first := 0; first < sp.Segs; {
		k := sp.Split(first, bufs, sizes, tunOffset)
		for j := 0; j < k; j++ {
			seg := bufs[j][tunOffset : tunOffset+sizes[j]]
			checkIPv4(t, seg)
			if ul := int(binary.BigEndian.Uint16(seg[24:26])); ul != len(seg)-20 {
				t.Fatalf("UDP length %d, want %d", ul, len(seg)-20)
			}
			if !l4ChecksumOK(seg) {
				t.Fatalf("segment %d: bad UDP checksum", first+j)
			}
			joined = append(joined, seg[28:]...)
		}
		first += k
	}
	if !bytes.Equal(joined, p[28:]) {
		t.Fatal("payloads do not add up")
	}
}

// TestSplitMatchesSegment: the copying split produces the same packets as
// the gather path's headers followed by their payloads.
func TestSplitMatchesSegment(t *testing.T) {
	p := superTCP(false, 10000, tcpACK|tcpPSH, 3)
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 1400}
	sp, err := offload.ParseSuper(&h, p)
	if err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, sp.Segs)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+2000)
	}
	sizes := make([]int, sp.Segs)
	if k := sp.Split(0, bufs, sizes, tunOffset); k != sp.Segs {
		t.Fatalf("split %d of %d", k, sp.Segs)
	}
	hdr := make([]byte, offload.MaxHdrLen)
	for i := 0; i < sp.Segs; i++ {
		payload := sp.Segment(i, hdr, false)
		want := append(append([]byte(nil), hdr[:sp.HdrLen]...), payload...)
		if got := bufs[i][tunOffset : tunOffset+sizes[i]]; !bytes.Equal(got, want) {
			t.Fatalf("segment %d differs", i)
		}
	}
}

// FuzzTUNPacket feeds arbitrary virtio header + packet bytes, as read from
// the TUN, through everything the outbound fast path does with them:
// nothing may panic, and every segment of an accepted super-packet must
// fit its buffer and carry a valid L4 checksum.
func FuzzTUNPacket(f *testing.F) {
	add := func(h offload.Header, p []byte) {
		b := make([]byte, offload.HeaderLen+len(p))
		h.Encode(b)
		copy(b[offload.HeaderLen:], p)
		f.Add(b)
	}
	add(offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 500, CsumStart: 20, CsumOffset: 16}, superTCP(false, 1700, tcpACK, 1))
	add(offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv6, GSOSize: 500, CsumStart: 40, CsumOffset: 16}, superTCP(true, 1100, tcpACK|tcpFIN, 2))
	add(offload.Header{Flags: offload.NeedsCsum, CsumStart: 20, CsumOffset: 16}, superTCP(false, 100, tcpACK, 3))
	add(offload.Header{}, ipv4("10.244.1.2", "10.244.2.2", "plain"))
	hdr := make([]byte, segHdrLen)
	f.Fuzz(func(t *testing.T, b []byte) {
		var h offload.Header
		if h.Decode(b) != nil {
			return
		}
		pkt := append([]byte(nil), b[offload.HeaderLen:]...)
		if h.GSOType == offload.GSONone {
			if h.Flags&offload.NeedsCsum != 0 {
				_ = offload.FinishChecksum(&h, pkt)
			}
			return
		}
		sp, err := offload.ParseSuper(&h, pkt)
		if err != nil {
			return
		}
		if sp.Segs > 200 {
			sp.Segs = 200 // keep each run short; the arithmetic is the same
		}
		var total int
		for i := 0; i < sp.Segs; i++ {
			payload := sp.Segment(i, hdr[vxlan.FrameHeaderLen:], false)
			seg := append(append([]byte(nil), hdr[vxlan.FrameHeaderLen:vxlan.FrameHeaderLen+sp.HdrLen]...), payload...)
			if !l4ChecksumOK(seg) {
				t.Fatalf("segment %d: bad checksum", i)
			}
			total += len(payload)
		}
		if sp.Segs < 200 && total != len(pkt)-sp.HdrLen {
			t.Fatalf("payloads %d bytes, want %d", total, len(pkt)-sp.HdrLen)
		}
	})
}
