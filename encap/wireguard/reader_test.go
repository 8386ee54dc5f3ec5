package wireguard

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// fakeTUN returns queued batches from Read, copying them into the caller's
// buffers at its offset as a real TUN does, and records writes and closes.
type fakeTUN struct {
	reads  chan fakeRead
	closed chan struct{}
	once   sync.Once
	closes atomic.Int32
	writes chan [][]byte
}

type fakeRead struct {
	pkts [][]byte
	err  error
}

func newFakeTUN() *fakeTUN {
	return &fakeTUN{reads: make(chan fakeRead, 4), closed: make(chan struct{}), writes: make(chan [][]byte, 4)}
}

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case r := <-f.reads:
		for i, p := range r.pkts {
			sizes[i] = copy(bufs[i][offset:], p)
		}
		return len(r.pkts), r.err
	case <-f.closed:
		return 0, os.ErrClosed
	}
}

func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	f.writes <- bufs
	return len(bufs), nil
}

func (f *fakeTUN) Close() error {
	f.closes.Add(1)
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeTUN) File() *os.File           { return nil }
func (f *fakeTUN) MTU() (int, error)        { return 1420, nil }
func (f *fakeTUN) Name() (string, error)    { return "fake", nil }
func (f *fakeTUN) Events() <-chan tun.Event { return nil }
func (f *fakeTUN) BatchSize() int           { return 8 }

// batch is a device-style batch: buffers with headroom at offset.
func batch(n, offset int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, offset+2048)
	}
	return bufs, make([]int, n)
}

// TestReaderDivertsInPlace checks that the device keeps, in order and in
// the very buffers it read into, every packet Divert leaves, and that
// Divert sees the batch as read.
func TestReaderDivertsInPlace(t *testing.T) {
	ft := newFakeTUN()
	r := newReader(ft)
	pkts := [][]byte{
		ipv4("10.244.1.2", "10.244.2.2", "wg 0"),
		ipv4("10.244.1.2", "10.244.3.2", "vxlan 1"),
		ipv4("10.244.1.2", "10.244.2.2", "wg 2"),
		ipv4("10.244.1.2", "10.244.9.9", "no route 3"),
		ipv4("10.244.1.2", "10.244.2.2", "wg 4"),
	}
	const offset = 16
	bufs, sizes := batch(8, offset)
	backing := make([]*byte, len(bufs))
	for i := range bufs {
		backing[i] = &bufs[i][0]
	}
	var seen int
	r.setDivert(func(b [][]byte, s []int, off int) {
		seen = len(b)
		if off != offset || len(s) != len(b) {
			t.Errorf("divert got offset %d, %d sizes for %d packets", off, len(s), len(b))
		}
		for i := range b {
			if &b[i][0] != backing[i] {
				t.Errorf("divert packet %d: not the device's buffer", i)
			}
			if !bytes.Contains(b[i][off:off+s[i]], []byte("wg")) {
				s[i] = 0
			}
		}
	})
	ft.reads <- fakeRead{pkts: pkts}
	n, err := r.Read(bufs, sizes, offset)
	if err != nil || n != len(pkts) || seen != len(pkts) {
		t.Fatalf("Read = %d, %v (divert saw %d); want %d, nil", n, err, seen, len(pkts))
	}
	for i := range n {
		if &bufs[i][0] != backing[i] {
			t.Fatalf("slot %d holds another buffer after Read", i)
		}
		want := 0
		if i%2 == 0 {
			want = len(pkts[i])
		}
		if sizes[i] != want {
			t.Fatalf("sizes[%d] = %d, want %d", i, sizes[i], want)
		}
		if want > 0 && !bytes.Equal(bufs[i][offset:offset+sizes[i]], pkts[i]) {
			t.Fatalf("kept packet %d changed: % x", i, bufs[i][offset:offset+sizes[i]])
		}
	}
}

