package overlay

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// segmentsOf cuts a TCP super-packet into finished VXLAN frames, as a weft
// or kernel sender puts them on the wire.
func segmentsOf(t testing.TB, v6 bool, n, mss int, flags byte, seed uint64) [][]byte {
	return segmentsOfRCO(t, false, v6, n, mss, flags, seed)
}

// segmentsOfRCO is segmentsOf, with remote checksum offload if rco: the
// frames a weft sender puts on the wire for a peer that takes it.
func segmentsOfRCO(t testing.TB, rco, v6 bool, n, mss int, flags byte, seed uint64) [][]byte {
	t.Helper()
	p := superTCP(v6, n, flags, seed)
	typ := uint8(offload.GSOTCPv4)
	if v6 {
		typ = offload.GSOTCPv6
	}
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: typ, GSOSize: uint16(mss)}
	sp, err := offload.ParseSuper(&h, p)
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	hdr := make([]byte, segHdrLen)
	f := vxlan.Frame{VNI: 1, EtherType: vxlan.EtherTypeFor(p)}
	if rco {
		f.CsumStart = vxlan.EthernetLen + sp.L3Len
	}
	for i := 0; i < sp.Segs; i++ {
		h := hdr[:vxlan.FrameHeaderLen+sp.HdrLen]
		f.Encode(h)
		payload := sp.Segment(i, h[vxlan.FrameHeaderLen:], rco)
		frames = append(frames, append(append([]byte(nil), h...), payload...))
	}
	return frames
}

// unwrite turns a coalescer write back into what the kernel sees: the
// virtio header and the whole packet.
func unwrite(c *coalescer, w offload.Write) (offload.Header, []byte) {
	var h offload.Header
	if err := h.Decode(w.Head); err != nil {
		panic(err)
	}
	pkt := append([]byte(nil), w.Head[offload.HeaderLen:]...)
	for _, p := range c.Payloads[w.Lo:w.Hi] {
		pkt = append(pkt, p...)
	}
	return h, pkt
}

// kernelSegments checks a coalesced write the way the kernel treats it,
// and re-segments it: it verifies the virtio header against the packet,
// finishes the checksum as a NIC would (NEEDS_CSUM) and returns the
// segments the kernel's TSO would make, each with a valid checksum.
func kernelAccepts(t *testing.T, h offload.Header, pkt []byte) []byte {
	t.Helper()
	if h.GSOType == offload.GSONone {
		if h != (offload.Header{}) {
			t.Fatalf("plain write with header %+v", h)
		}
		if !l4ChecksumOK(pkt) {
			t.Fatal("plain write with a bad checksum")
		}
		return pkt
	}
	if h.Flags != offload.NeedsCsum {
		t.Fatalf("GSO write without NEEDS_CSUM: %+v", h)
	}
	v6 := pkt[0]>>4 == 6
	l3 := 20
	if v6 {
		l3 = 40
		if h.GSOType != offload.GSOTCPv6 || int(binary.BigEndian.Uint16(pkt[4:6]))+40 != len(pkt) {
			t.Fatalf("v6 GSO header %+v, packet %d bytes", h, len(pkt))
		}
	} else {
		checkIPv4(t, pkt)
		if h.GSOType != offload.GSOTCPv4 {
			t.Fatalf("v4 GSO type %d", h.GSOType)
		}
	}
	doff := int(pkt[l3+12]>>4) * 4
	if int(h.CsumStart) != l3 || h.CsumOffset != 16 || int(h.HdrLen) != l3+doff {
		t.Fatalf("header %+v for l3 %d tcp %d", h, l3, doff)
	}
	// The field holds the pseudo-header sum: finishing it over the
	// segment must give a valid checksum.
	q := append([]byte(nil), pkt...)
	if err := offload.FinishChecksum(&h, q); err != nil {
		t.Fatal(err)
	}
	if !l4ChecksumOK(q) {
		t.Fatal("coalesced packet: checksum not accepted")
	}
	// And the kernel's TSO must be able to cut it again.
	sp, err := offload.ParseSuper(&h, pkt)
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, offload.MaxHdrLen)
	for i := 0; i < sp.Segs; i++ {
		payload := sp.Segment(i, hdr, false)
		seg := append(append([]byte(nil), hdr[:sp.HdrLen]...), payload...)
		if !l4ChecksumOK(seg) {
			t.Fatalf("re-segment %d: bad checksum", i)
		}
	}
	return pkt
}

