package overlay

import (
	"encoding/binary"
	"errors"
	"io"

	"github.com/weftnet/weft/encap/vxlan"
)

// Offloads at the TUN device.
//
// weftd opens the TUN device with IFF_VNET_HDR and TSO/USO offloads, so the
// kernel hands it TCP and UDP "super-packets" of up to 64 KiB with one
// virtio-net header in front, and accepts such packets back (virtio spec
// 1.x, section 5.1.6 "Device Operation", struct virtio_net_hdr; the Linux
// TUN driver uses the 10-byte legacy form in native byte order, which is
// little-endian on every platform weft ships for).
//
// Outbound, a super-packet bound for a VXLAN peer is never cut into packets
// in memory: superPacket.segment writes the headers of each segment into a
// small buffer and the payload is sent straight from the read buffer (see
// fastpath_linux.go). Everything else (WireGuard peers, fallbacks) gets real
// packets from superPacket.split. Inbound, coalesce.go does the reverse.

const (
	virtioHdrLen = 10

	virtioNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: L4 checksum is partial
	virtioDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID

	gsoNone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	gsoUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO)
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: the packet carries CWR

	protoTCP = 6
	protoUDP = 17

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80

	// maxHdrLen bounds the IP and L4 headers of one segment: 60 bytes of
	// IPv4 header (40 for IPv6) and 60 of TCP header.
	maxHdrLen = 60 + 60
)

var errBadGSO = errors.New("malformed offload packet")

// virtioHdr is the virtio-net header in front of every packet on the TUN
// device:
//
//	u8  flags        NEEDS_CSUM: the L4 checksum field holds only the
//	                 pseudo-header sum; finish it over [csum_start, end)
//	u8  gso_type     NONE, TCPV4, TCPV6, UDP_L4, | ECN
//	u16 hdr_len      length of the headers (a hint; weft recomputes it)
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

func (h *virtioHdr) encode(b []byte) {
	_ = b[virtioHdrLen-1]
	b[0] = h.flags
	b[1] = h.gsoType
	binary.LittleEndian.PutUint16(b[2:4], h.hdrLen)
	binary.LittleEndian.PutUint16(b[4:6], h.gsoSize)
	binary.LittleEndian.PutUint16(b[6:8], h.csumStart)
	binary.LittleEndian.PutUint16(b[8:10], h.csumOffset)
}

// finishChecksum completes the partial L4 checksum of a packet that came
// with NEEDS_CSUM and no GSO: the ones' complement sum of everything from
// csum_start (the partial pseudo-header sum included) goes, complemented, at
// csum_start+csum_offset, as a NIC would do it.
func finishChecksum(h *virtioHdr, pkt []byte) error {
	start, at := int(h.csumStart), int(h.csumStart)+int(h.csumOffset)
	if start >= len(pkt) || at+2 > len(pkt) || h.csumOffset&1 != 0 {
		return errBadGSO
	}
	s := ^csumFold(csumAdd(pkt[start:], 0))
	if s == 0 {
		s = 0xffff // zero means "no checksum" to UDP
	}
	binary.BigEndian.PutUint16(pkt[at:], s)
	return nil
}

// superPacket is a GSO packet from the TUN device, checked against its own
// IP and L4 headers (the virtio header's hdr_len and csum_start are not
// trusted). Segment i carries pkt[hdrLen+i*mss:][:mss] of payload, the last
// one what is left.
type superPacket struct {
	pkt    []byte // the headers, then (at least) the first segment's payload
	length int    // the whole packet's length
	// stride, when not zero, says the payloads are spread (spread_linux.go):
	// segment i's payload is at base[i*stride+vxlan.FrameHeaderLen+hdrLen:],
	// with room in front of it for its frame and IP/L4 headers.
	stride int
	base   []byte
	v6     bool
	proto  uint8 // protoTCP or protoUDP
	l3Len  int   // IP header length
	hdrLen int   // IP + L4 header length
	mss    int   // payload bytes per segment
	segs   int
}

// parseSuper checks a packet that came with a GSO virtio header.
func parseSuper(h *virtioHdr, pkt []byte) (superPacket, error) {
	return parseSuperLen(h, pkt, len(pkt))
}

