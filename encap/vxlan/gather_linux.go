package vxlan

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Gathered sends.
//
// A Gather describes UDP datagrams whose bytes are scattered over many
// buffers: the outbound fast path sends a TCP super-packet from the TUN as
// VXLAN segments whose headers sit in a small header buffer and whose
// payloads are slices of the TUN read buffer, alternating. Each datagram is
// one message of a sendmmsg(2) call, with UDP_SEGMENT set to the segment
// length when it carries more than one segment, so the kernel cuts it into
// the individual VXLAN datagrams (udp(7), UDP_SEGMENT). Nothing is copied in
// user space; the kernel gathers the iovecs.

const (
	// MaxGatherSegments is the most segments one datagram may carry. The
	// kernel's UDP_MAX_SEGMENTS is 64 on older kernels (128 on newer).
	MaxGatherSegments = 64
	// MaxGatherPayload is the most bytes one datagram may carry: the
	// largest UDP payload over IPv4, which fits IPv6 too.
	MaxGatherPayload = maxUDPPayload
	// maxGatherMsgs bounds the datagrams of one Gather (one sendmmsg).
	maxGatherMsgs = 16
	// maxGatherIovecs bounds the iovecs of one Gather.
	maxGatherIovecs = maxGatherMsgs * MaxGatherSegments * 2
)

// Gather is a reusable list of datagrams for Sender.SendGather. Build it
// with Reset, then for each datagram Begin and one or more Add. The buffers
// added must stay untouched until SendGather returns; they are not retained
// after that. A Gather is used by one goroutine at a time.
type Gather struct {
	iovs []unix.Iovec
	msgs []unix.Mmsghdr
	oob  []byte // maxGatherMsgs control messages of cmsgSpace bytes
	// per datagram: first iovec, segment length, byte count
	first, seg, size [maxGatherMsgs]int
	n                int
}

var cmsgSpace = unix.CmsgSpace(2)

// NewGather returns an empty Gather.
func NewGather() *Gather {
	return &Gather{
		iovs: make([]unix.Iovec, 0, maxGatherIovecs),
		msgs: make([]unix.Mmsghdr, maxGatherMsgs),
		oob:  make([]byte, maxGatherMsgs*cmsgSpace),
	}
}

// Reset empties g.
func (g *Gather) Reset() {
	g.iovs = g.iovs[:0]
	g.n = 0
}

// Len is the number of datagrams in g.
func (g *Gather) Len() int { return g.n }

// Full reports whether g can take no more datagrams.
func (g *Gather) Full() bool { return g.n == maxGatherMsgs }

// Begin starts a datagram of segments of segLen bytes (the last may be
// shorter). It reports false when g is full.
func (g *Gather) Begin(segLen int) bool {
	if g.n == maxGatherMsgs {
		return false
	}
	g.first[g.n], g.seg[g.n], g.size[g.n] = len(g.iovs), segLen, 0
	g.n++
	return true
}

// Add appends b to the current datagram. It reports false when g has no
// room for another iovec.
func (g *Gather) Add(b []byte) bool {
	if len(g.iovs) == cap(g.iovs) || g.n == 0 {
		return false
	}
	if len(b) == 0 {
		return true
	}
	g.iovs = append(g.iovs, unix.Iovec{Base: &b[0]})
	g.iovs[len(g.iovs)-1].SetLen(len(b))
	g.size[g.n-1] += len(b)
	return true
}

