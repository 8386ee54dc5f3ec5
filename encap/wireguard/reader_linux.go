package wireguard

import (
	"os"
	"sync"
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

// virtioHdrLen is the size of the virtio-net header in front of every
// frame of a TUN opened with IFF_VNET_HDR.
const virtioHdrLen = 10

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
