package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

const (
	// maxGSOSegments is how many datagrams one UDP_SEGMENT send may carry
	// (the kernel's UDP_MAX_SEGMENTS is at least this).
	maxGSOSegments = 64
	// maxUDPPayload is the largest IPv4 UDP payload.
	maxUDPPayload = 65535 - 20 - 8
	// socketBuffer is the send buffer asked for each socket: room for a
	// few full GSO batches.
	socketBuffer = 7 << 20
)

// Sender sends VXLAN frames from a small set of UDP sockets on ephemeral
// ports. The socket, and so the outer UDP source port, is chosen by a hash
// of the inner flow (RFC 7348 section 5), so ECMP paths and receive-side
// scaling spread flows while each flow keeps one path and stays in order.
//
// Consecutive frames of equal length go out as one UDP_SEGMENT (GSO) send
// whose payload is the frames themselves, gathered by the kernel from the
// caller's buffers: no copy in user space. A Sender is used by one
// goroutine at a time.
type Sender struct {
	conns []*net.UDPConn
	pcs   []*ipv4.PacketConn
	gso   atomic.Bool

	msgs []ipv4.Message
	oobs [][]byte
	addr net.UDPAddr

	// SendGather state (gather_linux.go): the raw sockets, the messages
	// still to send and the error of the last attempt, and the write
	// callback made once so that sends do not allocate.
	raws     []syscall.RawConn
	sa       unix.RawSockaddrInet4
	gmsgs    []unix.Mmsghdr
	gerr     error
	sendmmsg func(fd uintptr) bool
}

// NewSender opens n sockets (1..64) on ephemeral IPv4 ports.
func NewSender(n int) (*Sender, error) {
	if n < 1 || n > 64 {
		return nil, fmt.Errorf("vxlan sender: %d sockets, want 1..64", n)
	}
	s := &Sender{addr: net.UDPAddr{IP: make(net.IP, 4)}}
	s.sendmmsg = s.sendmmsgFunc
	s.gso.Store(true)
	for range n {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("vxlan sender socket: %w", err)
		}
		rc, err := c.SyscallConn()
		if err != nil {
			c.Close()
			s.Close()
			return nil, fmt.Errorf("vxlan sender socket: %w", err)
		}
		rc.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
		})
		s.raws = append(s.raws, rc)
		s.conns = append(s.conns, c)
		s.pcs = append(s.pcs, ipv4.NewPacketConn(c))
	}
	s.msgs = make([]ipv4.Message, 0, 128)
	s.oobs = make([][]byte, 128)
	for i := range s.oobs {
		s.oobs[i] = make([]byte, unix.CmsgSpace(2))
	}
	return s, nil
}

// Buckets is the number of sockets; callers group frames by flow % Buckets.
func (s *Sender) Buckets() int { return len(s.conns) }

// Ports returns the local source ports, by bucket.
func (s *Sender) Ports() []uint16 {
	out := make([]uint16, len(s.conns))
	for i, c := range s.conns {
		out[i] = uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	return out
}

// Send sends frames (each a whole VXLAN frame: header, inner Ethernet,
// inner packet) to dst from the socket of flow's bucket. The caller keeps
// ownership of the buffers; they are not retained.
func (s *Sender) Send(frames [][]byte, dst netip.AddrPort, flow uint32) error {
	if len(frames) == 0 {
		return nil
	}
	a := dst.Addr().Unmap()
	if !a.Is4() {
		return fmt.Errorf("vxlan sender: %s is not IPv4", dst)
	}
	a4 := a.As4()
	copy(s.addr.IP, a4[:])
	s.addr.Port = int(dst.Port())
	pc := s.pcs[flow%uint32(len(s.pcs))]

	gso := s.gso.Load()
	s.msgs = s.msgs[:0]
	for i := 0; i < len(frames); {
		j := i + 1
		if gso {
			size, total := len(frames[i]), len(frames[i])
			for j < len(frames) && j-i < maxGSOSegments && len(frames[j]) <= size && total+len(frames[j]) <= maxUDPPayload {
				total += len(frames[j])
				j++
				if len(frames[j-1]) < size {
					break // a shorter datagram must be the last of a GSO send
				}
			}
		}
		m := ipv4.Message{Buffers: frames[i:j], Addr: &s.addr}
		if j-i > 1 {
			oob := s.oobs[len(s.msgs)]
			putSegmentSize(oob, uint16(len(frames[i])))
			m.OOB = oob
		}
		s.msgs = append(s.msgs, m)
		i = j
	}
	for sent := 0; sent < len(s.msgs); {
		n, err := pc.WriteBatch(s.msgs[sent:], 0)
		if err != nil {
			if gso && errors.Is(err, unix.EIO) {
				// The egress device cannot segment: fall back for good.
				s.gso.Store(false)
				return s.Send(frames, dst, flow)
			}
			return err
		}
		sent += n
	}
	return nil
}

// putSegmentSize writes a UDP_SEGMENT control message into oob.
func putSegmentSize(oob []byte, size uint16) {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = size
}

// Close closes every socket.
func (s *Sender) Close() error {
	var errs []error
	for _, c := range s.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
