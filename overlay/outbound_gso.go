package overlay

import (
	"encoding/binary"

	"github.com/weftnet/weft/encap/vxlan"
)

// Outbound super-packets: a TCP or UDP GSO packet read from the TUN (see
// offload.go), checked against its own headers and cut into segments
// without copying its payload. outbound_linux.go sends the segments
// gathered; split makes whole packets for the per-packet path.

// segHdrLen is the most header bytes one gathered segment needs: frame
// header, IP and L4 headers.
const segHdrLen = vxlan.FrameHeaderLen + maxHdrLen

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
	ip, ok := parseIP(pkt)
	if !ok || s.mss == 0 {
		return s, errBadGSO
	}
	switch h.gsoType &^ gsoECN {
	case gsoTCPv4:
		s.proto = protoTCP
		ok = !ip.v6
	case gsoTCPv6:
		s.proto = protoTCP
		ok = ip.v6
	case gsoUDPL4:
		s.proto = protoUDP
	default:
		ok = false
	}
	// IPv6 extension headers would need walking: the kernel puts them on
	// GSO packets only in cases weft does not produce. An IPv4 fragment
	// is no super-packet.
	if !ok || ip.proto != s.proto || ip.fragment() {
		return s, errBadGSO
	}
	s.v6, s.l3Len = ip.v6, ip.l3Len
	l4Len := ip.l4Len(pkt)
	if l4Len == 0 {
		return s, errBadGSO
	}
	s.hdrLen = s.l3Len + l4Len
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
	if s.v6 {
		binary.BigEndian.PutUint16(h[ip6PayloadLen:], uint16(len(l4)+n))
	} else {
		binary.BigEndian.PutUint16(h[ip4TotalLen:], uint16(s.hdrLen+n))
		binary.BigEndian.PutUint16(h[ip4ID:], binary.BigEndian.Uint16(s.pkt[ip4ID:])+uint16(i))
		putIPv4Checksum(h[:s.l3Len])
	}
	var sumAt int
	if s.proto == protoTCP {
		binary.BigEndian.PutUint32(l4[tcpSeq:], binary.BigEndian.Uint32(s.pkt[s.l3Len+tcpSeq:])+uint32(i*s.mss))
		if i > 0 {
			l4[tcpFlags] &^= tcpCWR
		}
		if i < s.segs-1 {
			l4[tcpFlags] &^= tcpFIN | tcpPSH
		}
		sumAt = tcpCsum
	} else {
		binary.BigEndian.PutUint16(l4[udpLen:], uint16(udpHeaderLen+n))
		sumAt = udpCsum
	}
	l4[sumAt], l4[sumAt+1] = 0, 0
	src, dst := addrs(h, s.v6)
	acc := pseudoSum(src, dst, s.proto, len(l4)+n)
	if partial {
		binary.BigEndian.PutUint16(l4[sumAt:], acc)
		return payload
	}
	sum := ^csum(payload, csum(l4, acc))
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
