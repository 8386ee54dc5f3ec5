package vxlan

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gatherFrames builds n frames of segLen bytes (the last short) into g the
// way the router does: a header piece and a payload piece per segment,
// perMsg segments per datagram. It returns the frames as they must arrive.
func gatherFrames(g *Gather, n, segLen, last, perMsg int) [][]byte {
	g.Reset()
	var want [][]byte
	for i := 0; i < n; i++ {
		l := segLen
		if i == n-1 {
			l = last
		}
		f := make([]byte, l)
		for j := range f {
			f[j] = byte(i*31 + j)
		}
		if i%perMsg == 0 {
			g.Begin(segLen)
		}
		g.Add(f[:FrameHeaderLen])
		g.Add(f[FrameHeaderLen:])
		want = append(want, f)
	}
	return want
}

// loopback opens a Receiver on a free port and a Sender of n sockets, both
// closed when the test ends, and returns the IPv4 loopback address to send
// to.
func loopback(tb testing.TB, n int) (*Receiver, *Sender, netip.AddrPort) {
	return loopbackAt(tb, n, netip.MustParseAddr("127.0.0.1"))
}

// loopbackAt is loopback sending to addr (127.0.0.1 or ::1).
func loopbackAt(tb testing.TB, n int, addr netip.Addr) (*Receiver, *Sender, netip.AddrPort) {
	tb.Helper()
	rcv, err := ListenReceiver(0, 8)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rcv.Close() })
	s, err := NewSender(n)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return rcv, s, netip.AddrPortFrom(addr, rcv.Port())
}

// TestGatherThroughReceiver sends gathered GSO datagrams from a Sender to a
// Receiver over loopback, IPv4 and IPv6 through the same dual-stack
// sockets: every VXLAN datagram arrives intact and in order, whether the
// receiver gets it on its own or inside a GRO buffer, and the sender's
// address is reported (IPv4 as IPv4, not mapped).
func TestGatherThroughReceiver(t *testing.T) {
	for _, a := range []string{"127.0.0.1", "::1"} {
		t.Run(a, func(t *testing.T) { testGatherThroughReceiver(t, netip.MustParseAddr(a)) })
	}
}

func testGatherThroughReceiver(t *testing.T, addr netip.Addr) {
	rcv, s, dst := loopbackAt(t, 2, addr)
	g := NewGather()
	const segLen = 1400
	want := gatherFrames(g, 100, segLen, 333, 40)
	if g.Len() != 3 {
		t.Fatalf("%d datagrams, want 3", g.Len())
	}
	if err := s.SendGather(g, dst, 1); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	sizes, segs, from := make([]int, 8), make([]int, 8), make([]netip.Addr, 8)
	var got [][]byte
	grouped := false // some buffer held more than one datagram (GRO)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		rcv.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := rcv.Read(bufs, sizes, segs, from)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if from[i] != addr {
				t.Fatalf("from %s, want %s", from[i], addr)
			}
			b := bufs[i][:sizes[i]]
			grouped = grouped || sizes[i] > segs[i]
			for off := 0; off < len(b); off += segs[i] {
				got = append(got, append([]byte(nil), b[off:min(off+segs[i], len(b))]...))
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d datagrams arrived, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d (content differs)", i, len(got[i]), len(want[i]))
		}
	}
	if !grouped {
		t.Fatalf("every read held one datagram: no GRO over %s", addr)
	}
}

func TestGatherLimits(t *testing.T) {
	g := NewGather()
	for i := 0; i < maxGatherMsgs; i++ {
		if !g.Begin(100) {
			t.Fatalf("Begin %d refused", i)
		}
	}
	if g.Begin(100) || !g.Full() {
		t.Fatal("Begin past the limit accepted")
	}
	g.Reset()
	if g.Add([]byte{1}) {
		t.Fatal("Add before Begin accepted")
	}
	g.Begin(10)
	b := []byte{1}
	for i := 0; i < maxGatherIovecs; i++ {
		if !g.Add(b) {
			t.Fatalf("Add %d refused", i)
		}
	}
	if g.Add(b) {
		t.Fatal("Add past the iovec limit accepted")
	}
}

func TestGroSize(t *testing.T) {
	oob := make([]byte, oobLen)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = 1422
	if got := groSize(oob[:unix.CmsgSpace(4)]); got != 1422 {
		t.Fatalf("groSize = %d", got)
	}
	// Another control message first: skipped.
	two := make([]byte, oobLen)
	h2 := (*unix.Cmsghdr)(unsafe.Pointer(&two[0]))
	h2.Level, h2.Type = unix.SOL_IP, unix.IP_TOS
	h2.SetLen(unix.CmsgLen(1))
	copy(two[unix.CmsgSpace(1):], oob[:unix.CmsgSpace(4)])
	if got := groSize(two); got != 1422 {
		t.Fatalf("groSize after another message = %d", got)
	}
	bogus := make([]byte, 40)
	bogus[0] = 200 // length past the buffer
	for _, bad := range [][]byte{nil, oob[:3], make([]byte, 40), bogus} {
		if got := groSize(bad); got != 0 {
			t.Fatalf("groSize(% x) = %d", bad, got)
		}
	}
}

// TestGatherAllocs: a GSO send and the GRO receive of it allocate
// nothing, over either family's loopback.
func TestGatherAllocs(t *testing.T) {
	for _, addr := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		rcv, s, dst := loopbackAt(t, 1, addr)
		g := NewGather()
		gatherFrames(g, 4, 1000, 1000, 4)
		bufs := [][]byte{make([]byte, 65536)}
		sizes, segs, from := make([]int, 1), make([]int, 1), make([]netip.Addr, 1)
		if n := testing.AllocsPerRun(100, func() {
			if err := s.SendGather(g, dst, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := rcv.Read(bufs, sizes, segs, from); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Fatalf("%s: %v allocs per send and receive", addr, n)
		}
	}
}

func BenchmarkSendGather(b *testing.B) {
	rcv, s, dst := loopback(b, 1)
	g := NewGather()
	gatherFrames(g, 44, 1472, 1000, 44)
	bufs := [][]byte{make([]byte, 65536)}
	sizes, segs, from := make([]int, 1), make([]int, 1), make([]netip.Addr, 1)
	b.SetBytes(43*1472 + 1000)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.SendGather(g, dst, 0); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < 43*1472+1000; {
			n, err := rcv.Read(bufs, sizes, segs, from)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < n; i++ {
				got += sizes[i]
			}
		}
	}
}
