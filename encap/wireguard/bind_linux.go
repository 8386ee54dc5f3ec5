package wireguard

// weft's UDP bind for the WireGuard device (Linux).
//
// wireguard-go's StdNetBind goes through golang.org/x/net's batch reads and
// writes: every call re-packs its message headers, clears a pooled batch
// of 128 messages on the way out, allocates an endpoint (and an address)
// per received datagram, copies the datagrams of a send into one buffer to
// make a UDP GSO datagram, and enters each system call through the Go
// runtime's blocking-syscall path, which on a process that was idle wakes
// the runtime's monitor thread first (a futex wake that puts a second
// thread on the other core before the packet moves). On a two-core node
// those costs show in both the CPU per byte and the round trip of a lone
// packet.
//
// bind does the same job with the system calls made directly from the
// socket's raw connection callbacks (recvmmsg and sendmmsg, as the VXLAN
// receiver does), with message headers, iovecs and control buffers made
// once per socket:
//
//   - send: the messages of one Send are grouped into UDP GSO datagrams
//     (runs of equal-size messages, the last of a run possibly shorter)
//     whose segments the kernel reads straight from the device's buffers
//     through one iovec each: no payload byte is copied. A socket whose
//     path refuses GSO (EIO) falls back to one datagram per message for
//     good.
//   - receive: UDP GRO is on; one recvmmsg reads up to groReads coalesced
//     buffers into the tail of the device's batch and their datagrams are
//     split (copied) into the batch's slots in arrival order, as
//     StdNetBind does. The sender's address and the local address it was
//     sent to (IP_PKTINFO, so that replies leave from the address the peer
//     used, as with StdNetBind's sticky sockets) are compared with the
//     previous datagram's: the same peer gets the same *endpoint back, so
//     a stream allocates nothing.
//
// The wire is untouched: the device hands over whole WireGuard messages
// and gets whole datagrams back, as with any conn.Bind.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

const (
	// bindBatch is the batch the device is asked to use (BatchSize), as
	// StdNetBind's on Linux.
	bindBatch = conn.IdealBatchSize
	// maxGSOSegments is the most datagrams one UDP GSO send may carry and
	// the most one GRO read returns (the kernel's UDP_MAX_SEGMENTS is
	// larger on new kernels, 64 on older ones).
	maxGSOSegments = 64
	// groReads is how many coalesced buffers one recvmmsg reads: they go
	// into the last groReads slots of the device's batch and are split
	// into the slots before them, so groReads × maxGSOSegments must not
	// pass bindBatch (a split never overwrites a buffer not yet split).
	groReads = bindBatch / maxGSOSegments
	// socketBuffer is the send and receive buffer asked for (SO_*BUFFORCE
	// as root), as StdNetBind's.
	socketBuffer = 7 << 20
	// maxGSOPayload is the largest UDP payload of one GSO send: the IP
	// packet must fit in 64 KiB.
	maxGSOPayload4 = 65535 - 20 - 8
	maxGSOPayload6 = 65535 - 40 - 8
)

// oobSize is room for the control messages of one message: UDP_SEGMENT
// or UDP_GRO (a uint16 or an int) and IPV6_PKTINFO (the larger pktinfo).
var oobSize = unix.CmsgSpace(4) + unix.CmsgSpace(unix.SizeofInet6Pktinfo)

// newBind returns the bind the device uses on Linux.
func newBind() conn.Bind { return &bind{} }

// bind is a conn.Bind over one IPv4 and one IPv6 UDP socket on the same
// port.
type bind struct {
	mu     sync.Mutex // guards v4, v6 and mark against Open and Close
	v4, v6 *bindSocket
	mark   uint32
}