// TestCoalesceRuns: one flow's segments become one GSO write that the
// kernel accepts and whose payload is the stream's, in order.
func TestCoalesceRuns(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		frames := segmentsOf(t, v6, 1388*30+100, 1388, tcpACK|tcpPSH, 1)
		var c coalescer
		c.Reset()
		for _, f := range frames {
			c.add(f)
		}
		c.Flush()
		if len(c.Writes) != 1 || c.Writes[0].Segs != 31 {
			t.Fatalf("v6=%v: %d writes, first of %d segments; want 1 of 31", v6, len(c.Writes), c.Writes[0].Segs)
		}
		h, pkt := unwrite(&c, c.Writes[0])
		pkt = kernelAccepts(t, h, pkt)
		if int(h.GSOSize) != 1388 {
			t.Fatalf("gso_size %d", h.GSOSize)
		}
		l3 := 20
		if v6 {
			l3 = 40
		}
		if pkt[l3+13] != tcpACK|tcpPSH {
			t.Fatalf("flags %#x, want ACK|PSH from the last segment", pkt[l3+13])
		}
		want := superTCP(v6, 1388*30+100, tcpACK|tcpPSH, 1)
		if !bytes.Equal(pkt[l3+32:], want[l3+32:]) {
			t.Fatal("coalesced payload differs from the stream")
		}
	}
}

