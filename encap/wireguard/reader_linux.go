package wireguard

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/encap/offload"
)

// attachTUN gives r the raw paths of a kernel TUN: the readiness poll,
// the writer (and whether the TUN takes UDP GSO: the probe makes the same
// TUNSETOFFLOAD call as wireguard-go's NativeTun) and, with virtio headers
// in non-blocking mode, the raw reader. A dev that is no kernel TUN (no file, or one whose mode
// cannot be read) gets none: everything goes through its own Read and
// Write then.
func attachTUN(r *reader, dev tun.Device) {
	f, ok := dev.(interface{ File() *os.File })
	if !ok || f.File() == nil {
		return
	}
	rc, err := f.File().SyscallConn()
	if err != nil {
		return
	}
	r.ready = readyFunc(rc)
	m, err := offload.ModeOf(rc, true)
	if err != nil || !m.TUN {
		return
	}
	r.tun = newTUNWriter(rc, m)
	if m.VNetHdr && m.NonBlocking {
		r.raw = &rawReader{rc: rc}
		r.raw.do = r.raw.read
	}
}

// readyFunc returns a zero-timeout poll of the TUN file for reader.ready.
// The poll runs through the file's raw connection (its descriptor stays
// non-blocking) with a callback made once, so it allocates nothing.
func readyFunc(rc syscall.RawConn) func() bool {
	p := &poller{}
	p.poll = p.pollFunc
	return func() bool {
		p.ready = false
		if rc.Control(p.poll) != nil {
			return false
		}
		return p.ready
	}
}

type poller struct {
	fds   [1]unix.PollFd
	ready bool
	poll  func(fd uintptr)
}

func (p *poller) pollFunc(fd uintptr) {
	p.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	n, err := unix.Poll(p.fds[:], 0)
	p.ready = err == nil && n == 1 && p.fds[0].Revents&unix.POLLIN != 0
}

// tunWriter writes decrypted packets to a kernel TUN with raw system
// calls made straight from the file's raw connection (offload.Writer):
// what the TUN's own Write does, less the runtime's blocking-syscall path
// (see bind_linux.go: on an idle process that path first wakes the
// runtime's monitor thread) and, for a batch, less wireguard-go's GRO.
//
// A lone packet (a ping, a TCP ack) is written as it is, with IFF_VNET_HDR
// behind a zero virtio header (no offload, checksums complete).
//
// A batch on a TUN with virtio headers goes through offload.Coalescer:
// each run of consecutive segments of one TCP flow (of datagrams of one
// UDP flow, when the TUN takes USO) becomes one GSO write, its headers
// fixed in place in front of the first packet's payload and the later
// payloads gathered from their element buffers by writev; everything else
// is written on its own behind a zero virtio header. wireguard-go's GRO,
// which the TUN's Write runs, verifies every TCP and UDP checksum and
// copies every payload into the first packet's buffer; here nothing is
// copied and no checksum is verified (Coalescer.Trusted): every packet was
// authenticated by ChaCha20-Poly1305 and is byte for byte what the peer
// sealed, so its checksums are what the peer's stack wrote. The kernel's own WireGuard
// marks decrypted packets CHECKSUM_UNNECESSARY for the same reason.
type tunWriter struct {
	mu sync.Mutex // the bind's receive goroutines (one per family) write
	w  *offload.Writer
	// vnet: the TUN carries virtio headers, and a batch is coalesced.
	vnet bool
	c    offload.Coalescer // the batch being written, under mu
	// writes is how many writes the last batch was coalesced into (tests).
	writes int
}

func newTUNWriter(rc syscall.RawConn, m offload.Mode) *tunWriter {
	w := &tunWriter{w: offload.NewWriter(rc, offload.MaxRunSegs+1), vnet: m.VNetHdr}
	w.c.Trusted, w.c.UDP = true, m.USO
	return w
}

// writeOne writes the packet buf[offset:]; offset leaves room for the
// virtio header (the device's headroom is 16 bytes).
func (w *tunWriter) writeOne(buf []byte, offset int) (int, error) {
	frame := buf[offset:]
	if w.vnet {
		if offset < offload.HeaderLen {
			return 0, errShortHeadroom
		}
		frame = buf[offset-offload.HeaderLen:]
		clear(frame[:offload.HeaderLen])
	}
	w.mu.Lock()
	err := w.w.Write(frame, nil)
	w.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return 1, nil
}

// errBadRun: the coalescer refused a run it made itself (its virtio header
// did not read back as its packet); the run's packets were not written.
var errBadRun = errors.New("wireguard: a coalesced run did not match its virtio header")