// bindSocket is one socket with its send and receive state. Each socket's
// ReceiveFunc is called by one device goroutine at a time (the device runs
// one receive goroutine per function), so the receive state has no lock;
// sends come from any goroutine and take sendMu.
type bindSocket struct {
	conn *net.UDPConn
	rc   syscall.RawConn
	v6   bool
	gso  atomic.Bool // UDP_SEGMENT works on this socket's path
	gro  bool        // UDP_GRO is on

	sendMu sync.Mutex // guards the send state below
	smsgs  []unix.Mmsghdr
	siovs  []unix.Iovec
	soob   []byte
	snames []unix.RawSockaddrInet6 // room for either family
	sdo    func(fd uintptr) bool   // sendmmsg callback, made once
	sn     int                     // messages to send
	sdone  int                     // messages sent
	serr   error

	rmsgs  []unix.Mmsghdr
	riovs  []unix.Iovec
	roob   []byte
	rnames []unix.RawSockaddrInet6
	rdo    func(fd uintptr) bool // recvmmsg callback, made once
	rwant  int
	rgot   int
	rerr   error
	last   *endpoint // the previous datagram's endpoint
}

// endpoint is a peer's address and, when known, the local address and
// interface its datagrams arrived on (the source of replies). It is never
// changed after it is made, except that ClearSrc marks its source unknown.
type endpoint struct {
	dst     netip.AddrPort
	src     netip.Addr
	ifindex int32
	cleared atomic.Bool
}

var _ conn.Endpoint = (*endpoint)(nil)

func (e *endpoint) ClearSrc()           { e.cleared.Store(true) }
func (e *endpoint) DstIP() netip.Addr   { return e.dst.Addr() }
func (e *endpoint) DstToString() string { return e.dst.String() }

// DstToBytes is the address as the cookie MAC hashes it (as StdNetBind's).
func (e *endpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}

func (e *endpoint) SrcIP() netip.Addr {
	if e.cleared.Load() {
		return netip.Addr{}
	}
	return e.src
}

// SrcIfidx is the interface the datagram arrived on, for the device's
// route listener (sticky sources, as with StdNetBind).
func (e *endpoint) SrcIfidx() int32 {
	if e.cleared.Load() {
		return 0
	}
	return e.ifindex
}

func (e *endpoint) SrcToString() string {
	if s := e.SrcIP(); s.IsValid() {
		return s.String()
	}
	return ""
}

// Sticky says that endpoints carry the local source of received datagrams
// (the device then follows route changes, as with StdNetBind).
func (b *bind) Sticky() bool { return true }

func (b *bind) BatchSize() int { return bindBatch }

