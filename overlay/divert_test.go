package overlay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weftnet/weft/encap/wireguard"
)

// fakeSender counts VXLAN frames without allocating.
type fakeSender struct {
	frames int
	err    error
}

func (s *fakeSender) Send(frames [][]byte, _ netip.AddrPort, _ uint32) error {
	s.frames += len(frames)
	return s.err
}
func (s *fakeSender) Buckets() int { return 4 }

// wgPeer is a WireGuard peer owning cidr.
func wgPeer(name, underlay, cidr string) Peer {
	pfx := netip.MustParsePrefix(cidr)
	ap := netip.MustParseAddrPort(underlay)
	return Peer{Name: name, Underlay: ap, PodCIDRs: []netip.Prefix{pfx}, Transport: TransportWireGuard,
		WireGuard: wireguard.Peer{Endpoint: ap, AllowedIPs: []netip.Prefix{pfx}}}
}

// deviceOffset is the headroom wireguard-go reads the TUN at (its
// transport header): less than the VXLAN header needs.
const deviceOffset = 16

// deviceBatch lays pkts out as the WireGuard device's TUN read leaves them.
func deviceBatch(pkts [][]byte) ([][]byte, []int) {
	bufs := make([][]byte, len(pkts))
	sizes := make([]int, len(pkts))
	for i, p := range pkts {
		bufs[i] = make([]byte, deviceOffset+2048)
		sizes[i] = copy(bufs[i][deviceOffset:], p)
	}
	return bufs, sizes
}

