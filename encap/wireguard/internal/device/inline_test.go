package device

// Tests of weft's inline data path (inline.go): the transport header codec
// (round trip, malformed inputs, fuzz), seal/open, and a device pair over
// allocation-free in-memory TUNs and binds that pins the encrypted path at
// zero allocations per packet.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

func TestTransportHeaderRoundTrip(t *testing.T) {
	for _, h := range []transportHeader{
		{},
		{receiver: 1, counter: 2},
		{receiver: 0xffffffff, counter: 0xffffffffffffffff},
		{receiver: 0x01020304, counter: RejectAfterMessages - 1},
	} {
		msg := make([]byte, MessageTransportSize+7)
		h.encode(msg)
		// The header as the WireGuard paper lays it out, byte by byte.
		want := make([]byte, 16)
		want[0] = 4
		binary.LittleEndian.PutUint32(want[4:], h.receiver)
		binary.LittleEndian.PutUint64(want[8:], h.counter)
		if !bytes.Equal(msg[:16], want) {
			t.Errorf("%+v encodes as % x, want % x", h, msg[:16], want)
		}
		var got transportHeader
		if err := got.decode(msg); err != nil || got != h {
			t.Errorf("%+v: decode = %+v, %v", h, got, err)
		}
	}
}

func TestTransportHeaderMalformed(t *testing.T) {
	valid := func(n int) []byte {
		b := make([]byte, n)
		transportHeader{receiver: 7, counter: 9}.encode(b)
		return b
	}
	withType := func(typ uint32) []byte {
		b := valid(MessageTransportSize)
		binary.LittleEndian.PutUint32(b, typ)
		return b
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want error
	}{
		{"empty", nil, io.ErrShortBuffer},
		{"header only", valid(MessageTransportHeaderSize), io.ErrShortBuffer},
		{"one short of a keepalive", valid(MessageTransportSize - 1), io.ErrShortBuffer},
		{"initiation", withType(MessageInitiationType), errNotTransport},
		{"response", withType(MessageResponseType), errNotTransport},
		{"cookie reply", withType(MessageCookieReplyType), errNotTransport},
		{"reserved byte set", withType(MessageTransportType | 1<<8), errNotTransport},
		{"reserved high byte set", withType(MessageTransportType | 1<<24), errNotTransport},
	} {
		var h transportHeader
		if err := h.decode(tc.msg); !errors.Is(err, tc.want) {
			t.Errorf("%s: decode = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// FuzzTransportHeader: decode never panics, and what it accepts encodes
// back to the same 16 bytes.
func FuzzTransportHeader(f *testing.F) {
	f.Add(make([]byte, 32))
	b := make([]byte, 48)
	transportHeader{receiver: 1, counter: 1}.encode(b)
	f.Add(b)
	f.Fuzz(func(t *testing.T, msg []byte) {
		var h transportHeader
		if h.decode(msg) != nil {
			return
		}
		out := make([]byte, MessageTransportHeaderSize)
		h.encode(out)
		if !bytes.Equal(out, msg[:MessageTransportHeaderSize]) {
			t.Fatalf("decode(% x) = %+v, encodes as % x", msg[:16], h, out)
		}
	})
}

// testKeypair is a keypair whose send and receive keys are the same, so
// that what it seals it opens.
func testKeypair(tb testing.TB) *Keypair {
	key := make([]byte, chacha20poly1305.KeySize)
	rand.Read(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		tb.Fatal(err)
	}
	return &Keypair{send: aead, receive: aead, remoteIndex: 0x11223344, created: time.Now()}
}

func TestSealOpenRoundTrip(t *testing.T) {
	kp := testKeypair(t)
	var nb aeadNonce
	for _, tc := range []struct{ n, mtu, padded int }{
		{0, 1420, 0},         // keepalive
		{1, 1420, 16},        // padded to 16
		{20, 1420, 32},       //
		{1420, 1420, 1420},   // a full packet is not padded past the MTU
		{1419, 1420, 1420},   // nor is an almost full one
		{1401, 1420, 1408},   //
		{100, 0, 112},        // no MTU: padded to 16
		{1500, 1420, 1500},   // bigger than the MTU: padded as the last unit
		{65000, 1420, 65004}, // a GSO-sized packet (last unit 1100)
	} {
		buf := make([]byte, MaxMessageSize)
		pkt := make([]byte, tc.n)
		rand.Read(pkt)
		copy(buf[MessageTransportHeaderSize:], pkt)
		msg := sealTransport(kp, 42, buf, tc.n, tc.mtu, &nb)
		if len(msg) != MessageTransportHeaderSize+tc.padded+16 {
			t.Errorf("n %d mtu %d: message of %d bytes, want %d", tc.n, tc.mtu, len(msg), MessageTransportHeaderSize+tc.padded+16)
			continue
		}
		var h transportHeader
		if err := h.decode(msg); err != nil || h.receiver != kp.remoteIndex || h.counter != 42 {
			t.Errorf("n %d: header %+v, %v", tc.n, h, err)
		}
		plain, ok := openTransport(kp, &h, msg, &nb)
		if !ok || !bytes.Equal(plain[:tc.n], pkt) || len(plain) != tc.padded || !allZero(plain[tc.n:]) {
			t.Errorf("n %d: open = %d bytes, %v", tc.n, len(plain), ok)
		}
		// A flipped bit is refused.
		msg[len(msg)-1] ^= 1
		if _, ok := openTransport(kp, &h, msg, &nb); ok {
			t.Errorf("n %d: a corrupted message opened", tc.n)
		}
	}
}

func TestSealOpenCounterAuthenticated(t *testing.T) {
	kp := testKeypair(t)
	var nb aeadNonce
	buf := make([]byte, 256)
	msg := sealTransport(kp, 5, buf, 64, 1420, &nb)
	h := transportHeader{receiver: kp.remoteIndex, counter: 6}
	if _, ok := openTransport(kp, &h, msg, &nb); ok {
		t.Fatal("a message opened under another counter")
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// FuzzOpenTransport feeds arbitrary datagrams to the receive path's
// decode and open: nothing panics, and a message that opens is exactly
// what sealing its plaintext under its counter gives (so only sealed
// messages open).
func FuzzOpenTransport(f *testing.F) {
	kp := &Keypair{remoteIndex: 9}
	aead, _ := chacha20poly1305.New(make([]byte, 32))
	kp.send, kp.receive = aead, aead
	var nb aeadNonce
	for _, n := range []int{0, 16, 100} {
		buf := make([]byte, 256)
		f.Add(append([]byte(nil), sealTransport(kp, uint64(n), buf, n, 1420, &nb)...))
	}
	f.Add(make([]byte, 31))
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var nb aeadNonce
		var h transportHeader
		if h.decode(msg) != nil {
			return
		}
		in := append([]byte(nil), msg...)
		plain, ok := openTransport(kp, &h, in, &nb)
		if !ok {
			return
		}
		buf := make([]byte, MessageTransportHeaderSize+len(plain)+16)
		copy(buf[MessageTransportHeaderSize:], plain)
		kp2 := &Keypair{send: kp.send, receive: kp.receive, remoteIndex: h.receiver}
		again := sealTransport(kp2, h.counter, buf, len(plain), 0, &nb)
		if !bytes.Equal(again, msg) {
			t.Fatalf("% x opened but does not re-seal to itself", msg)
		}
	})
}

// memBind is a conn.Bind between two devices in one process that
// allocates nothing per datagram: datagrams are copied into the receiving
// side's preallocated slots, which travel on channels of slot numbers.
type memBind struct {
	peer   *memBind
	slots  [][]byte
	sizes  []int
	free   chan int // slots the sender may fill
	rx     chan int // filled slots, in order
	mu     sync.Mutex
	closed chan struct{}
	ep     conn.Endpoint
}

type memEndpoint struct{ port uint16 }

func (e *memEndpoint) ClearSrc()           {}
func (e *memEndpoint) SrcToString() string { return "" }
func (e *memEndpoint) DstToString() string { return fmt.Sprintf("mem:%d", e.port) }
func (e *memEndpoint) DstToBytes() []byte  { return []byte{byte(e.port)} }
func (e *memEndpoint) DstIP() netip.Addr   { return netip.AddrFrom4([4]byte{192, 0, 2, byte(e.port)}) }
func (e *memEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

func newMemBinds() [2]*memBind {
	var b [2]*memBind
	for i := range b {
		b[i] = &memBind{free: make(chan int, 1024), rx: make(chan int, 1024), ep: &memEndpoint{port: uint16(i + 1)}}
		for s := 0; s < 1024; s++ {
			b[i].slots = append(b[i].slots, make([]byte, MaxMessageSize))
			b[i].sizes = append(b[i].sizes, 0)
			b[i].free <- s
		}
	}
	b[0].peer, b[1].peer = b[1], b[0]
	return b
}

func (b *memBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = make(chan struct{})
	closed := b.closed
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var s int
		select {
		case s = <-b.rx:
		case <-closed:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			sizes[n] = copy(bufs[n], b.slots[s][:b.sizes[s]])
			eps[n] = b.peer.ep
			n++
			b.free <- s
			if n == len(bufs) {
				return n, nil
			}
			select {
			case s = <-b.rx:
			default:
				return n, nil
			}
		}
	}
	return []conn.ReceiveFunc{recv}, uint16(b.ep.(*memEndpoint).port), nil
}

func (b *memBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		close(b.closed)
		b.closed = nil
	}
	return nil
}

func (b *memBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	for _, d := range bufs {
		s := <-b.peer.free
		b.peer.sizes[s] = copy(b.peer.slots[s], d)
		b.peer.rx <- s
	}
	return nil
}

func (b *memBind) ParseEndpoint(string) (conn.Endpoint, error) { return b.peer.ep, nil }
func (b *memBind) SetMark(uint32) error                        { return nil }
func (b *memBind) BatchSize() int                              { return conn.IdealBatchSize }

// memTUN hands the device the packet in pkt once per token on in, and
// counts what the device writes, with a token on out per write call.
type memTUN struct {
	pkt    []byte
	in     chan struct{}
	out    chan int
	closed chan struct{}
	once   sync.Once
	events chan tun.Event
	last   []byte
}

func newMemTUN(pkt []byte) *memTUN {
	t := &memTUN{pkt: pkt, in: make(chan struct{}, 1024), out: make(chan int, 1024), closed: make(chan struct{}), events: make(chan tun.Event, 1)}
	t.events <- tun.EventUp
	t.last = make([]byte, len(pkt))
	return t
}

func (t *memTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-t.in:
	case <-t.closed:
		return 0, os.ErrClosed
	}
	sizes[0] = copy(bufs[0][offset:], t.pkt)
	return 1, nil
}

func (t *memTUN) Write(bufs [][]byte, offset int) (int, error) {
	copy(t.last, bufs[len(bufs)-1][offset:])
	t.out <- len(bufs)
	return len(bufs), nil
}

func (t *memTUN) Close() error {
	t.once.Do(func() { close(t.closed) })
	return nil
}

func (t *memTUN) File() *os.File           { return nil }
func (t *memTUN) MTU() (int, error)        { return 1420, nil }
func (t *memTUN) Name() (string, error)    { return "mem", nil }
func (t *memTUN) Events() <-chan tun.Event { return t.events }
func (t *memTUN) BatchSize() int           { return conn.IdealBatchSize }

// TestInlineZeroAllocs sends packets from one device to the other over
// the in-memory TUNs and binds once a session is up: TUN read, peer
// lookup, seal, send, receive, open, replay check, allowed-IPs check and
// TUN write, in both devices, allocate nothing per packet. It also checks
// that the packets took the inline path and arrived intact.
func TestInlineZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	cfg, endpointCfg := genConfigs(t)
	binds := newMemBinds()
	pkt := tuntest.Ping(netip.MustParseAddr("1.0.0.2"), netip.MustParseAddr("1.0.0.1")) // dst, src
	pkt = append(pkt, make([]byte, 1000)...)                                            // a 1 KB ping
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	tuns := [2]*memTUN{newMemTUN(pkt), newMemTUN(pkt)}
	var devs [2]*Device
	for i := range devs {
		devs[i] = NewDevice(tuns[i], binds[i], NewLogger(LogLevelError, fmt.Sprintf("dev%d: ", i)))
		defer devs[i].Close()
		if err := devs[i].IpcSet(cfg[i]); err != nil {
			t.Fatal(err)
		}
		if err := devs[i].Up(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range devs {
		if err := devs[i].IpcSet(fmt.Sprintf(endpointCfg[i], 1)); err != nil {
			t.Fatal(err)
		}
	}
	timeout := time.NewTimer(time.Hour) // one timer: time.After would allocate per packet
	defer timeout.Stop()
	send := func() {
		tuns[0].in <- struct{}{}
		timeout.Reset(5 * time.Second)
		select {
		case <-tuns[1].out:
		case <-timeout.C:
			t.Fatal("a packet did not arrive")
		}
	}
	// The first packet waits for the handshake (upstream's staged path);
	// the ones after it find the session.
	for range 100 {
		send()
	}
	before := devs[0].inlinePackets.Load()
	allocs := testing.AllocsPerRun(2000, send)
	if allocs != 0 {
		t.Errorf("%v allocations per packet, want 0", allocs)
	}
	if got := devs[0].inlinePackets.Load() - before; got < 2000 {
		t.Errorf("%d of 2001 packets were sealed inline", got)
	}
	if !bytes.Equal(tuns[1].last, pkt) {
		t.Error("the packet arrived changed")
	}
}