// ParseEndpoint parses "ip:port".
func (b *bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &endpoint{dst: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// Open listens on port (0: one the kernel picks, the same for both
// families) on IPv4 and, where the host has it, IPv6.
func (b *bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4 != nil || b.v6 != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	var (
		v4, v6 *bindSocket
		err    error
	)
	for try := 0; try < 100; try++ {
		v4, err = listenBindSocket(false, port)
		if err != nil {
			return nil, 0, err
		}
		actual := uint16(v4.conn.LocalAddr().(*net.UDPAddr).Port)
		v6, err = listenBindSocket(true, actual)
		if err == nil || errors.Is(err, unix.EAFNOSUPPORT) {
			err = nil
			port = actual
			break
		}
		v4.conn.Close()
		v4 = nil
		if port != 0 || !errors.Is(err, unix.EADDRINUSE) {
			return nil, 0, err
		}
	}
	if v4 == nil {
		return nil, 0, err
	}
	if b.mark != 0 {
		for _, s := range []*bindSocket{v4, v6} {
			if s != nil {
				if err := s.setMark(b.mark); err != nil {
					v4.conn.Close()
					if v6 != nil {
						v6.conn.Close()
					}
					return nil, 0, err
				}
			}
		}
	}
	b.v4, b.v6 = v4, v6
	fns := []conn.ReceiveFunc{v4.receive}
	if v6 != nil {
		fns = append(fns, v6.receive)
	}
	return fns, port, nil
}

// Close closes both sockets; their ReceiveFuncs then return net.ErrClosed.
func (b *bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, s := range []*bindSocket{b.v4, b.v6} {
		if s != nil {
			errs = append(errs, s.conn.Close())
		}
	}
	b.v4, b.v6 = nil, nil
	return errors.Join(errs...)
}

// SetMark sets SO_MARK on both sockets (and on those a later Open makes).
func (b *bind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	for _, s := range []*bindSocket{b.v4, b.v6} {
		if s != nil {
			if err := s.setMark(mark); err != nil {
				return err
			}
		}
	}
	return nil
}

// Send sends bufs, one WireGuard message each, to ep.
func (b *bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	s := b.v4
	if e.dst.Addr().Is6() {
		s = b.v6
	}
	b.mu.Unlock()
	if s == nil {
		return fmt.Errorf("send to %s: %w", e.dst, net.ErrClosed)
	}
	return s.send(bufs, e)
}

// listenBindSocket opens one family's socket on port with the options the
// datapath needs.
func listenBindSocket(v6 bool, port uint16) (*bindSocket, error) {
	network, addr := "udp4", "0.0.0.0:"
	if v6 {
		network, addr = "udp6", "[::]:"
	}
	var gro bool
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			s := int(fd)
			if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer) != nil {
				_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
			}
			if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer) != nil {
				_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
			}
			if v6 {
				serr = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
				if serr == nil {
					serr = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
				}
			} else {
				serr = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			}
			gro = unix.SetsockoptInt(s, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(nil, network, addr+strconv.Itoa(int(port)))
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, unix.EAFNOSUPPORT
		}
		return nil, fmt.Errorf("wireguard: listen %s port %d: %w", network, port, err)
	}
	c := pc.(*net.UDPConn)
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("wireguard: %s socket: %w", network, err)
	}
	s := &bindSocket{conn: c, rc: rc, v6: v6, gro: gro}
	s.gso.Store(true)
	s.smsgs = make([]unix.Mmsghdr, bindBatch)
	s.siovs = make([]unix.Iovec, bindBatch)
	s.soob = make([]byte, bindBatch*oobSize)
	s.snames = make([]unix.RawSockaddrInet6, bindBatch)
	s.sdo = s.sendmmsg
	s.rmsgs = make([]unix.Mmsghdr, bindBatch)
	s.riovs = make([]unix.Iovec, bindBatch)
	s.roob = make([]byte, bindBatch*oobSize)
	s.rnames = make([]unix.RawSockaddrInet6, bindBatch)
	s.rdo = s.recvmmsg
	return s, nil
}

func (s *bindSocket) setMark(mark uint32) error {
	var serr error
	err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("wireguard: set SO_MARK: %w", err)
	}
	return nil
}

