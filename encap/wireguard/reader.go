package wireguard

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// Divert is handed every outbound batch the device reads from the node's
// TUN, before the device looks at it: packet i is
// bufs[i][offset:offset+sizes[i]], len(bufs) packets in all (at most the
// device's batch size). Divert takes out of the batch every packet that is
// not for a WireGuard peer — it sends it another way or drops it — by
// setting its size to 0; the device encrypts what is left, in place, in
// the order read.
//
// The buffers belong to the device: Divert may read and write them but must
// not keep them, nor move them between slots (wireguard-go pairs each
// buffer with its own queue element, so a slot's buffer never changes;
// that is why taken packets are zeroed, not compacted away: the device
// skips empty slots). Divert is called from the device's single TUN reader
// goroutine, one batch at a time.
type Divert func(bufs [][]byte, sizes []int, offset int)

// reader is the tun.Device the wireguard-go device sees: the node's real
// TUN, whose Read passes each batch through Divert before returning it.
// There is no copy and no goroutine hand-off: the device reads straight into
// its own buffers, at its own headroom and batch size, as standalone
// wireguard-go does. Writes, events and MTU are the real TUN's.
//
// A TUN read returns one frame: a TCP or UDP super-packet (split by the
// TUN into up to ~45 segments) or a single packet. Single packets (UDP
// streams, small TCP segments) would make a batch of one each, so one
// encryption and one UDP send per packet. Read therefore goes on reading
// while the TUN has a frame waiting (ready, a zero-timeout poll) and the
// batch has room for a whole super-packet (moreRoom slots): the batch then
// leaves in one UDP GSO send, and the peer receives it as one GRO read.
type reader struct {
	tun.Device
	// ready reports whether a read would find a frame now; nil when the
	// TUN cannot tell (not a kernel TUN): one frame per Read then.
	ready func() bool
	// tun writes straight to the TUN: a batch of one packet (a ping, an
	// ack) as it is, a longer one coalesced when the TUN has virtio
	// headers (reader_linux.go); nil when the TUN is no kernel TUN.
	tun *tunWriter
	// raw reads frames straight into the device's buffers and splits
	// them there (reader_linux.go, offload.SplitFrame); nil when the TUN is not a
	// kernel TUN with virtio headers: reads go through its Read then.
	raw *rawReader

	once    sync.Once
	divert  Divert        // set once, before started is closed
	started chan struct{} // closed by setDivert
	closed  chan struct{} // closed by Close
	close   sync.Once

	// A hand-off (Device.Pause): a read that fails with the TUN file's
	// deadline waits on wake until resume closes it.
	pauseMu sync.Mutex
	wake    chan struct{}
	parked  atomic.Bool
}

// pause makes the next deadline error park the reader.
func (r *reader) pause() {
	r.pauseMu.Lock()
	if r.wake == nil {
		r.wake = make(chan struct{})
	}
	r.pauseMu.Unlock()
}

func (r *reader) resume() {
	r.pauseMu.Lock()
	if r.wake != nil {
		close(r.wake)
		r.wake = nil
	}
	r.pauseMu.Unlock()
}

func (r *reader) isParked() bool { return r.parked.Load() }

// park waits for resume or Close after a read failed with the deadline;
// false means closed.
func (r *reader) park() bool {
	r.pauseMu.Lock()
	if r.wake == nil { // a deadline before Device.Pause: the router paused first
		r.wake = make(chan struct{})
	}
	wake := r.wake
	r.pauseMu.Unlock()
	r.parked.Store(true)
	defer r.parked.Store(false)
	select {
	case <-wake:
		return true
	case <-r.closed:
		return false
	}
}

func newReader(dev tun.Device) *reader {
	r := &reader{Device: dev, started: make(chan struct{}), closed: make(chan struct{})}
	attachTUN(r, dev)
	return r
}

