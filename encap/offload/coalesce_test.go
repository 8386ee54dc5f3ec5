package offload

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// The coalescer as the WireGuard device feeds it: each packet in an
// element buffer of its own, at testOffset (16 bytes of headroom), trusted.

// packetsOf cuts a TCP or UDP super-packet of n payload bytes at mss into
// whole packets with complete checksums, each in a buffer of its own at
// testOffset: what a peer's device decrypts from a sender's TSO or USO.
func packetsOf(t testing.TB, v6 bool, proto uint8, n, mss int, flags uint8, seed byte) [][]byte {
	t.Helper()
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i*7) + seed
	}
	h, pkt := superFrame(v6, proto, payload, mss, flags)
	bufs, sizes := testBufs((n + mss - 1) / mss)
	k, err := SplitFrame(&h, pkt, bufs, sizes, testOffset, false)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, k)
	for i := range out {
		out[i] = bufs[i][:testOffset+sizes[i]]
	}
	return out
}

// coalesce runs one batch through a trusted coalescer (udp: with UDP runs)
// and returns it; the buffers are rewritten in place.
func coalesce(bufs [][]byte, trusted, udp bool) *Coalescer {
	c := &Coalescer{Trusted: trusted, UDP: udp}
	c.Reset()
	for _, b := range bufs {
		c.Add(b, testOffset, Header{})
	}
	c.Flush()
	return c
}

// received turns write w back into the packets the kernel makes of it:
// a zero header's packet as it is, a GSO write's segments as the kernel
// cuts them (its checksum field must hold the pseudo-header sum of the
// whole packet, which the kernel's segmentation starts from).
func received(t *testing.T, c *Coalescer, w Write) [][]byte {
	t.Helper()
	var h Header
	if err := h.Decode(w.Head); err != nil {
		t.Fatal(err)
	}
	pkt := bytes.Clone(w.Head[HeaderLen:])
	for _, p := range c.Payloads[w.Lo:w.Hi] {
		pkt = append(pkt, p...)
	}
	if h == (Header{}) {
		if w.Segs != 1 || w.Lo != w.Hi {
			t.Fatalf("a single write of %d packets", w.Segs)
		}
		return [][]byte{pkt}
	}
	s, err := ParseSuper(&h, pkt)
	if err != nil || h.Flags != NeedsCsum || s.Segs != w.Segs || int(h.HdrLen) != s.HdrLen || int(h.CsumStart) != s.L3Len {
		t.Fatalf("header %+v over %d bytes: %+v, %v", h, len(pkt), s, err)
	}
	if ipLength(pkt, s.V6) != len(pkt) {
		t.Fatalf("IP length %d, packet %d", ipLength(pkt, s.V6), len(pkt))
	}
	if !s.V6 && !IPv4HeaderValid(pkt[:s.L3Len]) {
		t.Fatal("IPv4 header checksum of the run")
	}
	src, dst := Addrs(pkt, s.V6)
	at := s.L3Len + int(h.CsumOffset)
	if got, want := binary.BigEndian.Uint16(pkt[at:]), PseudoSum(src, dst, s.Proto, len(pkt)-s.L3Len); got != want {
		t.Fatalf("checksum field %#04x, want the pseudo-header sum %#04x", got, want)
	}
	if s.Proto == ProtoUDP && int(binary.BigEndian.Uint16(pkt[s.L3Len+udpLen:])) != len(pkt)-s.L3Len {
		t.Fatal("UDP length of the run")
	}
	bufs, sizes := testBufs(s.Segs)
	if k := s.Split(0, bufs, sizes, 0); k != s.Segs {
		t.Fatalf("split %d of %d", k, s.Segs)
	}
	out := make([][]byte, s.Segs)
	for i := range out {
		out[i] = bufs[i][:sizes[i]]
	}
	return out
}