// SendGather sends the datagrams of g to dst from the socket of flow's
// bucket (see Send), in one sendmmsg call unless the socket buffer is full.
func (s *Sender) SendGather(g *Gather, dst netip.AddrPort, flow uint32) error {
	if g.n == 0 {
		return nil
	}
	name, namelen, err := s.sockaddr(dst)
	if err != nil {
		return err
	}
	gso := s.gso.Load()
	for i := 0; i < g.n; i++ {
		m := &g.msgs[i]
		*m = unix.Mmsghdr{}
		end := len(g.iovs)
		if i+1 < g.n {
			end = g.first[i+1]
		}
		m.Hdr.Name = name
		m.Hdr.Namelen = namelen
		m.Hdr.Iov = &g.iovs[g.first[i]]
		m.Hdr.SetIovlen(end - g.first[i])
		if g.size[i] > g.seg[i] {
			if !gso {
				return errNoGSO
			}
			oob := g.oob[i*cmsgSpace : (i+1)*cmsgSpace]
			putSegmentSize(oob, uint16(g.seg[i]))
			m.Hdr.Control = &oob[0]
			m.Hdr.SetControllen(len(oob))
		}
	}
	s.gmsgs = g.msgs[:g.n]
	rc := s.raws[flow%uint32(len(s.raws))]
	for len(s.gmsgs) > 0 {
		s.gerr = nil
		if err := rc.Write(s.sendmmsg); err != nil {
			return err
		}
		if s.gerr != nil {
			if gso && errors.Is(s.gerr, unix.EIO) {
				// The egress device cannot segment: fall back for good.
				s.gso.Store(false)
				return errNoGSO
			}
			return s.gerr
		}
	}
	return nil
}

// sockaddr writes dst into the Sender's sockaddr of its sockets' family
// and returns it: sockaddr_in6 on IPv6 sockets (an IPv4 destination as its
// IPv4-mapped address, which the kernel sends as IPv4), sockaddr_in on
// IPv4 ones, which cannot reach an IPv6 destination.
func (s *Sender) sockaddr(dst netip.AddrPort) (*byte, uint32, error) {
	a := dst.Addr()
	p := dst.Port()
	p = p>>8 | p<<8 // network byte order
	if s.v6 {
		if !a.IsValid() {
			return nil, 0, fmt.Errorf("vxlan sender: no destination address")
		}
		s.sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: p, Addr: a.As16()}
		return (*byte)(unsafe.Pointer(&s.sa6)), unix.SizeofSockaddrInet6, nil
	}
	if a = a.Unmap(); !a.Is4() {
		return nil, 0, fmt.Errorf("vxlan sender: %s is not IPv4 and this host's sockets are IPv4 only", dst)
	}
	s.sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: p, Addr: a.As4()}
	return (*byte)(unsafe.Pointer(&s.sa4)), unix.SizeofSockaddrInet4, nil
}

// errNoGSO tells the caller to send one segment per datagram.
var errNoGSO = errors.New("vxlan sender: UDP GSO unavailable")

// ErrNoGSO reports whether err says that datagrams must carry one segment.
func ErrNoGSO(err error) bool { return errors.Is(err, errNoGSO) }

// GSO reports whether the Sender sends multi-segment datagrams.
func (s *Sender) GSO() bool { return s.gso.Load() }

// sendmmsgFunc is the RawConn write callback of SendGather; s.sendmmsg is
// this method value, made once, so that a send allocates nothing. It sends
// what is left of s.gmsgs, advancing past what the kernel took.
func (s *Sender) sendmmsgFunc(fd uintptr) bool {
	var n uintptr
	var e syscall.Errno
	for {
		// Raw: the socket is non-blocking, so the call never waits and
		// the goroutine keeps its P (no scheduler hand-off per send).
		n, _, e = unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.gmsgs[0])), uintptr(len(s.gmsgs)), 0, 0, 0)
		if e != unix.EINTR {
			break
		}
	}
	if e == unix.EAGAIN {
		return false // wait until the socket is writable
	}
	if e != 0 {
		s.gerr = e
		return true
	}
	s.gmsgs = s.gmsgs[n:]
	return true
}

// GatherDatagram is one datagram of a Gather as the kernel would see it.
type GatherDatagram struct {
	Bytes  []byte // the iovecs, concatenated (a copy)
	SegLen int    // UDP_SEGMENT length; the datagram is cut at multiples of it
}

// Datagrams returns copies of g's datagrams. It allocates; it is meant for
// tests and debugging, not for the packet path.
func (g *Gather) Datagrams() []GatherDatagram {
	out := make([]GatherDatagram, g.n)
	for i := 0; i < g.n; i++ {
		end := len(g.iovs)
		if i+1 < g.n {
			end = g.first[i+1]
		}
		var b []byte
		for _, iov := range g.iovs[g.first[i]:end] {
			b = append(b, unsafe.Slice(iov.Base, iov.Len)...)
		}
		out[i] = GatherDatagram{Bytes: b, SegLen: g.seg[i]}
	}
	return out
}
