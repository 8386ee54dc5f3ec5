package overlay

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// fakeGather records what a gathered send would put on the wire: each
// datagram's bytes (the iovecs concatenated) cut at its segment length.
type fakeGather struct {
	frames [][]byte
	keep   bool
	gso    bool
}

func (f *fakeGather) SendGather(g *vxlan.Gather, dst netip.AddrPort, flow uint32) error {
	if f.keep {
		f.frames = append(f.frames, gatherDatagrams(g)...)
	}
	return nil
}
func (f *fakeGather) GSO() bool { return f.gso }

// sendRecorded sends sp through r's gathered path into a recording sender
// and returns the frames and the router's counts.
func sendRecorded(t testing.TB, r *Router, sp *offload.Super) ([][]byte, *outState) {
	t.Helper()
	fg := &fakeGather{keep: true, gso: true}
	fo := &fastOut{snd: fg, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen)}
	st := r.newOutState()
	if done, alive := r.sendSuper(r.table.Load(), sp, fo, st); !done || !alive {
		t.Fatalf("done %v alive %v", done, alive)
	}
	return fg.frames, st
}

func fastRouter(t testing.TB) (*Router, *peerEntry) {
	r := New(Config{VNI: 5, LocalMAC: [6]byte{2, 0, 0, 0, 0, 1}, PodCIDRs: testPodCIDRs}, nil, nil)
	p := &peerEntry{Peer: Peer{Name: "b", Underlay: netip.MustParseAddrPort("198.51.100.12:4789"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}, VTEPMAC: [6]byte{2, 0, 0, 0, 0, 2}}, pmtu: &pathMTU{}}
	r.table.Store(newTable([]*peerEntry{p}))
	return r, p
}

// TestSendSuperFrames: a super-packet sent through the gather path leaves
// as VXLAN frames, each a valid, whole TCP segment for the right peer.
func TestSendSuperFrames(t *testing.T) {
	r, _ := fastRouter(t)
	orig := superTCP(false, 1388*100+11, tcpACK|tcpPSH, 1)
	pkt := append([]byte(nil), orig...)
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 1388}
	sp, err := offload.ParseSuper(&h, pkt)
	if err != nil {
		t.Fatal(err)
	}
	fg := &fakeGather{keep: true, gso: true}
	fo := &fastOut{snd: fg, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen)}
	st := r.newOutState()
	done, alive := r.sendSuper(r.table.Load(), &sp, fo, st)
	if !done || !alive {
		t.Fatalf("done %v alive %v", done, alive)
	}
	if len(fg.frames) != sp.Segs || st.counts.packets != uint64(sp.Segs) {
		t.Fatalf("%d frames, %d counted; want %d", len(fg.frames), st.counts.packets, sp.Segs)
	}
	var joined []byte
	for i, fr := range fg.frames {
		var f vxlan.Frame
		if err := f.Decode(fr); err != nil || f.VNI != 5 || f.Dst != [6]byte{2, 0, 0, 0, 0, 2} || f.Src != r.cfg.LocalMAC {
			t.Fatalf("frame %d: %+v %v", i, f, err)
		}
		seg := fr[vxlan.FrameHeaderLen:]
		checkIPv4(t, seg)
		if !l4ChecksumOK(seg) {
			t.Fatalf("frame %d: bad TCP checksum", i)
		}
		joined = append(joined, seg[52:]...)
	}
	if !bytes.Equal(joined, orig[52:]) {
		t.Fatal("payload differs")
	}
	if want := uint64(len(orig) + (sp.Segs-1)*52); st.counts.bytes != want {
		t.Fatalf("bytes %d, want %d", st.counts.bytes, want)
	}

	// Too big for the path: one ICMP-worthy drop per segment, nothing sent.
	fg.frames = nil
	r.table.Load().peers[0].pmtu.v.Store(1000)
	st.counts.reset()
	r.sendSuper(r.table.Load(), &sp, fo, st)
	if len(fg.frames) != 0 || st.counts.drops[dropTooBig] != uint64(sp.Segs) {
		t.Fatalf("too big: %d frames, %d drops", len(fg.frames), st.counts.drops[dropTooBig])
	}
	// Without GSO the split path takes over.
	r.table.Load().peers[0].pmtu.v.Store(0)
	fg.gso = false
	if done, _ := r.sendSuper(r.table.Load(), &sp, fo, st); done {
		t.Fatal("sent gathered without GSO")
	}
}