// checkBatch checks that the writes carry the packets want, in order, byte
// for byte, in writes of the given numbers of packets.
func checkBatch(t *testing.T, c *Coalescer, want [][]byte, segs ...int) {
	t.Helper()
	var got [][]byte
	var n []int
	for _, w := range c.Writes {
		got = append(got, received(t, c, w)...)
		n = append(n, w.Segs)
	}
	if len(n) != len(segs) {
		t.Fatalf("writes of %v packets, want %v", n, segs)
	}
	for i := range n {
		if n[i] != segs[i] {
			t.Fatalf("writes of %v packets, want %v", n, segs)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d packets, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("packet %d differs:\n got % x\nwant % x", i, got[i][:min(60, len(got[i]))], want[i][:min(60, len(want[i]))])
		}
	}
}

// originals copies the packets out of their buffers before the coalescer
// rewrites them.
func originals(bufs [][]byte) [][]byte {
	out := make([][]byte, len(bufs))
	for i, b := range bufs {
		out[i] = bytes.Clone(b[testOffset:])
	}
	return out
}

func TestCoalesceTCPRunsTrusted(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		bufs := packetsOf(t, v6, ProtoTCP, 40*1368-500, 1368, 0x10|tcpPSH, 1)
		want := originals(bufs)
		c := coalesce(bufs, true, false)
		checkBatch(t, c, want, 40)
		var h Header
		_ = h.Decode(c.Writes[0].Head)
		if typ := h.GSOType; (typ != GSOTCPv4) == !v6 || (typ != GSOTCPv6) == v6 || h.GSOSize != 1368 || h.CsumOffset != TCPCsum {
			t.Fatalf("v6 %v: header %+v", v6, h)
		}
		if c.Dropped != 0 {
			t.Fatalf("%d dropped", c.Dropped)
		}
	}
}

func TestCoalesceUDPRuns(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		// Equal datagrams, the last one shorter: one UDP GSO write.
		bufs := packetsOf(t, v6, ProtoUDP, 20*1200-77, 1200, 0, 2)
		want := originals(bufs)
		c := coalesce(bufs, true, true)
		checkBatch(t, c, want, 20)
		var h Header
		_ = h.Decode(c.Writes[0].Head)
		if h.GSOType != GSOUDPL4 || h.GSOSize != 1200 || h.CsumOffset != UDPCsum {
			t.Fatalf("v6 %v: header %+v", v6, h)
		}
		// A TUN without USO: every datagram alone, as it came.
		bufs = packetsOf(t, v6, ProtoUDP, 5*1200, 1200, 0, 3)
		want = originals(bufs)
		checkBatch(t, coalesce(bufs, true, false), want, 1, 1, 1, 1, 1)
	}
	// A shorter datagram is the last of its run; a longer one after it
	// starts the next.
	a := packetsOf(t, false, ProtoUDP, 3*1000-10, 1000, 0, 4)
	b := packetsOf(t, false, ProtoUDP, 2*1000, 1000, 0, 5)
	bufs := append(a, b...)
	want := originals(bufs)
	checkBatch(t, coalesce(bufs, true, true), want, 3, 2)
}

