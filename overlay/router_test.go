package overlay

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weftnet/weft/encap/vxlan"
)

// memNet is an in-memory underlay: binds registered by address exchange
// datagrams through channels, with the sender's address as the endpoint.
type memNet struct {
	mu    sync.Mutex
	binds map[netip.AddrPort]*memBind
}

type memEndpoint struct{ netip.AddrPort }

func (e memEndpoint) ClearSrc()           {}
func (e memEndpoint) SrcToString() string { return "" }
func (e memEndpoint) DstToString() string { return e.AddrPort.String() }
func (e memEndpoint) DstToBytes() []byte  { b, _ := e.AddrPort.MarshalBinary(); return b }
func (e memEndpoint) DstIP() netip.Addr   { return e.Addr() }
func (e memEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

type datagram struct {
	from netip.AddrPort
	b    []byte
}

type memBind struct {
	net    *memNet
	addr   netip.AddrPort
	rx     chan datagram
	closed chan struct{}
	once   sync.Once
}

func (n *memNet) bind(addr string) *memBind {
	b := &memBind{net: n, addr: netip.MustParseAddrPort(addr), rx: make(chan datagram, 1024), closed: make(chan struct{})}
	n.mu.Lock()
	if n.binds == nil {
		n.binds = make(map[netip.AddrPort]*memBind)
	}
	n.binds[b.addr] = b
	n.mu.Unlock()
	return b
}

func (b *memBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	return []conn.ReceiveFunc{func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case <-b.closed:
			return 0, net.ErrClosed
		case d := <-b.rx:
			sizes[0] = copy(bufs[0], d.b)
			eps[0] = memEndpoint{d.from}
			return 1, nil
		}
	}}, b.addr.Port(), nil
}
func (b *memBind) Close() error         { b.once.Do(func() { close(b.closed) }); return nil }
func (b *memBind) SetMark(uint32) error { return nil }
func (b *memBind) BatchSize() int       { return 8 }
func (b *memBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	return memEndpoint{ap}, err
}

// inject delivers raw bytes to b as if sent from from.
func (b *memBind) inject(from string, p []byte) {
	b.rx <- datagram{from: netip.MustParseAddrPort(from), b: append([]byte(nil), p...)}
}

func (b *memBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.net.mu.Lock()
	dst := b.net.binds[ep.(memEndpoint).AddrPort]
	b.net.mu.Unlock()
	if dst == nil {
		return nil // like UDP: into the void
	}
	for _, p := range bufs {
		dst.inject(b.addr.String(), p)
	}
	return nil
}

// ipv4 builds an IPv4 packet (no options) from src to dst with payload,
// of protocol 253 (RFC 3692, for experiments), which has no L4 header the
// receiver checks.
func ipv4(src, dst string, payload string) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	p[2], p[3] = byte(len(p)>>8), byte(len(p))
	p[8] = 64
	p[9] = 253
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	copy(p[20:], payload)
	binary.BigEndian.PutUint16(p[10:12], ^refChecksum(p[:20]))
	return p
}

// udp4 builds an IPv4 UDP datagram from src to dst with payload and a
// complete UDP checksum.
func udp4(src, dst string, sport, dport uint16, payload string) []byte {
	p := ipv4(src, dst, string(make([]byte, 8))+payload)
	p[9] = protoUDP
	binary.BigEndian.PutUint16(p[10:12], 0)
	binary.BigEndian.PutUint16(p[10:12], ^refChecksum(p[:20]))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:2], sport)
	binary.BigEndian.PutUint16(u[2:4], dport)
	binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
	pseudo := append(append([]byte{}, p[12:20]...), 0, protoUDP, byte(len(u)>>8), byte(len(u)))
	binary.BigEndian.PutUint16(u[6:8], ^refChecksum(append(pseudo, u...)))
	return p
}

type testNode struct {
	r    *Router
	tun  *tuntest.ChannelTUN
	bind *memBind
	peer Peer
}

func newTestNode(t *testing.T, n *memNet, name, underlay, cidr string, mac byte) *testNode {
	t.Helper()
	tn := &testNode{tun: tuntest.NewChannelTUN(), bind: n.bind(underlay)}
	tn.peer = Peer{Name: name, Underlay: tn.bind.addr, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}, VTEPMAC: [6]byte{0x0a, 0x58, 0, 0, 0, mac}}
	tn.r = New(Config{VNI: 1, LocalMAC: tn.peer.VTEPMAC, PodCIDRs: tn.peer.PodCIDRs}, tn.tun.TUN(), tn.bind)
	if err := tn.r.Start(tn.bind.addr.Port()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.r.Close() })
	return tn
}

func recvTUN(t *testing.T, tn *testNode) []byte {
	t.Helper()
	select {
	case p := <-tn.tun.Inbound:
		return p
	case <-time.After(2 * time.Second):
		t.Fatal("no packet reached the TUN")
		return nil
	}
}

