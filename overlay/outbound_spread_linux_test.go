package overlay

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/weftnet/weft/encap/vxlan"
)

// readvInto puts b into iovs as readv(2) would and returns the count.
func readvInto(t *testing.T, l *spreadLayout, b []byte) int {
	t.Helper()
	n := 0
	for _, v := range l.iovs {
		dst := unsafe.Slice(v.Base, v.Len)
		n += copy(dst, b[n:])
		if n == len(b) {
			break
		}
	}
	if n != len(b) {
		t.Fatalf("layout holds %d of %d bytes", n, len(b))
	}
	return n
}

// A super-packet that fits the guessed layout is parsed where it was read,
// its payloads in place (IPv4 and IPv6), and sent from there: the frames are
// byte for byte those of the gathered path, with and without remote
// checksum offload.
func TestSpreadSendsSameFrames(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, rco := range []bool{false, true} {
			pkt := superTCP(v6, 1388*46+700, tcpACK|tcpPSH, 9)
			typ := uint8(gsoTCPv4)
			if v6 {
				typ = gsoTCPv6
			}
			h := virtioHdr{flags: virtioNeedsCsum, gsoType: typ, gsoSize: 1388}
			read := make([]byte, virtioHdrLen+len(pkt))
			h.encode(read)
			copy(read[virtioHdrLen:], pkt)
			flat, err := parseSuper(&h, append([]byte(nil), pkt...))
			if err != nil {
				t.Fatal(err)
			}
			var l spreadLayout
			l.set(flat.hdrLen, flat.mss)
			if l.hdrLen == 0 {
				t.Fatal("no layout for a 1388-byte segment size")
			}
			if got := l.take(readvInto(t, &l, read), nil); got != -1 {
				t.Fatalf("v6 %v: take = %d, want the packet kept in the layout", v6, got)
			}
			if l.sp.segs != flat.segs || l.sp.length != len(pkt) || l.sp.hdrLen != flat.hdrLen {
				t.Fatalf("v6 %v: spread parse %+v, want %d segments of %d bytes", v6, l.sp, flat.segs, len(pkt))
			}
			for i := 0; i < flat.segs; i++ {
				if !bytes.Equal(l.sp.payload(i), flat.payload(i)) {
					t.Fatalf("v6 %v: payload %d differs", v6, i)
				}
			}
			if v6 {
				continue // fastRouter's peer owns IPv4 pods only
			}
			send := func(sp *superPacket) [][]byte {
				r, p := fastRouter(t)
				p.RemoteChecksum = rco
				frames, _ := sendRecorded(t, r, sp)
				return frames
			}
			want, got := send(&flat), send(&l.sp)
			if len(got) != len(want) || len(got) != flat.segs {
				t.Fatalf("rco %v: %d frames spread, %d gathered, %d segments", rco, len(got), len(want), flat.segs)
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("rco %v: frame %d differs", rco, i)
				}
			}
		}
	}
}

// Whatever does not fit the guess comes back as the bytes an ordinary read
// would have given: a short packet, another segment size, a non-GSO packet
// longer than slot 0, a UDP super-packet.
func TestSpreadLinearizes(t *testing.T) {
	var l spreadLayout
	l.set(52, 1388)
	mk := func(h virtioHdr, pkt []byte) []byte {
		b := make([]byte, virtioHdrLen+len(pkt))
		h.encode(b)
		copy(b[virtioHdrLen:], pkt)
		return b
	}
	udp := superTCP(false, 1000*5, 0, 3)
	udp[9] = protoUDP
	for name, read := range map[string][]byte{
		"ack":          mk(virtioHdr{}, superTCP(false, 0, tcpACK, 1)[:52]),
		"other mss":    mk(virtioHdr{flags: virtioNeedsCsum, gsoType: gsoTCPv4, gsoSize: 1000}, superTCP(false, 1000*20+3, tcpACK, 2)),
		"plain 9000":   mk(virtioHdr{}, superTCP(false, 9000, tcpACK, 4)),
		"udp gso":      mk(virtioHdr{flags: virtioNeedsCsum, gsoType: gsoUDPL4, gsoSize: 1388}, udp),
		"ipv6 headers": mk(virtioHdr{flags: virtioNeedsCsum, gsoType: gsoTCPv6, gsoSize: 1388}, superTCP(true, 1388*10, tcpACK, 5)),
	} {
		n := readvInto(t, &l, read)
		dst := make([]byte, spreadMaxRead)
		if got := l.take(n, dst); got != len(read) || !bytes.Equal(dst[:got], read) {
			t.Fatalf("%s: take = %d, bytes equal %v", name, got, bytes.Equal(dst[:max(got, 0)], read))
		}
	}
	// Layouts that would need too many slots are not used.
	l.set(52, 100)
	if l.hdrLen != 0 {
		t.Fatal("a layout of 100-byte segments was set up")
	}
}

// FuzzSpreadTake: any bytes a read can put into the layout either come back
// unchanged as an ordinary packet, or parse as a super-packet whose every
// segment lies inside the layout and goes out without a panic.
func FuzzSpreadTake(f *testing.F) {
	pkt := superTCP(false, 1388*5+9, tcpACK, 1)
	h := virtioHdr{flags: virtioNeedsCsum, gsoType: gsoTCPv4, gsoSize: 1388}
	seed := make([]byte, virtioHdrLen+len(pkt))
	h.encode(seed)
	copy(seed[virtioHdrLen:], pkt)
	f.Add(seed, uint16(52), uint16(1388))
	f.Add(seed[:80], uint16(52), uint16(1388))
	f.Add(seed, uint16(52), uint16(1000))
	f.Add(seed, uint16(40), uint16(700))
	f.Fuzz(func(t *testing.T, read []byte, hdrLen, mss uint16) {
		var l spreadLayout
		l.set(int(hdrLen%200), int(mss))
		if l.hdrLen == 0 || len(read) > spreadMaxRead {
			return
		}
		n := readvInto(t, &l, read)
		dst := make([]byte, spreadMaxRead)
		got := l.take(n, dst)
		if got >= 0 {
			if got != len(read) || !bytes.Equal(dst[:got], read) {
				t.Fatalf("linearized %d bytes, want the %d read", got, len(read))
			}
			return
		}
		sp := &l.sp
		if sp.hdrLen != l.hdrLen || sp.mss != l.mss || sp.length != len(read)-virtioHdrLen {
			t.Fatalf("kept %+v for layout %d/%d and %d bytes", sp, l.hdrLen, l.mss, len(read))
		}
		for i := 0; i < sp.segs; i++ {
			_ = sp.payload(i) // in bounds, or this panics
		}
		r, _ := fastRouter(t)
		fg := &fakeGather{gso: true}
		fo := &fastOut{snd: fg, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen)}
		r.sendParsed(r.table.Load(), sp, fo, r.newOutState())
	})
}