// TestCoalesceBreaks: a packet that does not continue the run (here the
// fourth of eight) starts a new one or goes alone; the packets after it no
// longer continue it either, and all arrive as they came.
func TestCoalesceBreaks(t *testing.T) {
	edit := func(f func(p []byte)) func([][]byte) {
		return func(bufs [][]byte) { f(bufs[3][testOffset:]) }
	}
	refix := func(p []byte) {
		v6 := p[0]>>4 == 6
		l3 := 20
		if v6 {
			l3 = 40
		} else {
			PutIPv4Checksum(p[:20])
		}
		p[l3+TCPCsum], p[l3+TCPCsum+1] = 0, 0
		src, dst := Addrs(p, v6)
		binary.BigEndian.PutUint16(p[l3+TCPCsum:], ^Checksum(p[l3:], PseudoSum(src, dst, ProtoTCP, len(p)-l3)))
	}
	for _, tc := range []struct {
		name string
		edit func([][]byte)
		segs []int
	}{
		{"seq gap", edit(func(p []byte) { p[20+tcpSeq+3]++; refix(p) }), []int{3, 1, 4}},
		{"other port", edit(func(p []byte) { p[20+1]++; refix(p) }), []int{3, 1, 4}},
		{"other ack", edit(func(p []byte) { p[20+8+3]++; refix(p) }), []int{3, 1, 4}},
		{"other window", edit(func(p []byte) { p[20+14]++; refix(p) }), []int{3, 1, 4}},
		{"other TTL", edit(func(p []byte) { p[8]--; refix(p) }), []int{3, 1, 4}},
		{"FIN", edit(func(p []byte) { p[20+tcpFlags] |= tcpFIN; refix(p) }), []int{3, 1, 4}},
		{"PSH closes", edit(func(p []byte) { p[20+tcpFlags] |= tcpPSH; refix(p) }), []int{4, 4}},
		{"bad IPv4 header checksum", edit(func(p []byte) { p[ip4Csum]++ }), []int{3, 1, 4}},
		{"other TOS", edit(func(p []byte) { p[1] |= 0x03; refix(p) }), []int{3, 1, 4}},
		{"DF cleared", edit(func(p []byte) { p[ip4Frag] &^= 0x40; refix(p) }), []int{3, 1, 4}},
		{"URG", edit(func(p []byte) { p[20+tcpFlags] |= tcpURG; refix(p) }), []int{3, 1, 4}},
		{"CWR", edit(func(p []byte) { p[20+tcpFlags] |= tcpCWR; refix(p) }), []int{3, 1, 4}},
		{"ECE differs", edit(func(p []byte) { p[20+tcpFlags] |= 0x40; refix(p) }), []int{3, 1, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bufs := packetsOf(t, false, ProtoTCP, 8*1000, 1000, 0x10, 6)
			tc.edit(bufs)
			want := originals(bufs)
			checkBatch(t, coalesce(bufs, true, false), want, tc.segs...)
		})
	}
	// A shorter segment closes its run.
	a := packetsOf(t, false, ProtoTCP, 3*1000-1, 1000, 0x10, 7)
	bufs := append(a, packetsOf(t, true, ProtoTCP, 2000, 1000, 0x10, 8)...)
	want := originals(bufs)
	checkBatch(t, coalesce(bufs, true, false), want, 3, 2)
}

// TestCoalesceBreaksUDP: a datagram of another port, or one whose UDP
// length disagrees with its IP length, does not join; an IPv6 datagram
// without a checksum never joins, even trusted (the kernel drops it alone).
func TestCoalesceBreaksUDP(t *testing.T) {
	for _, tc := range []struct {
		name string
		v6   bool
		edit func(p []byte, l3 int)
		segs []int
	}{
		{"other port", false, func(p []byte, l3 int) { p[l3+1]++ }, []int{3, 1, 4}},
		{"UDP length", false, func(p []byte, l3 int) { p[l3+udpLen+1]-- }, []int{3, 1, 4}},
		{"IPv6 zero checksum", true, func(p []byte, l3 int) { p[l3+UDPCsum], p[l3+UDPCsum+1] = 0, 0 }, []int{3, 1, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bufs := packetsOf(t, tc.v6, ProtoUDP, 8*1000, 1000, 0, 13)
			l3 := 20
			if tc.v6 {
				l3 = 40
			}
			tc.edit(bufs[3][testOffset:], l3)
			want := originals(bufs)
			checkBatch(t, coalesce(bufs, true, true), want, tc.segs...)
		})
	}
}

// TestCoalesceMixedBatch: ICMP, a pure ACK, fragments and other flows go
// alone behind a zero header, runs around them are kept.
func TestCoalesceMixedBatch(t *testing.T) {
	tcp4 := packetsOf(t, false, ProtoTCP, 4*1000, 1000, 0x10, 9)
	tcp6 := packetsOf(t, true, ProtoTCP, 3*900, 900, 0x10, 10)
	udp := packetsOf(t, false, ProtoUDP, 2*500, 500, 0, 11)
	icmp := make([]byte, testOffset+28)
	copy(icmp[testOffset:], []byte{0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 244, 1, 5, 10, 244, 2, 7, 8, 0, 0xf7, 0xff, 0, 0, 0, 0})
	PutIPv4Checksum(icmp[testOffset : testOffset+20])
	frag := bytes.Clone(tcp4[0])
	binary.BigEndian.PutUint16(frag[testOffset+ip4Frag:], 0x2000) // MF
	PutIPv4Checksum(frag[testOffset : testOffset+20])
	ack := packetsOf(t, false, ProtoTCP, 1, 1, 0x10, 12)[0]
	ack = ack[:testOffset+40]
	binary.BigEndian.PutUint16(ack[testOffset+ip4TotalLen:], 40)
	PutIPv4Checksum(ack[testOffset : testOffset+20])

	bufs := [][]byte{icmp, tcp4[0], tcp4[1], udp[0], tcp4[2], tcp4[3], frag, tcp6[0], tcp6[1], tcp6[2], ack, udp[1]}
	want := originals(bufs)
	checkBatch(t, coalesce(bufs, true, true), want, 1, 2, 1, 2, 1, 3, 1, 1)
}