func expectNothing(t *testing.T, tn *testNode) {
	t.Helper()
	select {
	case p := <-tn.tun.Inbound:
		t.Fatalf("unexpected packet reached the TUN: % x", p)
	case <-time.After(100 * time.Millisecond):
	}
}

func waitCounter(t *testing.T, get func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for get() != want {
		if time.Now().After(deadline) {
			t.Fatalf("counter = %d, want %d", get(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func twoNodes(t *testing.T) (*memNet, *testNode, *testNode) {
	n := &memNet{}
	a := newTestNode(t, n, "a", "192.0.2.11:4789", "10.244.1.0/24", 1)
	b := newTestNode(t, n, "b", "198.51.100.12:4789", "10.244.2.0/24", 2)
	if err := a.r.SetPeers([]Peer{b.peer}); err != nil {
		t.Fatal(err)
	}
	if err := b.r.SetPeers([]Peer{a.peer}); err != nil {
		t.Fatal(err)
	}
	return n, a, b
}

func TestRouterCarriesPacketsBothWays(t *testing.T) {
	_, a, b := twoNodes(t)
	ab := ipv4("10.244.1.2", "10.244.2.2", "ping a->b")
	a.tun.Outbound <- ab
	if got := recvTUN(t, b); !bytes.Equal(got, ab) {
		t.Fatalf("b got % x, want % x", got, ab)
	}
	ba := ipv4("10.244.2.2", "10.244.1.2", "pong b->a")
	b.tun.Outbound <- ba
	if got := recvTUN(t, a); !bytes.Equal(got, ba) {
		t.Fatalf("a got % x, want % x", got, ba)
	}
	waitCounter(t, a.r.Stats().TxPackets.Load, 1)
	waitCounter(t, a.r.Stats().RxPackets.Load, 1)
}

func TestRouterDropsWithoutRoute(t *testing.T) {
	_, a, b := twoNodes(t)
	a.tun.Outbound <- ipv4("10.244.1.2", "10.244.9.9", "nobody owns this")
	waitCounter(t, func() uint64 { return a.r.Stats().Drops("drop_no_route") }, 1)
	expectNothing(t, b)

	// Withdrawing the peer takes its routes with it at once.
	if err := a.r.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	a.tun.Outbound <- ipv4("10.244.1.2", "10.244.2.2", "peer gone")
	waitCounter(t, func() uint64 { return a.r.Stats().Drops("drop_no_route") }, 2)
	expectNothing(t, b)
}

func TestRouterDropsBadInbound(t *testing.T) {
	_, a, b := twoNodes(t)
	frame := func(vni uint32, dst [6]byte, inner []byte) []byte {
		f := vxlan.Frame{VNI: vni, Dst: dst, Src: a.peer.VTEPMAC, EtherType: vxlan.EtherTypeFor(inner)}
		out := make([]byte, vxlan.FrameHeaderLen+len(inner))
		f.Encode(out)
		copy(out[vxlan.FrameHeaderLen:], inner)
		return out
	}
	good := ipv4("10.244.1.2", "10.244.2.2", "x")
	from := a.peer.Underlay.String()
	for _, tc := range []struct {
		counter string
		from    string
		b       []byte
	}{
		{"drop_short", from, []byte{0x08, 0, 0}},
		{"drop_bad_flags", from, func() []byte { f := frame(1, b.peer.VTEPMAC, good); f[0] = 0; return f }()},
		{"drop_bad_vni", from, frame(2, b.peer.VTEPMAC, good)},
		{"drop_bad_ethertype", from, func() []byte { f := frame(1, b.peer.VTEPMAC, good); f[20], f[21] = 0x08, 0x06; return f }()},
		{"drop_bad_inner_ip", from, frame(1, b.peer.VTEPMAC, good)[:vxlan.FrameHeaderLen+8]},
		{"drop_bad_dst_mac", from, frame(1, [6]byte{1, 2, 3, 4, 5, 6}, good)},
		{"drop_unknown_peer", "203.0.113.99:4789", frame(1, b.peer.VTEPMAC, good)},
		{"drop_spoofed_source", from, frame(1, b.peer.VTEPMAC, ipv4("10.244.2.7", "10.244.2.2", "spoof"))},
	} {
		t.Run(tc.counter, func(t *testing.T) {
			before := b.r.Stats().Drops(tc.counter)
			b.bind.inject(tc.from, tc.b)
			waitCounter(t, func() uint64 { return b.r.Stats().Drops(tc.counter) }, before+1)
			expectNothing(t, b)
		})
	}
	if got := b.r.Stats().RxPackets.Load(); got != 0 {
		t.Fatalf("rx_packets = %d after only bad input, want 0", got)
	}
	// A good frame still passes after all that.
	b.bind.inject(from, frame(1, b.peer.VTEPMAC, good))
	if got := recvTUN(t, b); !bytes.Equal(got, good) {
		t.Fatalf("good frame after bad ones: got % x", got)
	}
}

func TestTableLongestPrefix(t *testing.T) {
	wide := &peerEntry{Peer: Peer{Name: "wide", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}}
	narrow := &peerEntry{Peer: Peer{Name: "narrow", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}}}
	tb := newTable([]*peerEntry{wide, narrow})
	for _, tc := range []struct {
		dst  string
		want *peerEntry
	}{
		{"10.244.3.7", narrow},
		{"10.244.4.7", wide},
		{"10.245.0.1", nil},
		{"fd00:10:244:3::9", narrow},
		{"fd00:10:244:4::9", nil},
	} {
		if got := tb.lookup(netip.MustParseAddr(tc.dst)); got != tc.want {
			t.Errorf("lookup(%s) = %v, want %v", tc.dst, got, tc.want)
		}
	}
}

// TestPacketPathAllocs pins the per-packet work at zero allocations.
func TestPacketPathAllocs(t *testing.T) {
	_, a, b := twoNodes(t)
	ta, tb := a.r.table.Load(), b.r.table.Load()
	inner := ipv4("10.244.1.2", "10.244.2.2", "allocs")
	buf := make([]byte, bufSize)
	allocs := testing.AllocsPerRun(1000, func() {
		copy(buf[tunOffset:], inner)
		if _, v := a.r.encapsulate(ta, buf, len(inner)); v != pass {
			t.Fatalf("encapsulate verdict %d", v)
		}
		frame := buf[tunOffset-vxlan.FrameHeaderLen : tunOffset+len(inner)]
		if v := b.r.decapsulate(frame, tb.peerAt(a.peer.Underlay.Addr())); v != pass {
			t.Fatalf("decapsulate verdict %d", v)
		}
	})
	if allocs != 0 {
		t.Fatalf("per-packet path allocates %v times, want 0", allocs)
	}
}

func BenchmarkEncapsulate(b *testing.B) {
	r := New(Config{VNI: 1, PodCIDRs: testPodCIDRs}, nil, &memBind{})
	r.SetPeers([]Peer{{Name: "p", Underlay: netip.MustParseAddrPort("192.0.2.12:4789"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}})
	t := r.table.Load()
	inner := ipv4("10.244.1.2", "10.244.2.2", string(make([]byte, 1400)))
	buf := make([]byte, bufSize)
	copy(buf[tunOffset:], inner)
	b.ReportAllocs()
	b.SetBytes(int64(len(inner)))
	for b.Loop() {
		r.encapsulate(t, buf, len(inner))
	}
}

func BenchmarkDecapsulate(b *testing.B) {
	peer := Peer{Name: "p", Underlay: netip.MustParseAddrPort("192.0.2.12:4789"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}
	r := New(Config{VNI: 1, PodCIDRs: testPodCIDRs}, nil, &memBind{})
	r.SetPeers([]Peer{peer})
	t := r.table.Load()
	inner := udp4("10.244.2.2", "10.244.1.2", 40000, 5201, string(make([]byte, 1392)))
	frame := make([]byte, vxlan.FrameHeaderLen+len(inner))
	(&vxlan.Frame{VNI: 1, EtherType: vxlan.EtherTypeIPv4}).Encode(frame)
	copy(frame[vxlan.FrameHeaderLen:], inner)
	from := peer.Underlay.Addr()
	b.ReportAllocs()
	b.SetBytes(int64(len(inner)))
	for b.Loop() {
		if v := r.decapsulate(frame, t.peerAt(from)); v != pass {
			b.Fatal(v)
		}
	}
}

func TestFlowHash(t *testing.T) {
	tcp := func(sport, dport byte, frag bool) []byte {
		p := ipv4("10.244.1.2", "10.244.2.2", "\x00\x00\x00\x00payload")
		p[9] = 6
		p[21], p[23] = sport, dport
		if frag {
			p[6] = 0x20 // more fragments
		}
		return p
	}
	if flowHash(tcp(1, 2, false)) != flowHash(tcp(1, 2, false)) {
		t.Fatal("same flow, different hash")
	}
	distinct := map[uint32]bool{}
	for port := byte(1); port <= 16; port++ {
		distinct[flowHash(tcp(port, 80, false))%4] = true
	}
	if len(distinct) < 2 {
		t.Fatal("16 flows landed in one of 4 buckets")
	}
	// Fragments carry no ports: every fragment of a flow hashes alike.
	if flowHash(tcp(1, 2, true)) != flowHash(tcp(9, 9, true)) {
		t.Fatal("fragments hashed by bytes that are not ports")
	}
	if n := testing.AllocsPerRun(100, func() { flowHash(tcp(1, 2, false)) }) - testing.AllocsPerRun(100, func() { tcp(1, 2, false) }); n != 0 {
		t.Fatalf("flowHash allocates %v", n)
	}
}

// testPodCIDRs are the local pod CIDRs of test routers that are not one of
// a test's nodes: every test address is inside.
var testPodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00::/16")}
