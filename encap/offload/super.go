package offload

import "encoding/binary"

// Super-packets: a TCP or UDP GSO packet read from the TUN, checked against
// its own IP and L4 headers (the virtio header's hdr_len and csum_start are
// not trusted) and cut into segments. Segment i carries
// pkt[HdrLen+i*MSS:][:MSS] of payload, the last one what is left.

// Super is a parsed super-packet.
type Super struct {
	Pkt    []byte // the headers, then (at least) the first segment's payload
	Length int    // the whole packet's length
	// Stride, when not zero, says the payloads are spread over Base:
	// segment i's payload is at Base[i*Stride+Headroom+HdrLen:], with
	// Headroom bytes and room for its IP and L4 headers in front of it
	// (the VXLAN fast path reads super-packets so).
	Stride   int
	Base     []byte
	Headroom int
	V6       bool
	Proto    uint8 // ProtoTCP or ProtoUDP
	L3Len    int   // IP header length
	HdrLen   int   // IP + L4 header length
	MSS      int   // payload bytes per segment
	Segs     int
}

// ParseSuper checks a packet that came with a GSO virtio header.
// ErrMalformed: the header does not describe the packet.
func ParseSuper(h *Header, pkt []byte) (Super, error) {
	return ParseSuperLen(h, pkt, len(pkt))
}

// ParseSuperLen is ParseSuper for a packet of length bytes of which pkt
// holds the start: at least the headers.
func ParseSuperLen(h *Header, pkt []byte, length int) (Super, error) {
	s := Super{Pkt: pkt, Length: length, MSS: int(h.GSOSize)}
	v6, l3Len, proto, ok := parseIP(pkt)
	if !ok || s.MSS == 0 {
		return s, ErrMalformed
	}
	switch h.GSOType &^ GSOECN {
	case GSOTCPv4:
		s.Proto = ProtoTCP
		ok = !v6
	case GSOTCPv6:
		s.Proto = ProtoTCP
		ok = v6
	case GSOUDPL4:
		s.Proto = ProtoUDP
	default:
		ok = false
	}
	// IPv6 extension headers would need walking: the kernel puts them on
	// GSO packets only in cases weft does not produce. An IPv4 fragment
	// is no super-packet (parseIP refuses it).
	if !ok || proto != s.Proto {
		return s, ErrMalformed
	}
	s.V6, s.L3Len = v6, l3Len
	l4Len := l4HeaderLen(pkt, l3Len, proto)
	if l4Len == 0 {
		return s, ErrMalformed
	}
	s.HdrLen = s.L3Len + l4Len
	if length <= s.HdrLen || s.HdrLen+s.MSS > 65535 {
		return s, ErrMalformed
	}
	s.Segs = (length - s.HdrLen + s.MSS - 1) / s.MSS
	return s, nil
}

// parseIP reads the IP header at the start of pkt: ok is false when pkt is
// neither IPv4 nor IPv6, is shorter than the fixed header, or (IPv4) has an
// IHL under 5 or longer than pkt, or is a fragment.
func parseIP(pkt []byte) (v6 bool, l3Len int, proto uint8, ok bool) {
	if len(pkt) < ipv4MinHeaderLen {
		return false, 0, 0, false
	}
	switch pkt[0] >> 4 {
	case 4:
		l3Len = int(pkt[0]&0x0f) * 4
		if l3Len < ipv4MinHeaderLen || l3Len > len(pkt) || binary.BigEndian.Uint16(pkt[ip4Frag:])&ip4FragMask != 0 {
			return false, 0, 0, false
		}
		return false, l3Len, pkt[ip4Proto], true
	case 6:
		if len(pkt) < ipv6HeaderLen {
			return false, 0, 0, false
		}
		return true, ipv6HeaderLen, pkt[ip6NextHdr], true
	}
	return false, 0, 0, false
}

// l4HeaderLen is the TCP or UDP header length of pkt, whose IP header is
// l3Len bytes, or 0 if pkt does not hold a whole one (a TCP data offset
// under 5 words counts as not whole).
func l4HeaderLen(pkt []byte, l3Len int, proto uint8) int {
	switch proto {
	case ProtoTCP:
		if len(pkt) < l3Len+tcpMinHeaderLen {
			return 0
		}
		n := int(pkt[l3Len+tcpDataOff]>>4) * 4
		if n < tcpMinHeaderLen || len(pkt) < l3Len+n {
			return 0
		}
		return n
	case ProtoUDP:
		if len(pkt) < l3Len+udpHeaderLen {
			return 0
		}
		return udpHeaderLen
	}
	return 0
}

// PayloadLen is the payload length of segment i.
func (s *Super) PayloadLen(i int) int {
	return min(s.MSS, s.Length-s.HdrLen-i*s.MSS)
}

// Payload is segment i's payload: a slice of Pkt, or of Base when spread.
func (s *Super) Payload(i int) []byte {
	n := s.PayloadLen(i)
	if s.Stride != 0 {
		off := i*s.Stride + s.Headroom + s.HdrLen
		return s.Base[off : off+n]
	}
	off := s.HdrLen + i*s.MSS
	return s.Pkt[off : off+n]
}