// moreRoom is the free room a batch must have for Read to read one more
// frame into it: a TCP super-packet of 64 KiB at the smallest MSS the TUN
// splits without error (wireguard-go refuses a frame whose segments do not
// fit, tun.ErrTooManySegments, and its packets are lost).
const moreRoom = 64

// setDivert starts the reads; later calls change nothing.
func (r *reader) setDivert(f Divert) {
	r.once.Do(func() {
		r.divert = f
		close(r.started)
	})
}

// Read reads one batch from the TUN and lets Divert take its share. Until
// setDivert is called it reads nothing, so no packet passes unfiltered.
func (r *reader) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-r.started:
	default:
		select {
		case <-r.started:
		case <-r.closed:
			return 0, os.ErrClosed
		}
	}
	for {
		n, err := r.readBatch(bufs, sizes, offset)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			if r.park() {
				continue
			}
			return 0, os.ErrClosed
		}
		if n > 0 {
			r.divert(bufs[:n], sizes[:n], offset)
		}
		return n, err
	}
}

// readBatch reads one frame, waiting for it, then readMore.
func (r *reader) readBatch(bufs [][]byte, sizes []int, offset int) (int, error) {
	if r.raw == nil {
		n, err := r.Device.Read(bufs, sizes, offset)
		if err == nil && r.ready != nil {
			n, err = r.readMore(bufs, sizes, offset, n)
		}
		return n, err
	}
	for {
		n, err := r.raw.readFrame(bufs, sizes, offset, true)
		if err != nil {
			return 0, err
		}
		if n > 0 {
			return r.readMoreRaw(bufs, sizes, offset, n)
		}
		// A dropped frame: wait for the next.
	}
}

// readMoreRaw is readMore for the raw reader: a read that finds nothing
// waiting (EAGAIN) ends the batch, so no poll is needed before it.
func (r *reader) readMoreRaw(bufs [][]byte, sizes []int, offset, n int) (int, error) {
	for len(bufs)-n >= moreRoom {
		m, err := r.raw.readFrame(bufs[n:], sizes[n:], offset, false)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if m < 0 {
			break
		}
		n += m
	}
	return n, nil
}

// readMore adds to a batch of n packets the frames the TUN has waiting,
// while the batch has moreRoom free slots. A deadline (a hand-off pausing
// the reads) ends the batch without error: the next Read parks.
func (r *reader) readMore(bufs [][]byte, sizes []int, offset, n int) (int, error) {
	for len(bufs)-n >= moreRoom && r.ready() {
		m, err := r.Device.Read(bufs[n:], sizes[n:], offset)
		n += m
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// errShortHeadroom: a packet to write has no room for the virtio header
// in front of it.
var errShortHeadroom = errors.New("wireguard: no headroom for the virtio header")

// Write writes decrypted packets (bufs[i][offset:], the device's element
// buffers, at most its batch size, offset its headroom of 16 bytes) to the
// TUN and returns how many it wrote: a lone packet straight, a batch on a
// kernel TUN with virtio headers coalesced (tunWriter, reader_linux.go),
// and otherwise through the TUN's Write, which coalesces with
// wireguard-go's GRO. It is called from the bind's receive goroutines, one
// per address family, at once; tunWriter serialises them.
func (r *reader) Write(bufs [][]byte, offset int) (int, error) {
	if r.tun != nil {
		if len(bufs) == 1 {
			return r.tun.writeOne(bufs[0], offset)
		}
		if r.tun.vnet {
			return r.tun.writeBatch(bufs, offset)
		}
	}
	return r.Device.Write(bufs, offset)
}

// Close closes the real TUN as well: a blocked read ends no other way, and
// the device waits for its reader before Close returns. It is idempotent;
// the real TUN's Close must be too, since the router closes it as well.
func (r *reader) Close() error {
	var err error
	r.close.Do(func() {
		close(r.closed)
		err = r.Device.Close()
	})
	return err
}