// writeBatch writes the packets bufs[i][offset:] (the device's element
// buffers, offset its headroom of at least offload.HeaderLen bytes, which
// the virtio headers overwrite; a run's first packet is rewritten in
// place) coalesced, and returns how many packets it wrote. A failed write
// does not stop the others, except a closed TUN (os.ErrClosed); the first
// error is returned.
func (w *tunWriter) writeBatch(bufs [][]byte, offset int) (int, error) {
	if offset < offload.HeaderLen {
		return 0, errShortHeadroom
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	c := &w.c
	c.Reset()
	defer c.Release()
	for _, b := range bufs {
		c.Add(b, offset, offload.Header{})
	}
	c.Flush()
	var n int
	var first error
	if c.Dropped > 0 {
		first = errBadRun
	}
	w.writes = len(c.Writes)
	for _, wr := range c.Writes {
		err := w.w.Write(wr.Head, c.Payloads[wr.Lo:wr.Hi])
		if err == nil {
			n += wr.Segs
			continue
		}
		if errors.Is(err, os.ErrClosed) {
			return n, err
		}
		if first == nil {
			first = err
		}
	}
	return n, first
}

// rawReader reads outbound frames from a kernel TUN opened with
// IFF_VNET_HDR and non-blocking, as read(2) called straight from the
// file's raw connection (no blocking-syscall path, no wake-up of the
// runtime's monitor thread), into the device's own element buffers, and
// splits them there (offload.SplitFrame), so that the virtio header ends
// where the device wants the packet to start:
//
//   - a lone packet stays where it was read; its L4 checksum is finished
//     only if the header says it is partial (NEEDS_CSUM);
//   - a super-packet's segments 1..n-1 are copied into the next element
//     buffers, headers fixed and checksums computed while copying, and
//     segment 0 is fixed last in place (its payload already is where it
//     must be): one copy of the payload in all, where wireguard-go's TUN
//     reads into its own buffer and copies every segment out of it.
//
// Every checksum of a segment is complete: the peer may be standard
// WireGuard, whose receiving end hands the packet to its stack as it is.
//
// Used by the device's one TUN reader goroutine only.
type rawReader struct {
	rc interface {
		Read(func(fd uintptr) bool) error
	}
	// iovs: the element buffer from 10 bytes before the device's offset,
	// then spill, for the bytes of a frame longer than the element buffer
	// (a super-packet near 64 KiB: the buffer holds 65535 bytes from
	// offset 0, the device puts the packet at 16).
	iovs  [2]unix.Iovec
	spill [128]byte
	// whole is where a frame that ran into spill is put together, once,
	// to be split from there (a copy only for those rare frames).
	whole []byte
	wait  bool // the read waits for a frame (the first of a batch)
	n     int
	err   error
	do    func(fd uintptr) bool
	// drops counts frames that could not be split (malformed, or more
	// segments than the batch had room for), each dropped whole.
	drops atomic.Uint64
}

func (r *rawReader) read(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&r.iovs[0])), uintptr(len(r.iovs)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if r.wait {
				return false // the poller waits, and calls again
			}
			r.n = -1
		case 0:
			r.n = int(n)
		case unix.EBADFD:
			r.err = os.ErrClosed
		default:
			r.err = e
		}
		return true
	}
}

// readFrame reads one frame into bufs[0] and splits it into bufs[k] from
// offset on (sizes[k] their lengths), and returns how many packets it
// made: -1 when wait is false and no frame is waiting, 0 when the frame
// was dropped (counted in drops). A failed wait is the poller's error: a
// read deadline (a hand-off) as os.ErrDeadlineExceeded, a closed file as
// os.ErrClosed.
func (r *rawReader) readFrame(bufs [][]byte, sizes []int, offset int, wait bool) (int, error) {
	if offset < offload.HeaderLen {
		return 0, errShortHeadroom
	}
	b := bufs[0][offset-offload.HeaderLen:]
	r.iovs[0] = unix.Iovec{Base: &b[0]}
	r.iovs[0].SetLen(len(b))
	r.iovs[1] = unix.Iovec{Base: &r.spill[0]}
	r.iovs[1].SetLen(len(r.spill))
	r.wait, r.n, r.err = wait, 0, nil
	if err := r.rc.Read(r.do); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, err
		}
		return 0, fmt.Errorf("%w: %v", os.ErrClosed, err)
	}
	if r.err != nil {
		return 0, r.err
	}
	if r.n < 0 {
		return -1, nil
	}
	var h offload.Header
	if h.Decode(b[:r.n]) != nil {
		r.drops.Add(1)
		return 0, nil
	}
	var k int
	var err error
	if r.n <= len(b) {
		k, err = offload.SplitFrame(&h, b[offload.HeaderLen:r.n], bufs, sizes, offset, true)
	} else {
		if r.whole == nil {
			r.whole = make([]byte, len(b)+len(r.spill))
		}
		w := r.whole[:copy(r.whole, b[offload.HeaderLen:])]
		w = append(w, r.spill[:r.n-len(b)]...)
		k, err = offload.SplitFrame(&h, w, bufs, sizes, offset, false)
	}
	if err != nil {
		r.drops.Add(1)
		return 0, nil
	}
	return k, nil
}