// TestReaderWaitsForDivert checks that nothing is read (so nothing passes
// unfiltered) before SetDivert, and that Close ends such a wait.
func TestReaderWaitsForDivert(t *testing.T) {
	ft := newFakeTUN()
	r := newReader(ft)
	ft.reads <- fakeRead{pkts: [][]byte{ipv4("10.244.1.2", "10.244.2.2", "early")}}
	type result struct {
		n     int
		err   error
		sizes []int
	}
	read := func(r *reader) chan result {
		c := make(chan result, 1)
		go func() {
			bufs, sizes := batch(4, 16)
			n, err := r.Read(bufs, sizes, 16)
			c <- result{n, err, sizes}
		}()
		return c
	}
	done := read(r)
	select {
	case res := <-done:
		t.Fatalf("Read returned %d, %v before SetDivert", res.n, res.err)
	case <-time.After(50 * time.Millisecond):
	}
	r.setDivert(func(b [][]byte, s []int, off int) { clear(s) })
	r.setDivert(func(b [][]byte, s []int, off int) { t.Error("second divert used") })
	select {
	case res := <-done:
		if res.n != 1 || res.err != nil || res.sizes[0] != 0 {
			t.Fatalf("Read after SetDivert = %d, %v, sizes %v; want the packet taken", res.n, res.err, res.sizes[:1])
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still waiting after SetDivert")
	}

	// Close ends a wait for SetDivert, and closes the real TUN once.
	r2 := newReader(newFakeTUN())
	done = read(r2)
	time.Sleep(20 * time.Millisecond)
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if !errors.Is(res.err, os.ErrClosed) {
			t.Fatalf("Read after Close = %d, %v; want os.ErrClosed", res.n, res.err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end a Read waiting for SetDivert")
	}
	r2.Close()
	if got := r2.Device.(*fakeTUN).closes.Load(); got != 1 {
		t.Fatalf("real TUN closed %d times, want 1", got)
	}
}

// TestReaderErrors checks that a read error comes back with whatever the
// read produced, still filtered, and that an empty failed read is not
// filtered at all.
func TestReaderErrors(t *testing.T) {
	ft := newFakeTUN()
	r := newReader(ft)
	calls := 0
	r.setDivert(func(b [][]byte, s []int, off int) {
		calls++
		s[0] = 0
	})
	bufs, sizes := batch(4, 16)
	ft.reads <- fakeRead{pkts: [][]byte{ipv4("10.244.1.2", "10.244.9.9", "x"), ipv4("10.244.1.2", "10.244.2.2", "y")}, err: tun.ErrTooManySegments}
	n, err := r.Read(bufs, sizes, 16)
	if n != 2 || !errors.Is(err, tun.ErrTooManySegments) || calls != 1 || sizes[0] != 0 || sizes[1] == 0 {
		t.Fatalf("Read = %d, %v, sizes %v, %d divert calls", n, err, sizes[:2], calls)
	}
	ft.reads <- fakeRead{err: errors.New("tun gone")}
	if n, err := r.Read(bufs, sizes, 16); n != 0 || err == nil || calls != 1 {
		t.Fatalf("failed empty read = %d, %v, %d divert calls; want 0, the error, no call", n, err, calls)
	}
	// Writes and the rest go to the real TUN untouched.
	out := [][]byte{make([]byte, 16+20)}
	if n, err := r.Write(out, 16); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if got := <-ft.writes; &got[0][0] != &out[0][0] {
		t.Fatal("Write did not pass the caller's buffers through")
	}
	r.Close()
	if n, err := r.Read(bufs, sizes, 16); n != 0 || !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close = %d, %v", n, err)
	}
}

// TestReaderBatchesWaitingFrames checks that Read goes on reading while
// the TUN has frames waiting and the batch has room for a whole
// super-packet, passes the whole batch to Divert once, and stops at a
// deadline without an error.
func TestReaderBatchesWaitingFrames(t *testing.T) {
	ft := newFakeTUN()
	r := newReader(ft)
	r.ready = func() bool { return len(ft.reads) > 0 }
	var seen []int
	r.setDivert(func(b [][]byte, s []int, off int) { seen = append(seen, len(b)) })
	pkt := ipv4("10.244.1.2", "10.244.2.2", "udp")
	const slots = moreRoom + 3
	bufs, sizes := batch(slots, 16)
	// Three single packets waiting: one batch of three.
	for range 3 {
		ft.reads <- fakeRead{pkts: [][]byte{pkt}}
	}
	if n, err := r.Read(bufs, sizes, 16); n != 3 || err != nil || len(seen) != 1 || seen[0] != 3 {
		t.Fatalf("Read = %d, %v, divert saw %v; want 3 packets in one batch", n, err, seen)
	}
	// One more frame only while moreRoom slots are free: after a frame of
	// four segments 63 are left, and the next frame waits for the next
	// Read.
	seen = nil
	ft.reads <- fakeRead{pkts: [][]byte{pkt, pkt, pkt, pkt}}
	ft.reads <- fakeRead{pkts: [][]byte{pkt}}
	if n, err := r.Read(bufs, sizes, 16); n != 4 || err != nil {
		t.Fatalf("Read = %d, %v; want 4: the next frame may not fit", n, err)
	}
	if n, err := r.Read(bufs, sizes, 16); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want the waiting packet", n, err)
	}
	// A deadline on a further read ends the batch, without error.
	ft.reads <- fakeRead{pkts: [][]byte{pkt}}
	ft.reads <- fakeRead{err: os.ErrDeadlineExceeded}
	if n, err := r.Read(bufs, sizes, 16); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want 1, nil", n, err)
	}
	// Another error comes back with the packets read before it.
	ft.reads <- fakeRead{pkts: [][]byte{pkt}}
	ft.reads <- fakeRead{pkts: [][]byte{pkt}, err: tun.ErrTooManySegments}
	if n, err := r.Read(bufs, sizes, 16); n != 2 || !errors.Is(err, tun.ErrTooManySegments) {
		t.Fatalf("Read = %d, %v; want 2, ErrTooManySegments", n, err)
	}
	r.Close()
}