// gatherDatagrams reassembles a Gather's datagrams and cuts them into the
// segments the kernel would send.
func gatherDatagrams(g *vxlan.Gather) [][]byte {
	var out [][]byte
	for _, d := range g.Datagrams() {
		for off := 0; off < len(d.Bytes); off += d.SegLen {
			out = append(out, d.Bytes[off:min(off+d.SegLen, len(d.Bytes))])
		}
	}
	return out
}

// TestFastPathAllocs pins the fast paths' per-packet work at zero
// allocations: a super-packet through the gather path, and a GRO buffer
// through validation and coalescing.
func TestFastPathAllocs(t *testing.T) {
	r, _ := fastRouter(t)
	pkt := superTCP(false, 60000, tcpACK, 2)
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 1388}
	fo := &fastOut{snd: &fakeGather{gso: true}, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen)}
	st := r.newOutState()
	tab := r.table.Load()
	if n := testing.AllocsPerRun(100, func() {
		sp, err := offload.ParseSuper(&h, pkt)
		if err != nil {
			t.Fatal(err)
		}
		r.sendSuper(tab, &sp, fo, st)
	}); n != 0 {
		t.Fatalf("outbound: %v allocs per super-packet", n)
	}

	// Inbound: frames from peer b to us.
	rin, _ := fastRouter(t)
	rin.cfg.LocalMAC = [6]byte{2, 0, 0, 0, 0, 2}
	rin.table.Store(newTable([]*peerEntry{{Peer: Peer{Name: "a", Underlay: netip.MustParseAddrPort("192.0.2.11:4789"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}, pmtu: &pathMTU{}}}))
	frames := segmentsOf(t, false, 1388*40, 1388, tcpACK, 3)
	fh := vxlan.Frame{VNI: 5, Dst: rin.cfg.LocalMAC, EtherType: vxlan.EtherTypeIPv4}
	var buf []byte
	for _, f := range frames {
		fh.Encode(f)
		buf = append(buf, f...)
	}
	saved := append([]byte(nil), buf...)
	from := netip.MustParseAddr("192.0.2.11")
	var c coalescer
	var counts batchCounts
	run := func() {
		copy(buf, saved)
		c.Reset()
		counts.reset()
		rin.decapsulateGRO(rin.table.Load(), buf, len(frames[0]), from, &c, &counts)
		c.Flush()
	}
	run()
	if len(c.Writes) != 1 || c.Writes[0].Segs != 40 || counts.packets != 40 {
		t.Fatalf("%d writes, %d packets; want 1 write of 40", len(c.Writes), counts.packets)
	}
	if n := testing.AllocsPerRun(100, run); n != 0 {
		t.Fatalf("inbound: %v allocs per GRO buffer", n)
	}
}

// BenchmarkSendSuper measures the outbound fast path's user-space work
// for a 64 KiB TCP super-packet (headers, checksums, gather list).
func BenchmarkSendSuper(b *testing.B) {
	r, _ := fastRouter(b)
	pkt := superTCP(false, 65535-52, tcpACK, 4)
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 1388}
	fo := &fastOut{snd: &fakeGather{gso: true}, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen)}
	st := r.newOutState()
	tab := r.table.Load()
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		sp, _ := offload.ParseSuper(&h, pkt)
		r.sendSuper(tab, &sp, fo, st)
	}
}

