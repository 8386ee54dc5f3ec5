package wireguard

// Outbound frames from the TUN, turned into the packets the device seals.
//
// weftd opens the TUN with virtio-net headers and TSO/USO offloads, so one
// read returns a frame: a 10-byte virtio-net header (virtio spec 1.x,
// section 5.1.6, struct virtio_net_hdr, the legacy form the Linux TUN
// driver uses, little-endian) and either one packet or a TCP/UDP
// super-packet of up to 64 KiB that the device must cut into segments.
//
// The raw reader (reader_linux.go) reads the frame straight into the
// device's first element buffer, so that the virtio header ends where the
// device wants the packet to start. splitFrame then works there:
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

import (
	"encoding/binary"
	"errors"
	"io"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// virtioHdrLen is the size of the virtio-net header in front of every
// frame of a TUN opened with IFF_VNET_HDR.
const virtioHdrLen = 10

// Flags and GSO types of the virtio-net header.
const (
	virtioNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: the L4 checksum is partial

	gsoNone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	gsoUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN
)

// virtioHdr is the virtio-net header:
//
//	u8  flags        NEEDS_CSUM: the L4 checksum field holds only the
//	                 pseudo-header sum; finish it over [csum_start, end)
//	u8  gso_type     NONE, TCPV4, TCPV6, UDP_L4, | ECN
//	u16 hdr_len      length of the headers (a hint; splitFrame recomputes it)
//	u16 gso_size     payload bytes per segment
//	u16 csum_start   where the checksum starts (the L4 header)
//	u16 csum_offset  where, from csum_start, the checksum is stored
type virtioHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

// decode reads the header from b[:virtioHdrLen].
func (h *virtioHdr) decode(b []byte) error {
	if len(b) < virtioHdrLen {
		return io.ErrShortBuffer
	}
	h.flags = b[0]
	h.gsoType = b[1]
	h.hdrLen = binary.LittleEndian.Uint16(b[2:4])
	h.gsoSize = binary.LittleEndian.Uint16(b[4:6])
	h.csumStart = binary.LittleEndian.Uint16(b[6:8])
	h.csumOffset = binary.LittleEndian.Uint16(b[8:10])
	return nil
}

// encode writes the header into b[:virtioHdrLen].
func (h *virtioHdr) encode(b []byte) {
	_ = b[virtioHdrLen-1]
	b[0] = h.flags
	b[1] = h.gsoType
	binary.LittleEndian.PutUint16(b[2:4], h.hdrLen)
	binary.LittleEndian.PutUint16(b[4:6], h.gsoSize)
	binary.LittleEndian.PutUint16(b[6:8], h.csumStart)
	binary.LittleEndian.PutUint16(b[8:10], h.csumOffset)
}

var (
	// errBadFrame: a frame whose virtio header does not match its packet.
	errBadFrame = errors.New("wireguard: malformed TUN frame")
	// errTooManySegments: a super-packet with more segments than the
	// batch has buffers left.
	errTooManySegments = errors.New("wireguard: super-packet has more segments than the batch has room")
)

// Header offsets used here.
const (
	ip4TotalLen   = 2
	ip4ID         = 4
	ip4FragOff    = 6
	ip4Proto      = 9
	ip4Csum       = 10
	ip4Src        = 12
	ip6PayloadLen = 4
	ip6Next       = 6
	ip6Src        = 8
	ip6HdrLen     = 40

	protoTCP = 6
	protoUDP = 17

	tcpSeq   = 4
	tcpOff   = 12
	tcpFlags = 13
	tcpCsum  = 16
	tcpFIN   = 0x01
	tcpPSH   = 0x08
	tcpCWR   = 0x80
	udpLen   = 4
	udpCsum  = 6
	udpHdr   = 8
)

// splitFrame turns the packet src, which came behind the virtio header h,
// into whole packets in bufs[k][offset:], their lengths in sizes[k], and
// returns how many. When inPlace, src is bufs[0][offset:][:len(src)] and
// segment 0 stays where it is; otherwise src is another buffer and every
// segment is copied. Errors (errBadFrame, errTooManySegments) mean the
// frame is dropped: nothing in bufs is to be sent.
func splitFrame(h *virtioHdr, src []byte, bufs [][]byte, sizes []int, offset int, inPlace bool) (int, error) {
	if len(bufs) == 0 {
		return 0, errTooManySegments
	}
	if h.gsoType == gsoNone {
		if len(src) == 0 || len(src) > len(bufs[0])-offset {
			return 0, errBadFrame
		}
		pkt := src
		if !inPlace {
			pkt = bufs[0][offset : offset+copy(bufs[0][offset:], src)]
		}
		if h.flags&virtioNeedsCsum != 0 {
			if err := finishChecksum(h, pkt); err != nil {
				return 0, err
			}
		}
		sizes[0] = len(pkt)
		return 1, nil
	}
	s, err := parseSuper(h, src)
	if err != nil {
		return 0, err
	}
	if s.segs > len(bufs) {
		return 0, errTooManySegments
	}
	for i := 1; i < s.segs; i++ {
		b := bufs[i][offset:]
		if len(b) < s.hdrLen+s.mss {
			return 0, errBadFrame
		}
		copy(b, src[:s.hdrLen])
		n := copy(b[s.hdrLen:], s.payload(src, i))
		s.fix(b[:s.hdrLen+n], src, i)
		sizes[i] = s.hdrLen + n
	}
	// Segment 0 last: the others read the super-packet's own headers.
	n := s.payloadLen(0)
	b := bufs[0][offset:]
	if !inPlace {
		if len(b) < s.hdrLen+n {
			return 0, errBadFrame
		}
		copy(b, src[:s.hdrLen+n])
	}
	s.fix(b[:s.hdrLen+n], src, 0)
	sizes[0] = s.hdrLen + n
	return s.segs, nil
}

// superPacket is a GSO packet checked against its own headers (the virtio
// header's hdr_len and csum_start are not trusted).
type superPacket struct {
	v6     bool
	proto  uint8
	l3Len  int // IP header length
	hdrLen int // IP and L4 header length
	mss    int
	length int // the whole packet
	segs   int
	// The super-packet's own fields that segments derive theirs from,
	// read before segment 0 is rewritten in place.
	id    uint16
	seq   uint32
	flags uint8
}

func parseSuper(h *virtioHdr, pkt []byte) (superPacket, error) {
	s := superPacket{mss: int(h.gsoSize), length: len(pkt)}
	if s.mss == 0 || len(pkt) < 20 {
		return s, errBadFrame
	}
	switch pkt[0] >> 4 {
	case 4:
		s.l3Len = int(pkt[0]&0x0f) * 4
		if s.l3Len < 20 || len(pkt) < s.l3Len || binary.BigEndian.Uint16(pkt[ip4FragOff:])&0x3fff != 0 {
			return s, errBadFrame
		}
		s.proto = pkt[ip4Proto]
		s.id = binary.BigEndian.Uint16(pkt[ip4ID:])
	case 6:
		s.v6, s.l3Len = true, ip6HdrLen
		if len(pkt) < ip6HdrLen {
			return s, errBadFrame
		}
		s.proto = pkt[ip6Next] // extension headers: not from weft's pods' GSO
	default:
		return s, errBadFrame
	}
	want := uint8(0)
	switch h.gsoType &^ gsoECN {
	case gsoTCPv4:
		want = protoTCP
		if s.v6 {
			return s, errBadFrame
		}
	case gsoTCPv6:
		want = protoTCP
		if !s.v6 {
			return s, errBadFrame
		}
	case gsoUDPL4:
		want = protoUDP
	}
	if want == 0 || s.proto != want {
		return s, errBadFrame
	}
	l4 := pkt[s.l3Len:]
	switch s.proto {
	case protoTCP:
		if len(l4) < 20 {
			return s, errBadFrame
		}
		l4Len := int(l4[tcpOff]>>4) * 4
		if l4Len < 20 || len(l4) < l4Len {
			return s, errBadFrame
		}
		s.hdrLen = s.l3Len + l4Len
		s.seq = binary.BigEndian.Uint32(l4[tcpSeq:])
		s.flags = l4[tcpFlags]
	default:
		if len(l4) < udpHdr {
			return s, errBadFrame
		}
		s.hdrLen = s.l3Len + udpHdr
	}
	if len(pkt) <= s.hdrLen || s.hdrLen+s.mss > 65535 {
		return s, errBadFrame
	}
	s.segs = (len(pkt) - s.hdrLen + s.mss - 1) / s.mss
	return s, nil
}

func (s *superPacket) payloadLen(i int) int { return min(s.mss, s.length-s.hdrLen-i*s.mss) }

// payload is segment i's payload in the super-packet src.
func (s *superPacket) payload(src []byte, i int) []byte {
	off := s.hdrLen + i*s.mss
	return src[off : off+s.payloadLen(i)]
}

// fix turns the super-packet's headers at the front of seg (segment i,
// headers and payload) into segment i's: IPv4 total length, ID + i and
// header checksum, or IPv6 payload length; TCP sequence number + i*mss,
// CWR on the first segment only, FIN and PSH on the last only; UDP length;
// and the complete L4 checksum.
func (s *superPacket) fix(seg, src []byte, i int) {
	if s.v6 {
		binary.BigEndian.PutUint16(seg[ip6PayloadLen:], uint16(len(seg)-ip6HdrLen))
	} else {
		binary.BigEndian.PutUint16(seg[ip4TotalLen:], uint16(len(seg)))
		binary.BigEndian.PutUint16(seg[ip4ID:], s.id+uint16(i))
		seg[ip4Csum], seg[ip4Csum+1] = 0, 0
		binary.BigEndian.PutUint16(seg[ip4Csum:], ^checksum.Checksum(seg[:s.l3Len], 0))
	}
	l4 := seg[s.l3Len:]
	at := udpCsum
	if s.proto == protoTCP {
		at = tcpCsum
		binary.BigEndian.PutUint32(l4[tcpSeq:], s.seq+uint32(i*s.mss))
		f := s.flags
		if i > 0 {
			f &^= tcpCWR
		}
		if i < s.segs-1 {
			f &^= tcpFIN | tcpPSH
		}
		l4[tcpFlags] = f
	} else {
		binary.BigEndian.PutUint16(l4[udpLen:], uint16(len(l4)))
	}
	l4[at], l4[at+1] = 0, 0
	sum := ^checksum.Checksum(l4, pseudoSum(seg, s.v6, s.proto, len(l4)))
	if sum == 0 && s.proto == protoUDP {
		sum = 0xffff // zero means "no checksum" to UDP
	}
	binary.BigEndian.PutUint16(l4[at:], sum)
}

// pseudoSum is the running sum of the TCP/UDP pseudo-header of the IP
// packet pkt (RFC 793, RFC 8200 section 8.1).
func pseudoSum(pkt []byte, v6 bool, proto uint8, l4Len int) uint16 {
	addrs := pkt[ip4Src : ip4Src+8]
	if v6 {
		addrs = pkt[ip6Src : ip6Src+32]
	}
	var pseudo [4]byte
	binary.BigEndian.PutUint16(pseudo[0:], uint16(proto))
	binary.BigEndian.PutUint16(pseudo[2:], uint16(l4Len))
	return checksum.Checksum(pseudo[:], checksum.Checksum(addrs, 0))
}

// finishChecksum completes the partial L4 checksum of a packet that came
// with NEEDS_CSUM and no GSO, as a NIC would: the sum of everything from
// csum_start (the partial pseudo-header sum included), complemented, at
// csum_start+csum_offset.
func finishChecksum(h *virtioHdr, pkt []byte) error {
	start, at := int(h.csumStart), int(h.csumStart)+int(h.csumOffset)
	if start >= len(pkt) || at+2 > len(pkt) || h.csumOffset&1 != 0 {
		return errBadFrame
	}
	sum := ^checksum.Checksum(pkt[start:], 0)
	if sum == 0 && h.csumOffset == udpCsum {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[at:], sum)
	return nil
}
