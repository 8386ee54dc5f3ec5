package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// maxGSOSegments is how many datagrams one UDP_SEGMENT send may carry
	// (the kernel's UDP_MAX_SEGMENTS is at least this).
	maxGSOSegments = 64
	// maxUDPPayload is the largest UDP payload over IPv4, and so over
	// either family (IPv6 allows 65,527): one limit for every socket.
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
//
// The sockets are dual-stack where the host has IPv6 (see Receiver), so
// one Sender reaches peers on IPv4 and IPv6 underlays, each flow from the
// same source port whatever the family; GSO works the same for both. The
// kernel fills in the outer UDP checksum for both families: mandatory over
// IPv6 (weft never sets UDP_NO_CHECK6_TX, so a Linux vxlan peer without
// udp6zerocsumrx accepts its datagrams), and sent over IPv4 too, where a
// receiver may also accept zero.
type Sender struct {
	conns []*net.UDPConn
	gso   atomic.Bool
	// v6 is set when the sockets are IPv6 (dual-stack): destinations go
	// out as sockaddr_in6, IPv4 ones as IPv4-mapped addresses. Else the
	// sockets are IPv4 and reach IPv4 destinations only.
	v6 bool

	// batch carries Send's datagrams to SendGather.
	batch *Gather

	// SendGather state (gather_linux.go): the raw sockets, the messages
	// still to send and the error of the last attempt, and the write
	// callback made once so that sends do not allocate.
	raws     []syscall.RawConn
	sa4      unix.RawSockaddrInet4
	sa6      unix.RawSockaddrInet6
	gmsgs    []unix.Mmsghdr
	gerr     error
	sendmmsg func(fd uintptr) bool
}

// NewSender opens n sockets (1..64) on ephemeral ports, dual-stack where
// the host has IPv6, else IPv4.
func NewSender(n int) (*Sender, error) {
	if n < 1 || n > 64 {
		return nil, fmt.Errorf("vxlan sender: %d sockets, want 1..64", n)
	}
	s := &Sender{batch: NewGather()}
	s.sendmmsg = s.sendmmsgFunc
	s.gso.Store(true)
	for i := range n {
		// "udp" on the wildcard address: dual-stack if the host can.
		c, err := net.ListenUDP("udp", &net.UDPAddr{})
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
		v4, v6 := socketFamilies(rc)
		if i == 0 {
			s.v6 = v6
		}
		if !v4 || v6 != s.v6 {
			// Every socket must reach IPv4, and all alike.
			c.Close()
			s.Close()
			return nil, fmt.Errorf("vxlan sender socket %s: families differ (IPv4 %v, IPv6 %v)", c.LocalAddr(), v4, v6)
		}
		s.raws = append(s.raws, rc)
		s.conns = append(s.conns, c)
	}
	return s, nil
}

// Reaches reports whether the sockets can send to a's family.
func (s *Sender) Reaches(a netip.Addr) bool { return a.Unmap().Is4() || s.v6 }

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
	gso := s.gso.Load()
	g := s.batch
	g.Reset()
	first := 0 // the first frame in g
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
		if g.Full() || len(g.iovs)+j-i > cap(g.iovs) {
			if done, err := s.sendBatch(g, frames[first:], dst, flow, gso); done || err != nil {
				return err
			}
			g.Reset()
			first = i
		}
		g.Begin(len(frames[i]))
		for _, f := range frames[i:j] {
			g.Add(f)
		}
		i = j
	}
	_, err := s.sendBatch(g, frames[first:], dst, flow, gso)
	return err
}

// sendBatch sends g, whose datagrams are made of rest's first frames. If
// the egress device turned out unable to segment, it sends all of rest one
// frame per datagram instead and reports done: nothing is left to send.
func (s *Sender) sendBatch(g *Gather, rest [][]byte, dst netip.AddrPort, flow uint32, gso bool) (done bool, err error) {
	err = s.SendGather(g, dst, flow)
	if gso && ErrNoGSO(err) {
		return true, s.Send(rest, dst, flow)
	}
	return false, err
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
