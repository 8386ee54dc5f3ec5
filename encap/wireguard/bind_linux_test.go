package wireguard

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// openBindPair opens two binds on loopback ports of the kernel's choosing
// and returns them with a's receive function for IPv4 and b's endpoint as
// a sees it.
func openBindPair(t *testing.T) (a, b conn.Bind, recvA conn.ReceiveFunc, toB, toA conn.Endpoint) {
	t.Helper()
	a, b = newBind(), newBind()
	fa, pa, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	_, pb, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if pa == 0 || pb == 0 {
		t.Fatalf("ports %d, %d", pa, pb)
	}
	if toB, err = a.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), pb).String()); err != nil {
		t.Fatal(err)
	}
	if toA, err = b.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), pa).String()); err != nil {
		t.Fatal(err)
	}
	return a, b, fa[0], toB, toA
}

func recvBatch(n int) ([][]byte, []int, []conn.Endpoint) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	return bufs, make([]int, n), make([]conn.Endpoint, n)
}

// message i of a send: its index in the first bytes, then a pattern.
func message(i, size int) []byte {
	m := make([]byte, size)
	binary.BigEndian.PutUint16(m, uint16(i))
	for j := 2; j < size; j++ {
		m[j] = byte(i + j)
	}
	return m
}

// TestBindSendsBatchesWhole sends runs that become GSO datagrams (equal
// sizes, a shorter last one, a longer one that starts a new run, a run
// longer than one GSO send takes) and checks that every message arrives
// once, whole, in order, from the sender's address, with one endpoint
// object for the whole stream.
func TestBindSendsBatchesWhole(t *testing.T) {
	_, b, recvA, _, toA := openBindPair(t)
	var sent [][]byte
	sizes := []int{1200, 1200, 1200, 700, 1400, 1400}
	for i := 0; i < 70; i++ {
		sizes = append(sizes, 1000) // past maxGSOSegments in one Send
	}
	sizes = append(sizes, 32)
	for i, s := range sizes {
		sent = append(sent, message(i, s))
	}
	if err := b.Send(sent, toA); err != nil {
		t.Fatal(err)
	}
	bufs, got, eps := recvBatch(bindBatch)
	var ep conn.Endpoint
	next := 0
	for next < len(sent) {
		n, err := recvA(bufs, got, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if !bytes.Equal(bufs[i][:got[i]], sent[next]) {
				t.Fatalf("datagram %d: got %d bytes starting %x, want message %d (%d bytes)", next, got[i], bufs[i][:min(4, got[i])], next, len(sent[next]))
			}
			if ep == nil {
				ep = eps[i]
			} else if eps[i] != ep {
				t.Fatalf("datagram %d: a new endpoint for the same sender", next)
			}
			next++
		}
	}
	if ep.DstIP() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("sender address %v", ep.DstIP())
	}
	if ep.SrcIP() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("local address (pktinfo) %v, want 127.0.0.1", ep.SrcIP())
	}
	ep.ClearSrc()
	if ep.SrcIP().IsValid() || ep.SrcToString() != "" {
		t.Errorf("source after ClearSrc: %v", ep.SrcIP())
	}
	// A cleared endpoint is not handed out again.
	if err := b.Send(sent[:1], toA); err != nil {
		t.Fatal(err)
	}
	if n, err := recvA(bufs, got, eps); err != nil || n != 1 {
		t.Fatalf("receive: %d, %v", n, err)
	}
	if eps[0] == ep || !eps[0].SrcIP().IsValid() {
		t.Error("the cleared endpoint came back")
	}
}

// TestBindRepliesFromPktinfo: a reply to a received endpoint leaves from
// the local address the datagram came to (sticky source).
func TestBindRepliesFromPktinfo(t *testing.T) {
	// b sends to a at 127.0.0.2, an address a's socket (bound to the
	// wildcard) holds but would not choose as a source by itself toward
	// 127.0.0.1: a's reply must leave from 127.0.0.2, the address the
	// request came to (IP_PKTINFO), or b would see a stranger.
	a, b := newBind(), newBind()
	fa, pa, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	fb, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	toA, err := b.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), pa).String())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send([][]byte{message(1, 100)}, toA); err != nil {
		t.Fatal(err)
	}
	bufs, got, eps := recvBatch(bindBatch)
	if n, err := fa[0](bufs, got, eps); err != nil || n != 1 {
		t.Fatalf("receive at a: %d, %v", n, err)
	}
	if src := eps[0].SrcIP(); src != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("a received at %s, want 127.0.0.2 (the request's destination)", src)
	}
	if err := a.Send([][]byte{message(2, 100)}, eps[0]); err != nil {
		t.Fatalf("reply with the received endpoint's source: %v", err)
	}
	bufs, got, eps = recvBatch(bindBatch)
	if n, err := fb[0](bufs, got, eps); err != nil || n != 1 {
		t.Fatalf("receive at b: %d, %v", n, err)
	}
	if from := eps[0].DstIP(); from != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("a's reply came from %s, want 127.0.0.2", from)
	}
}

