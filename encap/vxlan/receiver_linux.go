package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Receiver reads VXLAN datagrams from one IPv4 UDP socket on the VXLAN
// port, many per recvmmsg(2) call. UDP GRO is on: the kernel may hand over
// a run of datagrams from one sender as one buffer, and says how long each
// was (udp(7), UDP_GRO); Read reports that length so the caller can walk
// the datagrams in place instead of copying them apart.
//
// Like Sender, it speaks IPv4 underlays only.
type Receiver struct {
	conn *net.UDPConn
	rc   syscall.RawConn

	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	oob   []byte

	// recvmmsg callback state, made once so that reads do not allocate.
	want int
	got  int
	err  error
	recv func(fd uintptr) bool
}

// oobLen is room for the UDP_GRO control message (an int) and spare.
var oobLen = unix.CmsgSpace(4) * 2

// rcvBuffer is the receive buffer asked for: room for bursts of GRO
// datagrams while the router writes the previous batch to the TUN.
const rcvBuffer = 7 << 20

// ListenReceiver opens the receiving socket on port, for batches of up to
// batch datagrams.
func ListenReceiver(port uint16, batch int) (*Receiver, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return nil, fmt.Errorf("vxlan receiver: listen on port %d: %w", port, err)
	}
	return newReceiver(c, batch)
}

// FileReceiver receives on an open UDP socket (one a previous weftd
// passed on, package overlay/handoff), for batches of up to batch
// datagrams. f stays the caller's: the receiver holds its own descriptor.
func FileReceiver(f *os.File, batch int) (*Receiver, error) {
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("vxlan receiver: %w", err)
	}
	c, ok := pc.(*net.UDPConn)
	domain := -1
	if ok {
		if rc, err := c.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { domain, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN) })
		}
	}
	if domain != unix.AF_INET {
		pc.Close()
		return nil, fmt.Errorf("vxlan receiver: descriptor is not an IPv4 UDP socket (%s)", pc.LocalAddr())
	}
	return newReceiver(c, batch)
}

func newReceiver(c *net.UDPConn, batch int) (*Receiver, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("vxlan receiver: %w", err)
	}
	rc.Control(func(fd uintptr) {
		// Both best effort: without GRO every datagram comes on its
		// own, which Read handles the same way.
		_ = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuffer)
	})
	r := &Receiver{
		conn:  c,
		rc:    rc,
		msgs:  make([]unix.Mmsghdr, batch),
		iovs:  make([]unix.Iovec, batch),
		names: make([]unix.RawSockaddrInet4, batch),
		oob:   make([]byte, batch*oobLen),
	}
	r.recv = r.recvmmsg
	return r, nil
}

// SyscallConn is the socket's raw connection (to pass it on).
func (r *Receiver) SyscallConn() (syscall.RawConn, error) { return r.rc, nil }

// SetReadDeadline makes a blocked or later Read return
// os.ErrDeadlineExceeded at t; the zero time clears it.
func (r *Receiver) SetReadDeadline(t time.Time) error { return r.conn.SetReadDeadline(t) }

// Port is the local port.
func (r *Receiver) Port() uint16 { return uint16(r.conn.LocalAddr().(*net.UDPAddr).Port) }

// Read receives up to len(bufs) buffers (at most the batch size). For each
// buffer i it sets sizes[i] to the bytes received, segs[i] to the length of
// each datagram in it (the last may be shorter; equal to sizes[i] when the
// buffer holds one datagram), and from[i] to the sender's address. Buffers
// should hold 65535 bytes; a datagram cut short by a smaller buffer reports
// size 0. Read blocks until at least one buffer is filled.
func (r *Receiver) Read(bufs [][]byte, sizes, segs []int, from []netip.Addr) (int, error) {
	n := min(len(bufs), len(r.msgs), len(sizes), len(segs), len(from))
	for i := 0; i < n; i++ {
		r.iovs[i].Base = &bufs[i][0]
		r.iovs[i].SetLen(len(bufs[i]))
		m := &r.msgs[i]
		m.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		m.Hdr.Namelen = unix.SizeofSockaddrInet4
		m.Hdr.Iov = &r.iovs[i]
		m.Hdr.SetIovlen(1)
		m.Hdr.Control = &r.oob[i*oobLen]
		m.Hdr.SetControllen(oobLen)
		m.Hdr.Flags = 0
		m.Len = 0
	}
	r.want, r.got, r.err = n, 0, nil
	if err := r.rc.Read(r.recv); err != nil {
		return 0, err
	}
	if r.err != nil {
		return 0, r.err
	}
	for i := 0; i < r.got; i++ {
		m := &r.msgs[i]
		sizes[i] = int(m.Len)
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			sizes[i] = 0
		}
		segs[i] = sizes[i]
		if g := groSize(r.oob[i*oobLen : i*oobLen+int(m.Hdr.Controllen)]); g > 0 && g < sizes[i] {
			segs[i] = g
		}
		from[i] = netip.AddrFrom4(r.names[i].Addr)
	}
	return r.got, nil
}

func (r *Receiver) recvmmsg(fd uintptr) bool {
	var n uintptr
	var e syscall.Errno
	for {
		// Raw: the socket is non-blocking (see Sender.sendmmsgFunc).
		n, _, e = unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])), uintptr(r.want), 0, 0, 0)
		if e != unix.EINTR {
			break
		}
	}
	if e == unix.EAGAIN {
		return false // wait until readable
	}
	if e != 0 {
		r.err = e
		return true
	}
	r.got = int(n)
	return true
}

// groSize returns the UDP_GRO segment length in a control buffer, or 0.
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])))
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}

// Close closes the socket; a blocked Read returns net.ErrClosed.
func (r *Receiver) Close() error { return r.conn.Close() }