// send groups bufs into GSO datagrams (when the socket's path takes them)
// and sends them with sendmmsg until all are out.
func (s *bindSocket) send(bufs [][]byte, e *endpoint) error {
	if len(bufs) == 0 {
		return nil
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for len(bufs) > 0 {
		chunk := bufs[:min(len(bufs), bindBatch)] // the headers made for a batch
		bufs = bufs[len(chunk):]
		gso := s.gso.Load() && len(chunk) > 1
		err := s.sendBatch(chunk, e, gso)
		if gso && errors.Is(err, unix.EIO) {
			// The path cannot segment (no checksum offload on the
			// egress device): one datagram per message from now on.
			// What was sent before the error is sent again;
			// WireGuard's replay window drops the duplicates.
			s.gso.Store(false)
			err = s.sendBatch(chunk, e, false)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sendBatch fills the message headers for bufs and sends them.
func (s *bindSocket) sendBatch(bufs [][]byte, e *endpoint, gso bool) error {
	name, nameLen := s.sockaddr(e.dst)
	src, srcOK := e.src, e.src.IsValid() && !e.cleared.Load()
	maxPayload := maxGSOPayload4
	if s.v6 {
		maxPayload = maxGSOPayload6
	}
	n := 0 // messages
	for i := 0; i < len(bufs); {
		// One datagram, or a GSO run: equal sizes, the last no longer.
		seg := len(bufs[i])
		j, total := i+1, seg
		if gso {
			for j < len(bufs) && j-i < maxGSOSegments && len(bufs[j]) <= seg && total+len(bufs[j]) <= maxPayload {
				total += len(bufs[j])
				j++
				if len(bufs[j-1]) < seg {
					break
				}
			}
		}
		for k := i; k < j; k++ {
			s.siovs[k] = iovecOf(bufs[k])
		}
		s.snames[n] = name
		oob := s.soob[n*oobSize : (n+1)*oobSize]
		ol := 0
		if j-i > 1 {
			d, space := putCmsg(oob[ol:], unix.IPPROTO_UDP, unix.UDP_SEGMENT, 2)
			binary.NativeEndian.PutUint16(d, uint16(seg))
			ol += space
		}
		if srcOK {
			ol += putPktinfo(oob[ol:], s.v6, src, e.ifindex)
		}
		h := &s.smsgs[n].Hdr
		*h = unix.Msghdr{}
		h.Name = (*byte)(unsafe.Pointer(&s.snames[n]))
		h.Namelen = nameLen
		h.Iov = &s.siovs[i]
		h.SetIovlen(j - i)
		if ol > 0 {
			h.Control = &oob[0]
			h.SetControllen(ol)
		}
		s.smsgs[n].Len = 0
		n++
		i = j
	}
	s.sn, s.sdone, s.serr = n, 0, nil
	for s.sdone < s.sn {
		if err := s.rc.Write(s.sdo); err != nil {
			return err
		}
		if s.serr != nil {
			return s.serr
		}
	}
	return nil
}

// sendmmsg is the raw connection's write callback: it sends the messages
// not yet sent; false asks the poller to wait until the socket can take
// more.
func (s *bindSocket) sendmmsg(fd uintptr) bool {
	for s.sdone < s.sn {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.smsgs[s.sdone])), uintptr(s.sn-s.sdone), 0, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			s.serr = e
			return true
		}
		s.sdone += int(r)
	}
	return true
}

// receive is the socket's conn.ReceiveFunc.
func (s *bindSocket) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	readAt, want := 0, len(bufs)
	if s.gro && len(bufs) >= bindBatch {
		readAt, want = len(bufs)-groReads, groReads
	}
	for k := 0; k < want; k++ {
		s.riovs[k] = iovecOf(bufs[readAt+k])
		h := &s.rmsgs[k].Hdr
		*h = unix.Msghdr{}
		h.Name = (*byte)(unsafe.Pointer(&s.rnames[k]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &s.riovs[k]
		h.SetIovlen(1)
		h.Control = &s.roob[k*oobSize]
		h.SetControllen(oobSize)
		s.rmsgs[k].Len = 0
	}
	s.rwant, s.rgot, s.rerr = want, 0, nil
	if err := s.rc.Read(s.rdo); err != nil {
		return 0, err
	}
	if s.rerr != nil {
		return 0, s.rerr
	}
	n := 0
	for k := 0; k < s.rgot; k++ {
		m := &s.rmsgs[k]
		size := int(m.Len)
		oob := s.roob[k*oobSize : k*oobSize+int(m.Hdr.Controllen)]
		ep := s.endpointOf(&s.rnames[k], oob)
		if ep == nil {
			continue // not an address of this socket's family
		}
		seg := size
		if s.gro {
			if g := groSegment(oob); g > 0 && g < size {
				seg = g
			}
		}
		if readAt == 0 { // no GRO split: the datagram is in its slot
			if n != k {
				copy(bufs[n], bufs[k][:size])
			}
			sizes[n], eps[n] = size, ep
			n++
			continue
		}
		src := bufs[readAt+k][:size]
		for off := 0; off < size && n < len(bufs); off += seg {
			end := min(off+seg, size)
			sizes[n] = copy(bufs[n], src[off:end])
			eps[n] = ep
			n++
		}
	}
	return n, nil
}

// recvmmsg is the raw connection's read callback; false asks the poller to
// wait for a datagram.
func (s *bindSocket) recvmmsg(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.rmsgs[0])), uintptr(s.rwant), 0, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			s.rerr = e
		default:
			s.rgot = int(r)
		}
		return true
	}
}