func TestBindErrors(t *testing.T) {
	a, _, recvA, _, _ := openBindPair(t)
	if _, _, err := a.Open(0); err == nil {
		t.Error("a second Open succeeded")
	}
	if err := a.Send([][]byte{{1}}, &conn.StdNetEndpoint{}); err == nil {
		t.Error("sent to an endpoint of another bind")
	}
	if _, err := a.ParseEndpoint("not an address"); err == nil {
		t.Error("parsed a bad endpoint")
	}
	ep, err := a.ParseEndpoint("[::ffff:192.0.2.1]:51820")
	if err != nil || !ep.DstIP().Is4() || ep.DstToString() != "192.0.2.1:51820" {
		t.Errorf("a mapped address parsed as %v (%v)", ep, err)
	}
	a.Close()
	bufs, got, eps := recvBatch(bindBatch)
	if _, err := recvA(bufs, got, eps); err == nil {
		t.Error("receive after Close succeeded")
	}
	if err := a.Send([][]byte{{1}}, ep); err == nil {
		t.Error("send after Close succeeded")
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestBindZeroAllocs pins the per-batch path: a GSO send and the receive
// that splits it allocate nothing once the sender's endpoint is known.
func TestBindZeroAllocs(t *testing.T) {
	_, b, recvA, _, toA := openBindPair(t)
	sent := make([][]byte, 32)
	for i := range sent {
		sent[i] = message(i, 1400)
	}
	bufs, got, eps := recvBatch(bindBatch)
	round := func() {
		if err := b.Send(sent, toA); err != nil {
			t.Fatal(err)
		}
		for left := len(sent); left > 0; {
			n, err := recvA(bufs, got, eps)
			if err != nil {
				t.Fatal(err)
			}
			left -= n
		}
	}
	round()
	if allocs := testing.AllocsPerRun(50, round); allocs != 0 {
		t.Errorf("%.1f allocations per batch of %d", allocs, len(sent))
	}
}

// cmsgs builds a control buffer from messages of (level, type, data).
func cmsgs(parts ...any) []byte {
	var b []byte
	for i := 0; i+2 < len(parts); i += 3 {
		data := parts[i+2].([]byte)
		m := make([]byte, unix.CmsgSpace(len(data)))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&m[0]))
		h.Level, h.Type = parts[i].(int32), parts[i+1].(int32)
		h.SetLen(unix.CmsgLen(len(data)))
		copy(m[unix.CmsgLen(0):], data)
		b = append(b, m...)
	}
	return b
}

func TestControlMessages(t *testing.T) {
	gro := make([]byte, 4)
	binary.NativeEndian.PutUint32(gro, 1372)
	var info4 unix.Inet4Pktinfo
	info4.Ifindex, info4.Spec_dst = 7, [4]byte{192, 0, 2, 11}
	p4 := unsafe.Slice((*byte)(unsafe.Pointer(&info4)), unix.SizeofInet4Pktinfo)
	var info6 unix.Inet6Pktinfo
	info6.Ifindex, info6.Addr = 9, netip.MustParseAddr("2001:db8::1").As16()
	p6 := unsafe.Slice((*byte)(unsafe.Pointer(&info6)), unix.SizeofInet6Pktinfo)

	both := cmsgs(int32(unix.IPPROTO_IP), int32(unix.IP_PKTINFO), p4, int32(unix.IPPROTO_UDP), int32(unix.UDP_GRO), gro)
	if g := groSegment(both); g != 1372 {
		t.Errorf("GRO segment %d, want 1372", g)
	}
	if a, i := pktinfoOf(both); a != netip.MustParseAddr("192.0.2.11") || i != 7 {
		t.Errorf("pktinfo %v %d", a, i)
	}
	v6 := cmsgs(int32(unix.IPPROTO_IPV6), int32(unix.IPV6_PKTINFO), p6)
	if a, i := pktinfoOf(v6); a != netip.MustParseAddr("2001:db8::1") || i != 9 {
		t.Errorf("pktinfo6 %v %d", a, i)
	}
	// Malformed: nothing is read from them, and nothing panics.
	short := cmsgs(int32(unix.IPPROTO_IP), int32(unix.IP_PKTINFO), p4[:4], int32(unix.IPPROTO_UDP), int32(unix.UDP_GRO), gro[:2])
	bad := append([]byte(nil), both...)
	(*unix.Cmsghdr)(unsafe.Pointer(&bad[0])).SetLen(len(bad) + 1) // longer than the buffer
	zero := append([]byte(nil), both...)
	(*unix.Cmsghdr)(unsafe.Pointer(&zero[0])).SetLen(0)
	for name, oob := range map[string][]byte{"empty": nil, "truncated header": both[:unix.SizeofCmsghdr-1], "short data": short, "length past the end": bad, "zero length": zero} {
		if g := groSegment(oob); g != 0 {
			t.Errorf("%s: GRO segment %d", name, g)
		}
		if a, i := pktinfoOf(oob); a.IsValid() || i != 0 {
			t.Errorf("%s: pktinfo %v %d", name, a, i)
		}
	}
}

// FuzzControlMessages: the control-message readers take any bytes.
func FuzzControlMessages(f *testing.F) {
	gro := make([]byte, 4)
	binary.NativeEndian.PutUint32(gro, 1400)
	f.Add(cmsgs(int32(unix.IPPROTO_UDP), int32(unix.UDP_GRO), gro))
	f.Add(cmsgs(int32(unix.IPPROTO_IP), int32(unix.IP_PKTINFO), make([]byte, unix.SizeofInet4Pktinfo)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		if g := groSegment(oob); g < 0 {
			t.Fatalf("GRO segment %d", g)
		}
		pktinfoOf(oob)
	})
}

// TestBindSendsMoreThanABatch: a Send longer than BatchSize goes out in
// batches, every message once.
func TestBindSendsMoreThanABatch(t *testing.T) {
	_, b, recvA, _, toA := openBindPair(t)
	sent := make([][]byte, 2*bindBatch+5)
	for i := range sent {
		sent[i] = message(i, 200)
	}
	if err := b.Send(sent, toA); err != nil {
		t.Fatal(err)
	}
	bufs, got, eps := recvBatch(bindBatch)
	for next := 0; next < len(sent); {
		n, err := recvA(bufs, got, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if !bytes.Equal(bufs[i][:got[i]], sent[next]) {
				t.Fatalf("datagram %d is not message %d", next, next)
			}
			next++
		}
	}
}