// parseSuperLen is parseSuper for a packet of length bytes of which pkt
// holds the start: at least the headers.
func parseSuperLen(h *virtioHdr, pkt []byte, length int) (superPacket, error) {
	s := superPacket{pkt: pkt, length: length, mss: int(h.gsoSize)}
	switch h.gsoType &^ gsoECN {
	case gsoTCPv4:
		s.proto = protoTCP
	case gsoTCPv6:
		s.proto, s.v6 = protoTCP, true
	case gsoUDPL4:
		s.proto = protoUDP
		s.v6 = len(pkt) > 0 && pkt[0]>>4 == 6
	default:
		return s, errBadGSO
	}
	if s.mss == 0 {
		return s, errBadGSO
	}
	if s.v6 {
		// No extension headers: the kernel puts them on GSO packets only
		// in cases weft does not produce, and they would need walking.
		if len(pkt) < 40 || pkt[0]>>4 != 6 || pkt[6] != s.proto {
			return s, errBadGSO
		}
		s.l3Len = 40
	} else {
		if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[9] != s.proto {
			return s, errBadGSO
		}
		s.l3Len = int(pkt[0]&0x0f) * 4
		if s.l3Len < 20 || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
			return s, errBadGSO // short IHL, or a fragment
		}
	}
	if s.proto == protoTCP {
		if len(pkt) < s.l3Len+20 {
			return s, errBadGSO
		}
		doff := int(pkt[s.l3Len+12]>>4) * 4
		if doff < 20 {
			return s, errBadGSO
		}
		s.hdrLen = s.l3Len + doff
	} else {
		s.hdrLen = s.l3Len + 8
	}
	if length <= s.hdrLen || s.hdrLen+s.mss > 65535 {
		return s, errBadGSO
	}
	s.segs = (length - s.hdrLen + s.mss - 1) / s.mss
	return s, nil
}

// payloadLen is the payload length of segment i.
func (s *superPacket) payloadLen(i int) int {
	return min(s.mss, s.length-s.hdrLen-i*s.mss)
}

// payload is segment i's payload: a slice of pkt, or of base when spread.
func (s *superPacket) payload(i int) []byte {
	n := s.payloadLen(i)
	if s.stride != 0 {
		off := i*s.stride + vxlan.FrameHeaderLen + s.hdrLen
		return s.base[off : off+n]
	}
	off := s.hdrLen + i*s.mss
	return s.pkt[off : off+n]
}

// segment writes the IP and L4 headers of segment i into h[:s.hdrLen] and
// returns the segment's payload, a slice of s.pkt. The headers are those of
// the super-packet with: IPv4 total length, ID (+i) and header checksum, or
// IPv6 payload length; TCP sequence number advanced by i*mss, CWR only on
// the first segment, FIN and PSH only on the last; UDP length; and the L4
// checksum over the segment, complete, or with partial only the
// pseudo-header sum (folded, not complemented) for the receiver to finish
// (VXLAN remote checksum offload): the payload is then never read.
func (s *superPacket) segment(i int, h []byte, partial bool) []byte {
	payload := s.payload(i)
	n := len(payload)
	h = h[:s.hdrLen]
	copy(h, s.pkt[:s.hdrLen])
	l4 := h[s.l3Len:]
	var src, dst []byte
	if s.v6 {
		binary.BigEndian.PutUint16(h[4:6], uint16(len(l4)+n))
		src, dst = h[8:24], h[24:40]
	} else {
		binary.BigEndian.PutUint16(h[2:4], uint16(s.hdrLen+n))
		binary.BigEndian.PutUint16(h[4:6], binary.BigEndian.Uint16(s.pkt[4:6])+uint16(i))
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:12], ^csumFold(csumAdd(h[:s.l3Len], 0)))
		src, dst = h[12:16], h[16:20]
	}
	var sumAt int
	if s.proto == protoTCP {
		binary.BigEndian.PutUint32(l4[4:8], binary.BigEndian.Uint32(s.pkt[s.l3Len+4:])+uint32(i*s.mss))
		if i > 0 {
			l4[13] &^= tcpCWR
		}
		if i < s.segs-1 {
			l4[13] &^= tcpFIN | tcpPSH
		}
		sumAt = 16
	} else {
		binary.BigEndian.PutUint16(l4[4:6], uint16(8+n))
		sumAt = 6
	}
	l4[sumAt], l4[sumAt+1] = 0, 0
	acc := pseudoSum(src, dst, s.proto, len(l4)+n)
	if partial {
		binary.BigEndian.PutUint16(l4[sumAt:], csumFold(acc))
		return payload
	}
	acc = csumAdd(l4, acc)
	acc = csumAdd(payload, acc)
	sum := ^csumFold(acc)
	if sum == 0 && s.proto == protoUDP {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(l4[sumAt:], sum)
	return payload
}

// split writes segments first, first+1, ... as whole packets into
// bufs[k][offset:], their lengths into sizes[k], and returns how many it
// wrote: as many as bufs holds, or up to the last segment. Each packet is
// copied; this is the path for packets that must exist on their own (the
// WireGuard transport takes whole packets).
func (s *superPacket) split(first int, bufs [][]byte, sizes []int, offset int) int {
	k := 0
	for i := first; i < s.segs && k < len(bufs); i++ {
		b := bufs[k][offset:]
		payload := s.segment(i, b, false)
		sizes[k] = s.hdrLen + copy(b[s.hdrLen:], payload)
		k++
	}
	return k
}
