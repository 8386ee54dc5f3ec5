package overlay

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/weftnet/weft/encap/offload"
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
			typ := uint8(offload.GSOTCPv4)
			if v6 {
				typ = offload.GSOTCPv6
			}
			h := offload.Header{Flags: offload.NeedsCsum, GSOType: typ, GSOSize: 1388}
			read := make([]byte, offload.HeaderLen+len(pkt))
			h.Encode(read)
			copy(read[offload.HeaderLen:], pkt)
			flat, err := offload.ParseSuper(&h, append([]byte(nil), pkt...))
			if err != nil {
				t.Fatal(err)
			}
			var l spreadLayout
			l.set(flat.HdrLen, flat.MSS)
			if l.hdrLen == 0 {
				t.Fatal("no layout for a 1388-byte segment size")
			}
			if got := l.take(readvInto(t, &l, read), nil); got != -1 {
				t.Fatalf("v6 %v: take = %d, want the packet kept in the layout", v6, got)
			}
			if l.sp.Segs != flat.Segs || l.sp.Length != len(pkt) || l.sp.HdrLen != flat.HdrLen {
				t.Fatalf("v6 %v: spread parse %+v, want %d segments of %d bytes", v6, l.sp, flat.Segs, len(pkt))
			}
			for i := 0; i < flat.Segs; i++ {
				if !bytes.Equal(l.sp.Payload(i), flat.Payload(i)) {
					t.Fatalf("v6 %v: payload %d differs", v6, i)
				}
			}
			if v6 {
				continue // fastRouter's peer owns IPv4 pods only
			}
			send := func(sp *offload.Super) [][]byte {
				r, p := fastRouter(t)
				p.RemoteChecksum = rco
				frames, _ := sendRecorded(t, r, sp)
				return frames
			}
			want, got := send(&flat), send(&l.sp)
			if len(got) != len(want) || len(got) != flat.Segs {
				t.Fatalf("rco %v: %d frames spread, %d gathered, %d segments", rco, len(got), len(want), flat.Segs)
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
	mk := func(h offload.Header, pkt []byte) []byte {
		b := make([]byte, offload.HeaderLen+len(pkt))
		h.Encode(b)
		copy(b[offload.HeaderLen:], pkt)
		return b
	}
	udp := superTCP(false, 1000*5, 0, 3)
	udp[9] = protoUDP
	for name, read := range map[string][]byte{
		"ack":          mk(offload.Header{}, superTCP(false, 0, tcpACK, 1)[:52]),
		"other mss":    mk(offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 1000}, superTCP(false, 1000*20+3, tcpACK, 2)),
		"plain 9000":   mk(offload.Header{}, superTCP(false, 9000, tcpACK, 4)),
		"udp gso":      mk(offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOUDPL4, GSOSize: 1388}, udp),
		"ipv6 headers": mk(offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv6, GSOSize: 1388}, superTCP(true, 1388*10, tcpACK, 5)),
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
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 1388}
	seed := make([]byte, offload.HeaderLen+len(pkt))
	h.Encode(seed)
	copy(seed[offload.HeaderLen:], pkt)
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
		if sp.HdrLen != l.hdrLen || sp.MSS != l.mss || sp.Length != len(read)-offload.HeaderLen {
			t.Fatalf("kept %+v for layout %d/%d and %d bytes", sp, l.hdrLen, l.mss, len(read))
		}
		for i := 0; i < sp.Segs; i++ {
			_ = sp.Payload(i) // in bounds, or this panics
		}
		r, _ := fastRouter(t)
		fg := &fakeGather{gso: true}
		fo := &fastOut{snd: fg, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen)}
		r.sendParsed(r.table.Load(), sp, fo, r.newOutState())
	})
}