// TestSendSuperRCO: to a peer that takes remote checksum offload, TCP
// segments leave with the RCO bits and a partial checksum, which the
// decapsulating side (checked by decapsulate, finished by finishRCO on the
// per-packet path) turns into the segment a full sum would have given; to
// others, with complete checksums.
func TestSendSuperRCO(t *testing.T) {
	send := func(rco bool) [][]byte {
		r, p := fastRouter(t)
		p.RemoteChecksum = rco
		pkt := superTCP(false, 1388*7+11, tcpACK, 4)
		h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv4, GSOSize: 1388}
		sp, err := offload.ParseSuper(&h, pkt)
		if err != nil {
			t.Fatal(err)
		}
		frames, _ := sendRecorded(t, r, &sp)
		return frames
	}
	full, frames := send(false), send(true)
	if len(frames) != len(full) || len(frames) != 8 {
		t.Fatalf("%d frames with RCO, %d without; want 8", len(frames), len(full))
	}
	// The receiving router, for which the sender is a weft peer.
	rx := New(Config{VNI: 5, LocalMAC: [6]byte{2, 0, 0, 0, 0, 2}, PodCIDRs: testPodCIDRs}, nil, nil)
	p := &peerEntry{Peer: Peer{Name: "a", Underlay: netip.MustParseAddrPort("192.0.2.11:4789"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, OuterChecksum: true}, pmtu: &pathMTU{}}
	rx.table.Store(newTable([]*peerEntry{p}))
	from := p.Underlay.Addr()
	for i, fr := range frames {
		var f vxlan.Frame
		if err := f.Decode(fr); err != nil || f.CsumStart != vxlan.EthernetLen+20 || f.CsumUDP {
			t.Fatalf("frame %d: %+v, %v; want RCO at %d", i, f, err, vxlan.EthernetLen+20)
		}
		if full[i][1] != 0 || !l4ChecksumOK(full[i][vxlan.FrameHeaderLen:]) {
			t.Fatalf("frame %d without RCO: flags %#x or bad checksum", i, full[i][1])
		}
		if l4ChecksumOK(fr[vxlan.FrameHeaderLen:]) {
			t.Fatalf("frame %d: complete checksum under RCO", i)
		}
		if v := rx.decapsulate(fr, rx.table.Load().peerAt(from)); v != pass {
			t.Fatalf("frame %d: decapsulate %v", i, v)
		}
		fin := append([]byte(nil), fr...)
		finishRCO(fin)
		if !bytes.Equal(fin[vxlan.FrameHeaderLen:], full[i][vxlan.FrameHeaderLen:]) {
			t.Fatalf("frame %d: finished RCO segment differs from the fully summed one", i)
		}
	}

	// RCO is taken only from weft peers (outer checksum), and only when
	// it points at the inner TCP header.
	fr := append([]byte(nil), frames[0]...)
	p.OuterChecksum = false
	if v := rx.decapsulate(fr, rx.table.Load().peerAt(from)); v != dropFlags {
		t.Fatalf("RCO from a peer without outer checksums: %v, want %v", v, dropFlags)
	}
	p.OuterChecksum = true
	fr[7] = byte((vxlan.EthernetLen + 24) >> 1) // past the IP header
	if v := rx.decapsulate(fr, rx.table.Load().peerAt(from)); v != dropInnerIP {
		t.Fatalf("RCO at the wrong place: %v, want %v", v, dropInnerIP)
	}
	fr[7] = byte((vxlan.EthernetLen+20)>>1) | 0x80 // UDP's, on a TCP packet
	if v := rx.decapsulate(fr, rx.table.Load().peerAt(from)); v != dropInnerIP {
		t.Fatalf("RCO of the wrong kind: %v, want %v", v, dropInnerIP)
	}
}

// TestSplitSuperTooBig: a super-packet whose segments do not fit a split
// buffer (IPv6 lets a local writer hand over a frame of about 64 KiB) is
// dropped whole and counted as drop_too_big; the split must not spin on a
// segment it can never place.
func TestSplitSuperTooBig(t *testing.T) {
	r, _ := fastRouter(t)
	const mss = 65440
	pkt := superTCP(true, mss+63, tcpACK, 1)
	h := offload.Header{Flags: offload.NeedsCsum, GSOType: offload.GSOTCPv6, GSOSize: mss}
	sp, err := offload.ParseSuper(&h, pkt)
	if err != nil {
		t.Fatal(err)
	}
	if sp.Segs != 2 || sp.HdrLen+mss <= bufSize-tunOffset {
		t.Fatalf("%d segments of %d bytes: the case needs 2 segments longer than a split buffer (%d)", sp.Segs, sp.HdrLen+mss, bufSize-tunOffset)
	}
	st := r.newOutState()
	done := make(chan bool, 1)
	go func() { done <- r.splitSuper(r.table.Load(), &sp, &fastOut{}, st) }()
	select {
	case alive := <-done:
		if !alive {
			t.Fatal("split reported the router closing")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("split did not return within 10 s (it loops)")
	}
	if st.counts.drops[dropTooBig] != uint64(sp.Segs) || st.counts.packets != 0 {
		t.Fatalf("drop_too_big %d, packets %d; want %d and 0", st.counts.drops[dropTooBig], st.counts.packets, sp.Segs)
	}
}
