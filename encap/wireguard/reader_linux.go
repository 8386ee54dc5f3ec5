package wireguard

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// readyFunc returns a zero-timeout poll of the TUN file for reader.ready,
// or nil if dev has no file. The poll runs through the file's raw
// connection (its descriptor stays non-blocking) with a callback made
// once, so it allocates nothing.
func readyFunc(dev tun.Device) func() bool {
	f, ok := dev.(interface{ File() *os.File })
	if !ok || f.File() == nil {
		return nil
	}
	rc, err := f.File().SyscallConn()
	if err != nil {
		return nil
	}
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

// loneWriter writes one packet to a kernel TUN with write(2) called
// straight from the file's raw connection: for a lone packet (a ping, a
// TCP ack), what the TUN's own Write would do, less its coalescing tables
// and the runtime's blocking-syscall path (see bind_linux.go: on an idle
// process that path first wakes the runtime's monitor thread). With
// IFF_VNET_HDR the packet goes behind a zero virtio header (no offload,
// checksums complete), which is what the TUN's Write gives a packet it
// did not coalesce.
type loneWriter struct {
	mu sync.Mutex // the bind's receive goroutines (one per family) write
	rc interface {
		Write(func(fd uintptr) bool) error
	}
	vnet  bool
	frame []byte // the frame being written
	n     int
	err   error
	do    func(fd uintptr) bool
}

// loneWriterFor returns the lone-packet writer of dev, or nil when dev is
// not a kernel TUN.
func loneWriterFor(dev tun.Device) *loneWriter {
	f, ok := dev.(interface{ File() *os.File })
	if !ok || f.File() == nil {
		return nil
	}
	rc, err := f.File().SyscallConn()
	if err != nil {
		return nil
	}
	var flags uint16
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		var ifr [unix.IFNAMSIZ + 64]byte
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.TUNGETIFF, uintptr(unsafe.Pointer(&ifr[0])))
		if e != 0 {
			ierr = e
			return
		}
		flags = *(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ]))
	}); err != nil || ierr != nil {
		return nil
	}
	w := &loneWriter{rc: rc, vnet: flags&unix.IFF_VNET_HDR != 0}
	w.do = w.write
	return w
}

// writeOne writes the packet buf[offset:]; offset leaves room for the
// virtio header (the device's headroom is 16 bytes).
func (w *loneWriter) writeOne(buf []byte, offset int) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.vnet {
		if offset < virtioHdrLen {
			return 0, errShortHeadroom
		}
		clear(buf[offset-virtioHdrLen : offset])
		w.frame = buf[offset-virtioHdrLen:]
	} else {
		w.frame = buf[offset:]
	}
	w.n, w.err = 0, nil
	err := w.rc.Write(w.do)
	w.frame = nil
	if err == nil {
		err = w.err
	}
	if err != nil {
		return 0, err
	}
	return len(buf) - offset, nil
}

func (w *loneWriter) write(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.frame))), uintptr(len(w.frame)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			w.n = int(n)
		case unix.EBADFD:
			w.err = os.ErrClosed
		default:
			w.err = e
		}
		return true
	}
}

// rawReader reads outbound frames from a kernel TUN opened with
// IFF_VNET_HDR and non-blocking, as read(2) called straight from the
// file's raw connection (no blocking-syscall path, no wake-up of the
// runtime's monitor thread), into the device's own element buffers, and
// splits them there (split.go). It replaces the TUN's own Read, which
// reads into a buffer of its own and copies every segment out of it.
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

// rawReaderFor returns the raw reader of dev, or nil when dev is not a
// kernel TUN with virtio headers in non-blocking mode.
func rawReaderFor(dev tun.Device) *rawReader {
	f, ok := dev.(interface{ File() *os.File })
	if !ok || f.File() == nil {
		return nil
	}
	rc, err := f.File().SyscallConn()
	if err != nil {
		return nil
	}
	var flags uint16
	var fl int
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		var ifr [unix.IFNAMSIZ + 64]byte
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.TUNGETIFF, uintptr(unsafe.Pointer(&ifr[0])))
		if e != 0 {
			ierr = e
			return
		}
		flags = *(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ]))
		fl, ierr = unix.FcntlInt(fd, unix.F_GETFL, 0)
	}); err != nil || ierr != nil {
		return nil
	}
	if flags&unix.IFF_VNET_HDR == 0 || fl&unix.O_NONBLOCK == 0 {
		return nil
	}
	r := &rawReader{rc: rc}
	r.do = r.read
	return r
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
	if offset < virtioHdrLen {
		return 0, errShortHeadroom
	}
	b := bufs[0][offset-virtioHdrLen:]
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
	var h virtioHdr
	if h.decode(b[:r.n]) != nil {
		r.drops.Add(1)
		return 0, nil
	}
	var k int
	var err error
	if r.n <= len(b) {
		k, err = splitFrame(&h, b[virtioHdrLen:r.n], bufs, sizes, offset, true)
	} else {
		if r.whole == nil {
			r.whole = make([]byte, len(b)+len(r.spill))
		}
		w := r.whole[:copy(r.whole, b[virtioHdrLen:])]
		w = append(w, r.spill[:r.n-len(b)]...)
		k, err = splitFrame(&h, w, bufs, sizes, offset, false)
	}
	if err != nil {
		r.drops.Add(1)
		return 0, nil
	}
	return k, nil
}
