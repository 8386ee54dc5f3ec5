//go:build linux

package overlay

// The TUN file descriptor, as the fast paths read it (they write it with
// offload.Writer).
//
// They run when the router owns a real TUN device opened with virtio-net
// headers (IFF_VNET_HDR, as weftd opens it) and in non-blocking mode, and
// has a vxlan.Sender: startFast then starts inboundFast (inbound_linux.go)
// on every node, and outboundFast (outbound_linux.go) when the node has no
// WireGuard device (whose reader owns the TUN, divert.go: the TUN must have
// exactly one reader). Reads and writes go through the runtime poller as
// raw system calls, with callbacks made once so that no call allocates.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

const (
	// inBatch is how many receive buffers (each up to 64 KiB of GRO
	// datagrams) one recvmmsg fills.
	inBatch = 32
	// splitBatch is how many packets the split path hands sendBatch at a
	// time.
	splitBatch = 64
	// readBatch bounds the TUN reads of one outbound round.
	readBatch = 32
)

// startFast starts the fast loops the router's devices allow and reports
// which it started; the caller starts the ordinary loops for the others.
func (r *Router) startFast(port uint16) (outbound, inbound bool, err error) {
	snd, ok := r.cfg.Sender.(gatherSender)
	if !ok {
		return false, false, nil
	}
	f := r.tun.File()
	if f == nil {
		return false, false, nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return false, false, nil
	}
	m, err := offload.ModeOf(rc, true)
	if err != nil || !m.TUN || !m.VNetHdr || !m.NonBlocking {
		return false, false, nil
	}
	var rcv *vxlan.Receiver
	if r.cfg.VXLANSocket != nil {
		rcv, err = vxlan.FileReceiver(r.cfg.VXLANSocket, inBatch)
		if err == nil && !rcv.Receives(netip.IPv6Unspecified()) {
			// A hand-over from a weftd whose socket was IPv4 only.
			r.log.Warn("the VXLAN socket handed over receives IPv4 only: VXLAN from peers on an IPv6 underlay is dropped until weftd next starts cold")
		}
	} else {
		rcv, err = vxlan.ListenReceiver(port, inBatch)
	}
	if err != nil {
		return false, false, err
	}
	r.receiver = rcv
	r.wg.Add(1)
	r.readLoops.Add(1)
	go r.inboundFast(rcv, offload.NewWriter(rc, offload.MaxRunSegs+1), m.USO)
	if r.cfg.WireGuard == nil {
		r.wg.Add(1)
		r.readLoops.Add(1)
		go r.outboundFast(newTUNReader(rc), snd)
		outbound = true
	}
	return outbound, true, nil
}

// tunReader reads single packets from the TUN file descriptor through the
// runtime poller. The callbacks are made once, so reads do not allocate.
type tunReader struct {
	rc      syscall.RawConn
	buf     []byte
	iovs    []unix.Iovec // when set, reads go into these (readv) instead of buf
	n       int
	err     error
	read    func(fd uintptr) bool
	tryRead func(fd uintptr) bool
}

func newTUNReader(rc syscall.RawConn) *tunReader {
	t := &tunReader{rc: rc}
	t.read = t.readFunc
	t.tryRead = t.tryReadFunc
	return t
}

// tryReadFunc reads once without waiting: n is -1 when nothing is queued
// or the read fails.
func (t *tunReader) tryReadFunc(fd uintptr) bool {
	for {
		n, err := t.raw(fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			n = -1
		}
		t.n = n
		return true
	}
}

// TryRead reads one virtio header and packet into b if one is queued, and
// returns its length, or -1 if none is (or the read failed: the next
// blocking Read reports that).
func (t *tunReader) TryRead(b []byte) int {
	t.buf, t.iovs, t.n = b, nil, -1
	if t.rc.Read(t.tryRead) != nil {
		return -1
	}
	return t.n
}

// raw is one read(2), or readv(2) into t.iovs.
func (t *tunReader) raw(fd uintptr) (int, error) {
	if t.iovs != nil {
		return readv(fd, t.iovs)
	}
	return rawRead(fd, t.buf)
}

func (t *tunReader) readFunc(fd uintptr) bool {
	for {
		n, err := t.raw(fd)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		t.n, t.err = n, err
		return true
	}
}

// Read reads one virtio header and packet into b. An error from the
// poller means the file is closed and is reported as os.ErrClosed; an error
// of the read itself is returned as it is.
func (t *tunReader) Read(b []byte) (int, error) {
	t.buf, t.iovs, t.n, t.err = b, nil, 0, nil
	if err := t.rc.Read(t.read); err != nil {
		return 0, pollerError(err)
	}
	return t.n, t.err
}

// pollerError is a failed wait of the poller: a read deadline passed
// (Router.Pause), reported as it is, or the file was closed.
func pollerError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", os.ErrClosed, err)
}

// rawRead is read(2) as a raw system call: the goroutine keeps its P
// instead of handing it off, which spares the scheduler's monitor thread a
// wake-up per call. Only for non-blocking descriptors, where the call never
// waits; the fast paths' other calls (writev, sendmmsg, recvmmsg) are raw
// for the same reason.
func rawRead(fd uintptr, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// readv reads into iovs as a raw system call (see rawRead).
func readv(fd uintptr, iovs []unix.Iovec) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return v
}