// TestCoalesceTrustedPassesBadChecksum: trusted, a segment whose TCP
// checksum is wrong is not verified but joins, its payload carried as it
// came (the kernel finishes the run's checksum); untrusted, it breaks the
// run and goes alone, for the kernel to drop.
func TestCoalesceTrustedPassesBadChecksum(t *testing.T) {
	bufs := packetsOf(t, false, ProtoTCP, 6*1000, 1000, 0x10, 13)
	bufs[2][testOffset+20+TCPCsum] ^= 0x5a
	payload := bytes.Clone(bufs[2][testOffset+40:])
	c := coalesce(bufs, true, false)
	if len(c.Writes) != 1 || c.Writes[0].Segs != 6 || !bytes.Equal(c.Payloads[1], payload) {
		t.Fatalf("trusted: writes %+v", c.Writes)
	}

	bufs = packetsOf(t, false, ProtoTCP, 6*1000, 1000, 0x10, 13)
	bufs[2][testOffset+20+TCPCsum] ^= 0x5a
	want := originals(bufs)
	c = coalesce(bufs, false, false)
	if len(c.Writes) != 3 || c.Writes[0].Segs != 2 || c.Writes[1].Segs != 1 || c.Writes[2].Segs != 3 {
		t.Fatalf("untrusted: writes %+v", c.Writes)
	}
	if !bytes.Equal(c.Writes[1].Head[HeaderLen:], want[2]) {
		t.Fatal("untrusted: the bad segment was changed")
	}
}

// TestCoalesceDropsRunItsHeaderDoesNotDescribe: a run whose virtio header
// would not read back as the packet (here: a run longer than its segments)
// is dropped and counted, never written.
func TestCoalesceDropsRunItsHeaderDoesNotDescribe(t *testing.T) {
	bufs := packetsOf(t, false, ProtoTCP, 1000*4, 1000, 0x10, 3)
	c := &Coalescer{Trusted: true}
	for _, b := range bufs {
		c.Add(b, testOffset, Header{})
	}
	c.cur.segs++ // what the header would claim no longer matches
	c.Flush()
	if len(c.Writes) != 0 || c.Dropped != 5 {
		t.Fatalf("%d writes, %d dropped; want 0 and 5", len(c.Writes), c.Dropped)
	}
}

// TestCoalesceAllocs: a reused coalescer allocates nothing per batch.
func TestCoalesceAllocs(t *testing.T) {
	batch := append(packetsOf(t, false, ProtoTCP, 40*1368, 1368, 0x10, 14), packetsOf(t, true, ProtoUDP, 20*1200, 1200, 0, 15)...)
	orig := originals(batch)
	c := &Coalescer{Trusted: true, UDP: true}
	run := func() {
		for i, b := range batch {
			copy(b[testOffset:], orig[i])
		}
		c.Reset()
		for _, b := range batch {
			c.Add(b, testOffset, Header{})
		}
		c.Flush()
	}
	run() // grows the slices once
	if n := testing.AllocsPerRun(100, run); n != 0 {
		t.Fatalf("%v allocs per batch", n)
	}
	if len(c.Writes) != 2 {
		t.Fatalf("%d writes, want 2", len(c.Writes))
	}
}