// TestDivertSplitsBatch hands one node's filter a mixed batch, as the
// WireGuard device would under wireguard-across-sites: packets for the
// WireGuard peer stay, untouched and in their own buffers; the VXLAN one
// reaches the VXLAN peer's TUN; the rest are dropped and counted, the
// too-big one answered with ICMP.
func TestDivertSplitsBatch(t *testing.T) {
	n := &memNet{}
	b := newTestNode(t, n, "b", "198.51.100.12:4789", "10.244.2.0/24", 2)
	aTUN := tuntest.NewChannelTUN()
	aBind := n.bind("192.0.2.11:4789")
	a := New(Config{VNI: 1, LocalMAC: [6]byte{0x0a, 0x58, 0, 0, 0, 1}, PodCIDRs: testPodCIDRs, WireGuard: &fakeWireGuard{}, ICMPSource: netip.MustParseAddr("10.244.1.1")}, aTUN.TUN(), aBind)
	if err := a.Start(aBind.addr.Port()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	aPeer := Peer{Name: "a", Underlay: aBind.addr, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, VTEPMAC: [6]byte{0x0a, 0x58, 0, 0, 0, 1}}
	if err := b.r.SetPeers([]Peer{aPeer}); err != nil {
		t.Fatal(err)
	}
	c := wgPeer("c", "203.0.113.13:51820", "10.244.3.0/24")
	if err := a.SetPeers([]Peer{b.peer, c}); err != nil {
		t.Fatal(err)
	}
	a.pathMTUFor(c.Underlay.Addr()).v.Store(1000) // c's path takes 1000-byte datagrams
	icmps := make(chan []byte, 4)
	go func() {
		for p := range aTUN.Inbound {
			icmps <- p
		}
	}()

	toB := ipv4("10.244.1.2", "10.244.2.2", "vxlan 1")
	big := ipv4("10.244.1.2", "10.244.3.2", string(make([]byte, 1200)))
	big[6] = 0x40 // DF
	pkts := [][]byte{
		ipv4("10.244.1.2", "10.244.3.2", "wg 0"),
		toB,
		ipv4("10.244.1.2", "10.244.9.9", "no route 2"),
		{0x00, 0x01, 0x02, 0x03}, // not IP
		big,                      // too big for c's path
		ipv4("10.244.1.2", "10.244.3.7", "wg 5"),
		nil, // an empty slot stays empty
		ipv4("10.244.1.2", "10.244.3.2", "")[:12], // truncated IPv4 header
	}
	bufs, sizes := deviceBatch(pkts)
	backing := make([]*byte, len(bufs))
	for i := range bufs {
		backing[i] = &bufs[i][0]
	}
	a.Divert()(bufs, sizes, deviceOffset)

	for i := range bufs {
		if &bufs[i][0] != backing[i] {
			t.Fatalf("slot %d holds another buffer", i)
		}
		keep := i == 0 || i == 5
		if keep != (sizes[i] > 0) {
			t.Fatalf("packet %d: size %d after divert; kept for WireGuard: %v", i, sizes[i], keep)
		}
		if keep && !bytes.Equal(bufs[i][deviceOffset:deviceOffset+sizes[i]], pkts[i]) {
			t.Fatalf("packet %d for WireGuard changed: % x", i, bufs[i][deviceOffset:deviceOffset+sizes[i]])
		}
	}
	if got := recvTUN(t, b); !bytes.Equal(got, toB) {
		t.Fatalf("b got % x, want % x", got, toB)
	}
	icmp := <-icmps
	if len(icmp) < 28 || icmp[9] != 1 || icmp[20] != 3 || icmp[21] != 4 {
		t.Fatalf("a's TUN got % x, want ICMP fragmentation needed", icmp)
	}
	if mtu := binary.BigEndian.Uint16(icmp[26:28]); int(mtu) != (1000-wireguard.OverheadIPv4)&^15 {
		t.Fatalf("ICMP carries MTU %d", mtu)
	}
	st := a.Stats()
	for name, want := range map[string]uint64{
		"tx_packets": 3, "drop_no_route": 1, "drop_not_ip": 2, "drop_too_big": 1, "icmp_frag_needed_sent": 1, "icmp6_packet_too_big_sent": 0, "drop_send_error": 0,
	} {
		if got := st.Snapshot()[name]; got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	if want := uint64(2*len(pkts[0]) + len(toB)); st.TxBytes.Load() != want {
		t.Errorf("tx_bytes = %d, want %d", st.TxBytes.Load(), want)
	}
}

// divertRouter is a router with a VXLAN peer b (10.244.2.0/24) and a
// WireGuard peer c (10.244.3.0/24) whose VXLAN frames go to sender.
func divertRouter(t testing.TB, sender *fakeSender) *Router {
	r := New(Config{VNI: 1, PodCIDRs: testPodCIDRs, WireGuard: &fakeWireGuard{}, Sender: sender}, nil, &memBind{})
	b := Peer{Name: "b", Underlay: netip.MustParseAddrPort("198.51.100.12:4789"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}
	if err := r.SetPeers([]Peer{b, wgPeer("c", "203.0.113.13:51820", "10.244.3.0/24")}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDivertSendErrors(t *testing.T) {
	for _, err := range []error{errors.New("message too long"), net.ErrClosed} {
		sender := &fakeSender{err: err}
		r := divertRouter(t, sender)
		bufs, sizes := deviceBatch([][]byte{
			ipv4("10.244.1.2", "10.244.2.2", "vxlan"),
			ipv4("10.244.1.2", "10.244.3.2", "wg"),
		})
		r.Divert()(bufs, sizes, deviceOffset)
		if sizes[0] != 0 || sizes[1] == 0 || sender.frames != 1 {
			t.Fatalf("%v: sizes %v, %d frames sent", err, sizes, sender.frames)
		}
		if got := r.Stats().Drops("drop_send_error"); got != 1 {
			t.Fatalf("%v: drop_send_error = %d, want 1", err, got)
		}
		if got := r.Stats().TxPackets.Load(); got != 1 {
			t.Fatalf("%v: tx_packets = %d, want 1 (the WireGuard packet)", err, got)
		}
	}
}

// TestDivertAllocs pins the filter at zero allocations per batch once its
// buffers exist.
func TestDivertAllocs(t *testing.T) {
	sender := &fakeSender{}
	r := divertRouter(t, sender)
	divert := r.Divert()
	pkts := [][]byte{
		ipv4("10.244.1.2", "10.244.3.2", "wg"),
		ipv4("10.244.1.2", "10.244.2.2", "vxlan"),
		ipv4("10.244.1.2", "10.244.2.3", "vxlan, other flow"),
		ipv4("10.244.1.2", "10.244.9.9", "no route"),
		{0x60, 0},
		ipv4("10.244.1.2", "10.244.3.2", "wg"),
	}
	bufs, sizes := deviceBatch(pkts)
	want := append([]int(nil), sizes...)
	divert(bufs, sizes, deviceOffset) // first use makes the buffers
	allocs := testing.AllocsPerRun(1000, func() {
		copy(sizes, want)
		divert(bufs, sizes, deviceOffset)
	})
	if allocs != 0 {
		t.Fatalf("divert allocates %v times per batch, want 0", allocs)
	}
	if sender.frames != 2*1002 { // the first call, AllocsPerRun's warm-up and its 1000 runs
		t.Fatalf("%d VXLAN frames sent, want %d", sender.frames, 2*1002)
	}
}

func BenchmarkDivertWireGuard(b *testing.B) { benchmarkDivert(b, "10.244.3.2") }

func BenchmarkDivertVXLAN(b *testing.B) { benchmarkDivert(b, "10.244.2.2") }

// benchmarkDivert runs batches of 64 packets to dst through the filter.
func benchmarkDivert(b *testing.B, dst string) {
	r := divertRouter(b, &fakeSender{})
	divert := r.Divert()
	pkts := make([][]byte, 64)
	for i := range pkts {
		pkts[i] = ipv4("10.244.1.2", dst, string(make([]byte, 1380)))
	}
	bufs, sizes := deviceBatch(pkts)
	want := append([]int(nil), sizes...)
	b.ReportAllocs()
	b.SetBytes(int64(len(pkts) * len(pkts[0])))
	for b.Loop() {
		copy(sizes, want)
		divert(bufs, sizes, deviceOffset)
	}
}