// endpointOf returns the endpoint of a datagram from name that arrived as
// oob's pktinfo says: the previous datagram's when it is the same.
func (s *bindSocket) endpointOf(name *unix.RawSockaddrInet6, oob []byte) *endpoint {
	var dst netip.AddrPort
	switch name.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), portOf(sa.Port))
	case unix.AF_INET6:
		dst = netip.AddrPortFrom(netip.AddrFrom16(name.Addr).Unmap(), portOf(name.Port))
	default:
		return nil
	}
	src, ifindex := pktinfoOf(oob)
	if l := s.last; l != nil && !l.cleared.Load() && l.dst == dst && l.src == src && l.ifindex == ifindex {
		return l
	}
	s.last = &endpoint{dst: dst, src: src, ifindex: ifindex}
	return s.last
}

// sockaddr is dst as this socket's family writes it.
func (s *bindSocket) sockaddr(dst netip.AddrPort) (unix.RawSockaddrInet6, uint32) {
	var name unix.RawSockaddrInet6
	if !s.v6 {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&name))
		sa.Family = unix.AF_INET
		sa.Addr = dst.Addr().Unmap().As4()
		putPort(&sa.Port, dst.Port())
		return name, unix.SizeofSockaddrInet4
	}
	name.Family = unix.AF_INET6
	name.Addr = dst.Addr().As16()
	putPort(&name.Port, dst.Port())
	return name, unix.SizeofSockaddrInet6
}

// portOf reads a sockaddr's port (network byte order in memory).
func portOf(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return binary.BigEndian.Uint16(b[:])
}

func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	binary.BigEndian.PutUint16(b[:], port)
}

func iovecOf(b []byte) unix.Iovec {
	v := unix.Iovec{Base: unsafe.SliceData(b)}
	v.SetLen(len(b))
	return v
}

// putCmsg starts one control message of dataLen bytes at the start of b
// and returns its data, to be filled, and the space it takes.
func putCmsg(b []byte, level, typ int32, dataLen int) (data []byte, space int) {
	space = unix.CmsgSpace(dataLen)
	clear(b[:space])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(dataLen))
	return b[unix.CmsgLen(0) : unix.CmsgLen(0)+dataLen], space
}

// putPktinfo writes the IP_PKTINFO or IPV6_PKTINFO message that makes a
// datagram leave from src (and ifindex) and returns its space.
func putPktinfo(b []byte, v6 bool, src netip.Addr, ifindex int32) int {
	if v6 {
		d, space := putCmsg(b, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unix.SizeofInet6Pktinfo)
		info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&d[0]))
		info.Addr = src.As16()
		info.Ifindex = uint32(ifindex)
		return space
	}
	d, space := putCmsg(b, unix.IPPROTO_IP, unix.IP_PKTINFO, unix.SizeofInet4Pktinfo)
	info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&d[0]))
	info.Spec_dst = src.Unmap().As4()
	info.Ifindex = ifindex
	return space
}

// pktinfoOf reads the local address and interface from a received
// datagram's IP_PKTINFO or IPV6_PKTINFO message; none: invalid, 0.
func pktinfoOf(oob []byte) (netip.Addr, int32) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return netip.Addr{}, 0
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom4(info.Spec_dst), info.Ifindex
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom16(info.Addr), int32(info.Ifindex)
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return netip.Addr{}, 0
}

// groSegment reads the UDP_GRO message: the size of each coalesced
// datagram (the last may be shorter); 0 when there is none.
func groSegment(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(binary.NativeEndian.Uint32(oob[unix.CmsgLen(0):]))
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return 0
}