// BenchmarkCoalesceTrusted measures a device batch of 64 decrypted TCP
// segments (bytes are payload bytes).
func BenchmarkCoalesceTrusted(b *testing.B) {
	batch := packetsOf(b, false, ProtoTCP, 64*1368, 1368, 0x10, 16)
	orig := originals(batch)
	c := &Coalescer{Trusted: true}
	b.SetBytes(64 * 1368)
	b.ReportAllocs()
	for b.Loop() {
		for i, p := range batch {
			copy(p[testOffset:testOffset+40], orig[i][:40])
		}
		c.Reset()
		for _, p := range batch {
			c.Add(p, testOffset, Header{})
		}
		c.Flush()
	}
}

// FuzzCoalesce feeds a batch of arbitrary packets (each a 2-byte length,
// then its bytes) through a coalescer, trusted or not, with UDP runs or
// not: nothing may panic, every write's header must read back as its
// packet, and the packets the kernel makes of the writes are the packets
// given, in order, but for the run heads' checksum fields.
func FuzzCoalesce(f *testing.F) {
	seed := func(trusted, udp bool, pkts ...[]byte) {
		var b []byte
		for _, p := range pkts {
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)-testOffset))
			b = append(b, p[testOffset:]...)
		}
		f.Add(b, trusted, udp)
	}
	seed(true, true, packetsOf(f, false, ProtoTCP, 5*1000, 1000, 0x10, 1)...)
	seed(false, false, packetsOf(f, true, ProtoTCP, 3*900-1, 900, 0x18, 2)...)
	seed(true, true, packetsOf(f, true, ProtoUDP, 4*700-5, 700, 0, 3)...)
	seed(true, false, append(packetsOf(f, false, ProtoUDP, 2*300, 300, 0, 4), packetsOf(f, false, ProtoTCP, 2*300, 300, 0x10, 5)...)...)
	f.Fuzz(func(t *testing.T, b []byte, trusted, udp bool) {
		var bufs [][]byte
		for len(b) >= 2 && len(bufs) < 128 {
			n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
			buf := make([]byte, testOffset+n)
			copy(buf[testOffset:], b[2:2+n])
			bufs = append(bufs, buf)
			b = b[2+n:]
		}
		want := originals(bufs)
		c := coalesce(bufs, trusted, udp)
		var got int
		for _, w := range c.Writes {
			var h Header
			if err := h.Decode(w.Head); err != nil {
				t.Fatal(err)
			}
			if h == (Header{}) {
				if w.Segs != 1 || !bytes.Equal(w.Head[HeaderLen:], want[got]) {
					t.Fatalf("packet %d written alone but changed", got)
				}
				got++
				continue
			}
			for i, p := range received(t, c, w) {
				if !sameButSums(p, want[got+i]) {
					t.Fatalf("packet %d of a run differs from what was given", got+i)
				}
				g := want[got+i]
				v6, l3Len, proto, _ := parseIP(g)
				if !trusted && !checksumOK(g, v6, l3Len, proto) {
					t.Fatalf("packet %d joined an untrusted run with a bad checksum", got+i)
				}
				if v6 && proto == ProtoUDP && binary.BigEndian.Uint16(g[l3Len+UDPCsum:]) == 0 {
					t.Fatalf("packet %d, IPv6 UDP without a checksum, joined a run", got+i)
				}
			}
			got += w.Segs
		}
		if got+c.Dropped != len(bufs) {
			t.Fatalf("%d packets written, %d dropped, of %d", got, c.Dropped, len(bufs))
		}
	})
}

// sameButSums reports whether the packets a and b are the same but for
// what the kernel rewrites when it cuts a run into segments: the L4
// checksum (complete again, whatever the given one was: trusted runs are
// not checked), and an IPv4 header's ID and checksum.
func sameButSums(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	v6, l3Len, proto, ok := parseIP(b)
	if !ok {
		return bytes.Equal(a, b)
	}
	a, b = bytes.Clone(a), bytes.Clone(b)
	for _, p := range [][]byte{a, b} {
		if !v6 {
			clear(p[ip4ID : ip4ID+2])
			clear(p[ip4Csum : ip4Csum+2])
		}
		at := l3Len + TCPCsum
		if proto == ProtoUDP {
			at = l3Len + UDPCsum
		}
		if at+2 <= len(p) {
			clear(p[at : at+2])
		}
	}
	return bytes.Equal(a, b)
}