// TestCoalesceSplits: any mismatch or gap ends a run; nothing is lost,
// reordered or merged wrongly.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestCoalesceSplits(t *testing.T) {
	type mod func(frames [][]byte)
	inner := func(f []byte) []byte { return f[vxlan.FrameHeaderLen:] }
	// refix recomputes the TCP checksum (and IPv4 header checksum) after a
	// header change, so that only the intended difference remains.
	refix := func(f []byte) {
		p := inner(f)
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:12], ^offload.Checksum(p[:20], 0))
		p[36], p[37] = 0, 0
		binary.BigEndian.PutUint16(p[36:38], ^offload.Checksum(p[20:], offload.PseudoSum(p[12:16], p[16:20], protoTCP, len(p)-20)))
	}
	cases := []struct {
		name string
		mod  mod
		want []int // segments per write
	}{
		{"none", func([][]byte) {}, []int{6}},
		{"seq gap", func(fr [][]byte) {
			p := inner(fr[3])
			binary.BigEndian.PutUint32(p[24:28], binary.BigEndian.Uint32(p[24:28])+1)
			refix(fr[3])
		}, []int{3, 1, 2}},
		{"ack differs", func(fr [][]byte) { inner(fr[2])[31]++; refix(fr[2]) }, []int{2, 1, 3}},
		{"window differs", func(fr [][]byte) { inner(fr[4])[35]++; refix(fr[4]) }, []int{4, 1, 1}},
		{"option differs", func(fr [][]byte) { inner(fr[1])[51]++; refix(fr[1]) }, []int{1, 1, 4}},
		{"tos differs", func(fr [][]byte) { inner(fr[3])[1] = 1; refix(fr[3]) }, []int{3, 1, 2}},
		{"ttl differs", func(fr [][]byte) { inner(fr[3])[8]--; refix(fr[3]) }, []int{3, 1, 2}},
		{"other flow", func(fr [][]byte) { inner(fr[3])[21]++; refix(fr[3]) }, []int{3, 1, 2}},
		{"psh mid-run", func(fr [][]byte) { inner(fr[2])[33] |= tcpPSH; refix(fr[2]) }, []int{3, 3}},
		{"fin", func(fr [][]byte) { inner(fr[2])[33] |= tcpFIN; refix(fr[2]) }, []int{2, 1, 3}},
		{"syn", func(fr [][]byte) { inner(fr[0])[33] |= tcpSYN; refix(fr[0]) }, []int{1, 5}},
		{"rst", func(fr [][]byte) { inner(fr[5])[33] |= tcpRST; refix(fr[5]) }, []int{5, 1}},
		{"urg", func(fr [][]byte) { inner(fr[3])[33] |= tcpURG; refix(fr[3]) }, []int{3, 1, 2}},
		{"cwr", func(fr [][]byte) { inner(fr[3])[33] |= tcpCWR; refix(fr[3]) }, []int{3, 1, 2}},
		{"ece everywhere", func(fr [][]byte) {
			for _, f := range fr {
				inner(f)[33] |= tcpECE
				refix(f)
			}
		}, []int{6}},
		{"bad checksum mid", func(fr [][]byte) { inner(fr[3])[60] ^= 0xff }, []int{3, 1, 2}},
		{"bad checksum head", func(fr [][]byte) { inner(fr[0])[60] ^= 0xff }, []int{1, 5}},
		{"fragment", func(fr [][]byte) { inner(fr[3])[6] |= 0x20; refix(fr[3]) }, []int{3, 1, 2}},
		{"ip length short of frame", func(fr [][]byte) {
			p := inner(fr[3])
			binary.BigEndian.PutUint16(p[2:4], uint16(len(p)-1))
			refix(fr[3])
		}, []int{3, 1, 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frames := segmentsOf(t, false, 1000*6, 1000, tcpACK, 2)
			tc.mod(frames)
			orig := make([][]byte, len(frames))
			for i, f := range frames {
				orig[i] = append([]byte(nil), inner(f)...)
			}
			var c coalescer
			c.Reset()
			for _, f := range frames {
				c.add(f)
			}
			c.Flush()
			var got []int
			k := 0
			for _, w := range c.Writes {
				got = append(got, w.Segs)
				h, pkt := unwrite(&c, w)
				if w.Segs == 1 {
					if h != (offload.Header{}) || !bytes.Equal(pkt, orig[k]) {
						t.Fatalf("single write %d changed: %+v", k, h)
					}
				} else {
					kernelAccepts(t, h, pkt)
					var want []byte
					for _, o := range orig[k : k+w.Segs] {
						want = append(want, o[52:]...)
					}
					if !bytes.Equal(pkt[52:], want) {
						t.Fatalf("run at %d: payload differs", k)
					}
				}
				k += w.Segs
			}
			if k != len(frames) {
				t.Fatalf("%d segments written, want %d", k, len(frames))
			}
			if !equalInts(got, tc.want) {
				t.Fatalf("writes %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCoalesceRCO: frames with remote checksum offload carry partial
// checksums; a run of them becomes one GSO write as always, and one alone a
// write whose virtio header asks the kernel to finish its checksum. Either
// way the kernel's segments come out with valid checksums, the same bytes
// as if the sender had summed them.
func TestCoalesceRCO(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		full := segmentsOf(t, v6, 1000*5+300, 1000, tcpACK, 3)
		frames := segmentsOfRCO(t, true, v6, 1000*5+300, 1000, tcpACK, 3)
		if l4ChecksumOK(frames[1][vxlan.FrameHeaderLen:]) {
			t.Fatal("RCO segment has a complete checksum; want partial")
		}
		// A run: frames 0..4, then 5 alone after a gap.
		var c coalescer
		c.Reset()
		c.Trusted = true
		for _, f := range frames[:5] {
			c.add(f)
		}
		c.Flush()
		c.add(frames[5])
		c.Flush()
		if len(c.Writes) != 2 || c.Writes[0].Segs != 5 || c.Writes[1].Segs != 1 {
			t.Fatalf("v6 %v: writes %+v, want a run of 5 and one alone", v6, c.Writes)
		}
		h, pkt := unwrite(&c, c.Writes[0])
		kernelAccepts(t, h, pkt)
		sp, err := offload.ParseSuper(&h, pkt)
		if err != nil || sp.Segs != 5 {
			t.Fatalf("v6 %v: run does not parse as 5 segments: %v", v6, err)
		}
		hdr := make([]byte, offload.MaxHdrLen)
		for i := 0; i < sp.Segs; i++ {
			payload := sp.Segment(i, hdr, false)
			seg := append(append([]byte(nil), hdr[:sp.HdrLen]...), payload...)
			if !bytes.Equal(seg, full[i][vxlan.FrameHeaderLen:]) {
				t.Fatalf("v6 %v: run segment %d differs from the fully summed one", v6, i)
			}
		}
		h, pkt = unwrite(&c, c.Writes[1])
		if h.Flags != offload.NeedsCsum || h.GSOType != offload.GSONone || h.CsumOffset != 16 {
			t.Fatalf("v6 %v: lone RCO write header %+v", v6, h)
		}
		if err := offload.FinishChecksum(&h, pkt); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(pkt, full[5][vxlan.FrameHeaderLen:]) {
			t.Fatalf("v6 %v: lone segment, finished, differs from the fully summed one", v6)
		}
	}
}

// TestCoalesceTrusted: under a verified outer checksum (Peer.OuterChecksum)
// inner TCP checksums are not checked again; where the trust changes within
// a run, every segment that did not come under it is still checked, the
// run's head included.
func TestCoalesceTrusted(t *testing.T) {
	inner := func(f []byte) []byte { return f[vxlan.FrameHeaderLen:] }
	cases := []struct {
		name    string
		bad     int    // frame whose TCP checksum is broken
		trusted []bool // per frame: c.Trusted while it is added
		want    []int
	}{
		{"all trusted", 3, []bool{true, true, true, true, true, true}, []int{6}},
		{"none trusted", 3, []bool{false, false, false, false, false, false}, []int{3, 1, 2}},
		{"trust ends before the bad one", 4, []bool{true, true, true, false, false, false}, []int{4, 1, 1}},
		{"untrusted bad head, trusted rest", 0, []bool{false, true, true, true, true, true}, []int{1, 5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frames := segmentsOf(t, false, 1000*6, 1000, tcpACK, 2)
			inner(frames[tc.bad])[60] ^= 0xff
			var c coalescer
			c.Reset()
			for i, f := range frames {
				c.Trusted = tc.trusted[i]
				c.add(f)
			}
			c.Flush()
			var got []int
			for _, w := range c.Writes {
				got = append(got, w.Segs)
				if w.Segs > 1 {
					h, pkt := unwrite(&c, w)
					kernelAccepts(t, h, pkt)
				}
			}
			if !equalInts(got, tc.want) {
				t.Fatalf("writes %v, want %v", got, tc.want)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestCoalesceLimits: runs stop at offload.MaxRunSegs segments and 64 KiB.
func TestCoalesceLimits(t *testing.T) {
	frames := segmentsOf(t, false, 100*(offload.MaxRunSegs+10), 100, tcpACK, 3)
	var c coalescer
	c.Reset()
	for _, f := range frames {
		c.add(f)
	}
	c.Flush()
	if len(c.Writes) != 2 || c.Writes[0].Segs != offload.MaxRunSegs {
		t.Fatalf("writes of %d and ...; want the first of %d", c.Writes[0].Segs, offload.MaxRunSegs)
	}
	frames = segmentsOf(t, false, 1448*60, 1448, tcpACK, 4)
	c.Reset()
	for _, f := range frames {
		c.add(f)
	}
	c.Flush()
	for _, w := range c.Writes {
		h, pkt := unwrite(&c, w)
		if len(pkt) > 65535 {
			t.Fatalf("run of %d bytes", len(pkt))
		}
		kernelAccepts(t, h, pkt)
	}
	if len(c.Writes) != 2 {
		t.Fatalf("%d writes, want 2", len(c.Writes))
	}
}

// TestCoalesceOthersUntouched: non-TCP packets, pure ACKs and IPv4 with
// options pass as single writes, byte for byte.
func TestCoalesceOthersUntouched(t *testing.T) {
	udp := ipv4("10.244.1.2", "10.244.2.2", "hello")
	ack := superTCP(false, 0, tcpACK, 5)
	frame := func(p []byte) []byte { return append(make([]byte, vxlan.FrameHeaderLen), p...) }
	var c coalescer
	c.Reset()
	for _, p := range [][]byte{udp, ack, ack, udp} {
		c.add(frame(p))
	}
	c.Flush()
	if len(c.Writes) != 4 {
		t.Fatalf("%d writes, want 4", len(c.Writes))
	}
	for i, w := range c.Writes {
		h, pkt := unwrite(&c, w)
		if h != (offload.Header{}) || w.Segs != 1 || w.Hi != w.Lo {
			t.Fatalf("write %d: %+v", i, w)
		}
		if want := [][]byte{udp, ack, ack, udp}[i]; !bytes.Equal(pkt, want) {
			t.Fatalf("write %d changed", i)
		}
	}
}

// TestInboundGROCountsBadFrames runs received GRO buffers through the
// inbound validation: every bad datagram counts under its reason, good
// ones reach the coalescer.
func TestInboundGROCountsBadFrames(t *testing.T) {
	r := New(Config{VNI: 1, LocalMAC: [6]byte{2, 0, 0, 0, 0, 2}, PodCIDRs: testPodCIDRs}, nil, nil)
	peer := Peer{Name: "a", Underlay: netip.MustParseAddrPort("192.0.2.11:4789"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, VTEPMAC: [6]byte{2, 0, 0, 0, 0, 1}}
	r.table.Store(newTable([]*peerEntry{{Peer: peer, pmtu: &pathMTU{}}}))
	frames := segmentsOf(t, false, 1000*8, 1000, tcpACK, 6)
	hdr := vxlan.Frame{VNI: 1, Dst: r.cfg.LocalMAC, Src: peer.VTEPMAC, EtherType: vxlan.EtherTypeIPv4}
	for _, f := range frames {
		hdr.Encode(f)
	}
	frames[1][0] = 0x0c                     // flags
	frames[2][6]++                          // VNI
	frames[3][8]++                          // dst MAC
	frames[4][vxlan.FrameHeaderLen+15] = 9  // source 10.244.1.9 is fine ...
	frames[5][vxlan.FrameHeaderLen+12] = 11 // ... 11.244.1.2 is not
	for _, f := range frames[4:6] {
		offload.PutIPv4Checksum(f[vxlan.FrameHeaderLen : vxlan.FrameHeaderLen+20])
	}
	// The coalescer writes its virtio headers into the buffer: each
	// pass gets a fresh copy.
	fresh := func() []byte {
		var buf []byte
		for _, f := range frames {
			buf = append(buf, f...)
		}
		return buf
	}
	buf := fresh()
	seg := len(frames[0])
	var c coalescer
	var counts batchCounts
	c.Reset()
	r.decapsulateGRO(r.table.Load(), buf, seg, netip.MustParseAddr("192.0.2.11"), &c, &counts)
	c.Flush()
	for v, want := range map[verdict]uint64{dropFlags: 1, dropVNI: 1, dropDstMAC: 1, dropSpoofedSource: 1} {
		if counts.drops[v] != want {
			t.Errorf("%s = %d, want %d", verdictNames[v], counts.drops[v], want)
		}
	}
	if counts.packets != 4 {
		t.Fatalf("%d packets passed, want 4", counts.packets)
	}
	// From an unknown sender, everything drops.
	counts.reset()
	c.Reset()
	buf = fresh()
	r.decapsulateGRO(r.table.Load(), buf[:seg*2], seg, netip.MustParseAddr("192.0.2.99"), &c, &counts)
	if counts.drops[dropUnknownPeer] != 1 || counts.drops[dropFlags] != 1 || counts.packets != 0 {
		t.Fatalf("unknown sender: %+v", counts)
	}
	// A buffer cut short: the tail is counted short.
	counts.reset()
	c.Reset()
	buf = fresh()
	r.decapsulateGRO(r.table.Load(), buf[6*seg:7*seg+10], seg, netip.MustParseAddr("192.0.2.11"), &c, &counts)
	if counts.drops[dropShort] != 1 || counts.packets != 1 {
		t.Fatalf("short tail: %+v", counts)
	}
}

// FuzzCoalesce feeds arbitrary received buffers through the inbound path's
// validation and coalescer: nothing may panic, every byte that passed comes
// out once, and every GSO write is one the kernel accepts.
func FuzzCoalesce(f *testing.F) {
	frames := segmentsOf(f, false, 300*3, 300, tcpACK, 7)
	rco := segmentsOfRCO(f, true, false, 300*3, 300, tcpACK, 7)
	var seed, seedRCO []byte
	hdr := vxlan.Frame{VNI: 1, Dst: [6]byte{2, 0, 0, 0, 0, 2}, EtherType: vxlan.EtherTypeIPv4}
	for i, fr := range frames {
		hdr.Encode(fr)
		seed = append(seed, fr...)
		hdr.CsumStart = vxlan.EthernetLen + 20
		hdr.Encode(rco[i])
		hdr.CsumStart = 0
		seedRCO = append(seedRCO, rco[i]...)
	}
	f.Add(seed, uint16(len(frames[0])))
	f.Add(seedRCO, uint16(len(frames[0])))
	f.Add(seedRCO[:len(rco[0])], uint16(0))
	f.Add(seed[:100], uint16(40))
	f.Add([]byte{}, uint16(0))
	// Every input goes to a router whose peer is a weft node (outer
	// checksums: inner ones trusted, RCO taken) and to one whose peer is
	// not.
	var routers [2]*Router
	for i, weft := range []bool{false, true} {
		r := New(Config{VNI: 1, LocalMAC: [6]byte{2, 0, 0, 0, 0, 2}, PodCIDRs: testPodCIDRs}, nil, nil)
		peer := Peer{Name: "a", Underlay: netip.MustParseAddrPort("192.0.2.11:4789"),
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, OuterChecksum: weft}
		r.table.Store(newTable([]*peerEntry{{Peer: peer, pmtu: &pathMTU{}}}))
		routers[i] = r
	}
	from := netip.MustParseAddr("192.0.2.11")
	f.Fuzz(func(t *testing.T, b []byte, seg uint16) {
		for _, r := range routers {
			b := append([]byte(nil), b...) // the coalescer writes in place
			var c coalescer
			var counts batchCounts
			c.Reset()
			r.decapsulateGRO(r.table.Load(), b, int(seg), from, &c, &counts)
			c.Flush()
			var n uint64
			for _, w := range c.Writes {
				n += uint64(w.Segs)
				h, pkt := unwrite(&c, w)
				switch {
				case w.Segs > 1:
					kernelAccepts(t, h, pkt)
				case h == (offload.Header{}):
				case h.Flags == offload.NeedsCsum && h.GSOType == offload.GSONone:
					// A lone RCO segment: the checksum must start at
					// its L4 header, which must be whole.
					v6 := pkt[0]>>4 == 6
					l3 := 40
					if !v6 {
						l3 = int(pkt[0]&0x0f) * 4
					}
					if int(h.CsumStart) != l3 || int(h.CsumStart+h.CsumOffset)+2 > len(pkt) {
						t.Fatalf("lone RCO write header %+v for a %d-byte packet", h, len(pkt))
					}
				default:
					t.Fatalf("single write with header %+v", h)
				}
			}
			if n+uint64(c.Dropped) != counts.packets {
				t.Fatalf("%d segments written, %d passed", n, counts.packets)
			}
		}
	})
}

func TestCoalesceAllocs(t *testing.T) {
	frames := segmentsOf(t, false, 1388*40, 1388, tcpACK, 8)
	var c coalescer
	c.Reset()
	for _, f := range frames {
		c.add(f)
	}
	c.Flush() // grows the slices once
	if n := testing.AllocsPerRun(100, func() {
		c.Reset()
		for _, f := range frames {
			c.add(f)
		}
		c.Flush()
	}); n != 0 {
		t.Fatalf("%v allocs per batch", n)
	}
}

// BenchmarkCoalesce measures validation-free coalescing (checksum checks
// included) of a 40-segment burst; bytes are payload bytes.
func BenchmarkCoalesce(b *testing.B) {
	frames := segmentsOf(b, false, 1388*40, 1388, tcpACK, 9)
	saved := make([][]byte, len(frames))
	for i, f := range frames {
		saved[i] = append([]byte(nil), f...)
	}
	var c coalescer
	b.SetBytes(1388 * 40)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i, f := range frames {
			copy(f, saved[i]) // closeRun rewrote the head's headers
		}
		b.StartTimer()
		c.Reset()
		for _, f := range frames {
			c.add(f)
		}
		c.Flush()
	}
}

// TestCoalesceUDPRuns: with USO (coalescer.UDP), the datagrams of one UDP
// flow in consecutive VXLAN frames become one UDP GSO write that the kernel
// cuts back into the same datagrams; one with a bad checksum (VXLAN is not
// trusted) breaks the run and goes alone, for the kernel to drop; without
// USO every datagram goes alone.
func TestCoalesceUDPRuns(t *testing.T) {
	payload := func(i int) string { return strings.Repeat(string(rune('a'+i)), 1364) }
	frames := func() [][]byte {
		var fs [][]byte
		for i := 0; i < 12; i++ {
			fs = append(fs, frameOf(udp4("10.244.1.2", "10.244.2.2", 40000, 5201, payload(i))))
		}
		return fs
	}
	var c coalescer
	c.UDP = true
	c.Reset()
	fs := frames()
	for _, f := range fs {
		c.add(f)
	}
	c.Flush()
	if len(c.Writes) != 1 || c.Writes[0].Segs != 12 {
		t.Fatalf("writes %+v; want 1 of 12 datagrams", c.Writes)
	}
	h, pkt := unwrite(&c, c.Writes[0])
	if h.GSOType != offload.GSOUDPL4 || h.GSOSize != 1364 || h.Flags&offload.NeedsCsum == 0 {
		t.Fatalf("header %+v: want UDP GSO of 1364-byte payloads, checksum to finish", h)
	}
	// One IP and UDP header, then the payloads one after another.
	if got, want := len(pkt), 28+12*1364; got != want {
		t.Fatalf("run of %d bytes, want %d", got, want)
	}
	for i := 0; i < 12; i++ {
		if got := string(pkt[28+i*1364 : 28+(i+1)*1364]); got != payload(i) {
			t.Fatalf("datagram %d's payload differs", i)
		}
	}

	// A corrupted datagram in the middle: three writes, the bad one alone
	// and unchanged.
	fs = frames()
	fs[5][len(fs[5])-1] ^= 0xff
	bad := append([]byte(nil), fs[5][vxlan.FrameHeaderLen:]...)
	c.Reset()
	for _, f := range fs {
		c.add(f)
	}
	c.Flush()
	if len(c.Writes) != 3 || c.Writes[0].Segs != 5 || c.Writes[1].Segs != 1 || c.Writes[2].Segs != 6 {
		t.Fatalf("%d writes %+v; want runs of 5, 1 (the bad one) and 6", len(c.Writes), c.Writes)
	}
	if h, pkt := unwrite(&c, c.Writes[1]); h != (offload.Header{}) || !bytes.Equal(pkt, bad) {
		t.Fatalf("the bad datagram was written as %+v, changed %v", h, !bytes.Equal(pkt, bad))
	}

	// Without USO: one write each.
	c.UDP = false
	c.Reset()
	for _, f := range frames() {
		c.add(f)
	}
	c.Flush()
	if len(c.Writes) != 12 {
		t.Fatalf("without USO: %d writes, want 12", len(c.Writes))
	}
}