// Segment writes the IP and L4 headers of segment i into h[:s.HdrLen] and
// returns the segment's payload (Payload). The headers are those of the
// super-packet with: IPv4 total length, ID (+i) and header checksum, or
// IPv6 payload length; TCP sequence number advanced by i*MSS, CWR only on
// the first segment, FIN and PSH only on the last; UDP length; and the L4
// checksum over the segment, complete, or with partial only the
// pseudo-header sum (folded, not complemented) for the receiver to finish
// (VXLAN remote checksum offload): the payload is then never read.
//
// h may be s.Pkt itself for segment 0 (fixed in place), provided that is
// the last segment written: the others read the super-packet's headers.
func (s *Super) Segment(i int, h []byte, partial bool) []byte {
	payload := s.Payload(i)
	n := len(payload)
	h = h[:s.HdrLen]
	copy(h, s.Pkt[:s.HdrLen])
	l4 := h[s.L3Len:]
	if s.V6 {
		binary.BigEndian.PutUint16(h[ip6PayloadLen:], uint16(len(l4)+n))
	} else {
		binary.BigEndian.PutUint16(h[ip4TotalLen:], uint16(s.HdrLen+n))
		binary.BigEndian.PutUint16(h[ip4ID:], binary.BigEndian.Uint16(s.Pkt[ip4ID:])+uint16(i))
		PutIPv4Checksum(h[:s.L3Len])
	}
	var sumAt int
	if s.Proto == ProtoTCP {
		binary.BigEndian.PutUint32(l4[tcpSeq:], binary.BigEndian.Uint32(s.Pkt[s.L3Len+tcpSeq:])+uint32(i*s.MSS))
		if i > 0 {
			l4[tcpFlags] &^= tcpCWR
		}
		if i < s.Segs-1 {
			l4[tcpFlags] &^= tcpFIN | tcpPSH
		}
		sumAt = TCPCsum
	} else {
		binary.BigEndian.PutUint16(l4[udpLen:], uint16(udpHeaderLen+n))
		sumAt = UDPCsum
	}
	l4[sumAt], l4[sumAt+1] = 0, 0
	src, dst := Addrs(h, s.V6)
	acc := PseudoSum(src, dst, s.Proto, len(l4)+n)
	if partial {
		binary.BigEndian.PutUint16(l4[sumAt:], acc)
		return payload
	}
	sum := ^Checksum(payload, Checksum(l4, acc))
	if sum == 0 && s.Proto == ProtoUDP {
		sum = 0xffff // zero means "no checksum" to UDP
	}
	binary.BigEndian.PutUint16(l4[sumAt:], sum)
	return payload
}

// Split writes segments first, first+1, ... as whole packets into
// bufs[k][offset:], their lengths into sizes[k], and returns how many it
// wrote: as many as bufs holds, up to the last segment, or up to a buffer
// too short for its segment. Each packet is copied, with complete
// checksums: the path for packets that must exist on their own.
func (s *Super) Split(first int, bufs [][]byte, sizes []int, offset int) int {
	k := 0
	for i := first; i < s.Segs && k < len(bufs); i++ {
		b := bufs[k][offset:]
		if len(b) < s.HdrLen+s.PayloadLen(i) {
			break
		}
		payload := s.Segment(i, b, false)
		sizes[k] = s.HdrLen + copy(b[s.HdrLen:], payload)
		k++
	}
	return k
}

// SplitFrame turns the packet src, which came from the TUN behind the
// virtio header h, into whole packets in bufs[k][offset:], their lengths
// in sizes[k], and returns how many:
//
//   - a lone packet stays as it is (copied unless inPlace); its L4
//     checksum is finished only if the header says it is partial
//     (NEEDS_CSUM);
//   - a super-packet's segments are copied out (Split), and when inPlace
//     segment 0 is fixed last where it is: its payload already is where
//     it must be.
//
// When inPlace, src is bufs[0][offset:][:len(src)]; otherwise src is
// another buffer. Every checksum of a segment is complete. Errors
// (ErrMalformed, ErrTooManySegments) mean the frame is to be dropped:
// nothing in bufs is to be sent.
func SplitFrame(h *Header, src []byte, bufs [][]byte, sizes []int, offset int, inPlace bool) (int, error) {
	if len(bufs) == 0 {
		return 0, ErrTooManySegments
	}
	if h.GSOType == GSONone {
		if len(src) == 0 || len(src) > len(bufs[0])-offset {
			return 0, ErrMalformed
		}
		pkt := src
		if !inPlace {
			pkt = bufs[0][offset : offset+copy(bufs[0][offset:], src)]
		}
		if h.Flags&NeedsCsum != 0 {
			if err := FinishChecksum(h, pkt); err != nil {
				return 0, err
			}
		}
		sizes[0] = len(pkt)
		return 1, nil
	}
	s, err := ParseSuper(h, src)
	if err != nil {
		return 0, err
	}
	if s.Segs > len(bufs) {
		return 0, ErrTooManySegments
	}
	if !inPlace {
		if s.Split(0, bufs, sizes, offset) != s.Segs {
			return 0, ErrMalformed
		}
		return s.Segs, nil
	}
	if s.Split(1, bufs[1:], sizes[1:], offset) != s.Segs-1 {
		return 0, ErrMalformed
	}
	s.Segment(0, src, false)
	sizes[0] = s.HdrLen + s.PayloadLen(0)
	return s.Segs, nil
}
