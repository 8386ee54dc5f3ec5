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

// Receiver reads VXLAN datagrams from one UDP socket on the VXLAN port,
// many per recvmmsg(2) call. UDP GRO is on: the kernel may hand over a run
// of datagrams from one sender as one buffer, and says how long each was
// (udp(7), UDP_GRO); Read reports that length so the caller can walk the
// datagrams in place instead of copying them apart.
//
// The socket is dual-stack where the host allows it (an IPv6 socket bound
// to the wildcard address with IPV6_V6ONLY off): one port, one descriptor
// to hand over across restarts, and one receive loop serve peers on IPv4
// and IPv6 underlays alike, as a mixed cluster needs; IPv4 senders appear
// as IPv4-mapped addresses and Read reports them as plain IPv4. On a host
// without IPv6 it is an IPv4 socket. GRO works the same for either family.
//
// Over IPv6 the kernel verifies every UDP checksum and drops datagrams
// whose checksum is zero (RFC 8200 section 8.1), as a Linux vxlan device
// does unless configured with udp6zerocsumrx; weft does not turn that off
// (UDP_NO_CHECK6_RX): a peer must send IPv6 checksums, which Linux does by
// default (udp6zerocsumtx off) and weft's Sender always does.
type Receiver struct {
	conn *net.UDPConn
	rc   syscall.RawConn
	// v4, v6: the families the socket receives from.
	v4, v6 bool

	msgs []unix.Mmsghdr
	iovs []unix.Iovec
	// names has room for either sockaddr: sockaddr_in6 is the larger, and
	// both start with the family.
	names []unix.RawSockaddrInet6
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
// batch datagrams: dual-stack where the host has IPv6, else IPv4.
func ListenReceiver(port uint16, batch int) (*Receiver, error) {
	// "udp" on the wildcard address is the dual-stack socket when the
	// host supports IPv4-mapped addresses, else an IPv4 one.
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return nil, fmt.Errorf("vxlan receiver: listen on port %d: %w", port, err)
	}
	return newReceiver(c, batch)
}

// FileReceiver receives on an open UDP socket of either family (one a
// previous weftd passed on, package overlay/handoff), for batches of up to
// batch datagrams. f stays the caller's: the receiver holds its own
// descriptor. An IPv4 socket (from a weftd before dual-stack receivers)
// keeps receiving IPv4 only; Receives says so.
func FileReceiver(f *os.File, batch int) (*Receiver, error) {
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("vxlan receiver: %w", err)
	}
	c, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("vxlan receiver: descriptor is not a UDP socket (%s)", pc.LocalAddr())
	}
	return newReceiver(c, batch)
}

// socketFamilies reports which families a UDP socket receives from: an
// IPv4 socket IPv4 only, an IPv6 one IPv6 and, unless IPV6_V6ONLY is set,
// IPv4 (as mapped addresses). Neither for anything else.
func socketFamilies(rc syscall.RawConn) (v4, v6 bool) {
	rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			return
		}
		if typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
			return
		}
		switch domain {
		case unix.AF_INET:
			v4 = true
		case unix.AF_INET6:
			only, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
			v4, v6 = err == nil && only == 0, true
		}
	})
	return v4, v6
}

func newReceiver(c *net.UDPConn, batch int) (*Receiver, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("vxlan receiver: %w", err)
	}
	v4, v6 := socketFamilies(rc)
	if !v4 && !v6 {
		c.Close()
		return nil, fmt.Errorf("vxlan receiver: descriptor is not an IPv4 or IPv6 UDP socket (%s)", c.LocalAddr())
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
		v4:    v4,
		v6:    v6,
		msgs:  make([]unix.Mmsghdr, batch),
		iovs:  make([]unix.Iovec, batch),
		names: make([]unix.RawSockaddrInet6, batch),
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

// Receives reports whether the socket receives datagrams from a's family.
func (r *Receiver) Receives(a netip.Addr) bool {
	if a.Unmap().Is4() {
		return r.v4
	}
	return r.v6
}

// Port is the local port.
func (r *Receiver) Port() uint16 { return uint16(r.conn.LocalAddr().(*net.UDPAddr).Port) }

// Read receives up to len(bufs) buffers (at most the batch size). For each
// buffer i it sets sizes[i] to the bytes received, segs[i] to the length of
// each datagram in it (the last may be shorter; equal to sizes[i] when the
// buffer holds one datagram), and from[i] to the sender's address (IPv4
// senders as plain IPv4, never IPv4-mapped). Buffers
// should hold 65535 bytes; a datagram cut short by a smaller buffer reports
// size 0. Read blocks until at least one buffer is filled.
func (r *Receiver) Read(bufs [][]byte, sizes, segs []int, from []netip.Addr) (int, error) {
	n := min(len(bufs), len(r.msgs), len(sizes), len(segs), len(from))
	for i := 0; i < n; i++ {
		r.iovs[i].Base = &bufs[i][0]
		r.iovs[i].SetLen(len(bufs[i]))
		m := &r.msgs[i]
		m.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		m.Hdr.Namelen = unix.SizeofSockaddrInet6
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
		from[i] = sourceAddr(&r.names[i], m.Hdr.Namelen)
	}
	return r.got, nil
}

// sourceAddr is the address in a sockaddr recvmmsg filled in: IPv4 for
// sockaddr_in and for IPv4-mapped IPv6, invalid for anything else (a
// datagram the caller then counts as from an unknown peer).
func sourceAddr(sa *unix.RawSockaddrInet6, namelen uint32) netip.Addr {
	switch sa.Family {
	case unix.AF_INET:
		if namelen < unix.SizeofSockaddrInet4 {
			return netip.Addr{}
		}
		return netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr)
	case unix.AF_INET6:
		if namelen < unix.SizeofSockaddrInet6 {
			return netip.Addr{}
		}
		return netip.AddrFrom16(sa.Addr).Unmap()
	}
	return netip.Addr{}
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
