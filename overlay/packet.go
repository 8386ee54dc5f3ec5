package overlay

import (
	"encoding/binary"
	"net/netip"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// Inner packets: where the router reads IP, TCP and UDP headers.
//
// Every path of the router that looks inside a pod packet (routing, flow
// hashing, remote checksum offload, ICMP errors) reads it through parseIP
// and the offsets below, so a header field is located once here.
// Super-packet segmentation and coalescing read the same headers in
// encap/offload, which the WireGuard transport shares. Extension headers
// of IPv6 are not walked: the router treats them as payload, as the
// kernel's GSO and GRO do for the packets weft handles.
//
//	IPv4 (RFC 791)                       IPv6 (RFC 8200)
//	 0 ver|IHL  1 TOS   2-3 total length  0-3 ver|class|flow label
//	 4-5 ID     6-7 flags|fragment offset 4-5 payload length
//	 8 TTL      9 protocol 10-11 checksum 6 next header  7 hop limit
//	12-15 source 16-19 destination       8-23 source 24-39 destination

const (
	ipv4MinHeaderLen = 20
	ipv6HeaderLen    = 40

	ip4TotalLen = 2
	ip4ID       = 4
	ip4Frag     = 6 // flags (3 bits: reserved, DF, MF) and fragment offset (13)
	ip4Proto    = 9
	ip4Csum     = 10
	ip4Src      = 12
	ip4Dst      = 16

	ip6PayloadLen = 4
	ip6NextHdr    = 6
	ip6Src        = 8
	ip6Dst        = 24

	ip4FlagRsv    = 0x8000
	ip4FlagDF     = 0x4000
	ip4FlagMF     = 0x2000
	ip4OffsetMask = 0x1fff

	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17

	tcpMinHeaderLen = 20
	tcpSeq          = 4
	tcpDataOff      = 12 // data offset in the high nibble
	tcpFlags        = 13
	tcpCsum         = 16
	udpHeaderLen    = 8
	udpLen          = 4
	udpCsum         = 6

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

// ipHeader is the layout of an inner packet's IP header.
type ipHeader struct {
	v6     bool
	l3Len  int   // header length: IPv4 IHL × 4, IPv6 40
	proto  uint8 // IPv4 protocol, IPv6 next header
	length int   // the packet's length by its header: IPv4 total length, IPv6 40 + payload length
	// frag is the IPv4 flags and fragment offset field; zero for IPv6.
	frag uint16
}

// parseIP reads the IP header at the start of pkt. ok is false when pkt is
// neither IPv4 nor IPv6, is shorter than the fixed header, or (IPv4) has an
// IHL under 5 or longer than pkt. It checks nothing else: validInner does.
func parseIP(pkt []byte) (h ipHeader, ok bool) {
	ok = h.parse(pkt)
	return h, ok
}

// parse is parseIP into h, for the per-packet path (no 40-byte struct
// returned by value through the calls of the inbound checks).
func (h *ipHeader) parse(pkt []byte) bool {
	*h = ipHeader{}
	if len(pkt) == 0 {
		return false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < ipv4MinHeaderLen {
			return false
		}
		h.l3Len = int(pkt[0]&0x0f) * 4
		if h.l3Len < ipv4MinHeaderLen || h.l3Len > len(pkt) {
			return false
		}
		h.proto = pkt[ip4Proto]
		h.length = int(binary.BigEndian.Uint16(pkt[ip4TotalLen:]))
		h.frag = binary.BigEndian.Uint16(pkt[ip4Frag:])
		return true
	case 6:
		if len(pkt) < ipv6HeaderLen {
			return false
		}
		h.v6, h.l3Len, h.proto = true, ipv6HeaderLen, pkt[ip6NextHdr]
		h.length = ipv6HeaderLen + int(binary.BigEndian.Uint16(pkt[ip6PayloadLen:]))
		return true
	}
	return false
}

// fragment reports whether the packet is an IPv4 fragment (MF set or a
// non-zero offset).
func (h *ipHeader) fragment() bool { return h.frag&(ip4FlagMF|ip4OffsetMask) != 0 }

// fragmentSane reports whether the IPv4 flags and offset are ones a sender
// may use: the reserved flag clear, and for a fragment a payload of at
// least 8 bytes, a multiple of 8 unless it is the last, ending within the
// 65,535 bytes a reassembled packet may have.
func (h *ipHeader) fragmentSane() bool {
	if h.frag&ip4FlagRsv != 0 {
		return false
	}
	if !h.fragment() {
		return true
	}
	payload := h.length - h.l3Len
	if h.frag&ip4FlagMF != 0 && (payload < 8 || payload%8 != 0) {
		return false
	}
	return int(h.frag&ip4OffsetMask)*8+payload <= 65535
}

// laterFragment reports whether the packet is an IPv4 fragment after the
// first, which carries no L4 header.
func (h *ipHeader) laterFragment() bool { return h.frag&ip4OffsetMask != 0 }

// addrs returns the source and destination address bytes of an IP header
// (4 or 16 bytes each), as the pseudo-header sums take them.
func addrs(pkt []byte, v6 bool) (src, dst []byte) {
	if v6 {
		return pkt[ip6Src:ip6Dst], pkt[ip6Dst : ip6Dst+16]
	}
	return pkt[ip4Src:ip4Dst], pkt[ip4Dst : ip4Dst+4]
}

// l4Len is the TCP or UDP header length of a packet whose IP header h
// describes, or 0 if pkt does not hold a whole one (a TCP data offset
// under 5 words counts as not whole).
func (h *ipHeader) l4Len(pkt []byte) int {
	switch h.proto {
	case protoTCP:
		if len(pkt) < h.l3Len+tcpMinHeaderLen {
			return 0
		}
		n := int(pkt[h.l3Len+tcpDataOff]>>4) * 4
		if n < tcpMinHeaderLen || len(pkt) < h.l3Len+n {
			return 0
		}
		return n
	case protoUDP:
		if len(pkt) < h.l3Len+udpHeaderLen {
			return 0
		}
		return udpHeaderLen
	}
	return 0
}

// addrFrom makes an address of 4 or 16 bytes, as addrs slices them.
func addrFrom(b []byte) netip.Addr {
	if len(b) == 4 {
		return netip.AddrFrom4([4]byte(b))
	}
	return netip.AddrFrom16([16]byte(b))
}

// innerDst returns the destination address and EtherType of an IP packet.
// Only the fixed header is read: the outbound path routes whatever the
// kernel hands it.
func innerDst(pkt []byte) (netip.Addr, uint16, bool) {
	if len(pkt) >= ipv4MinHeaderLen && pkt[0]>>4 == 4 {
		return netip.AddrFrom4([4]byte(pkt[ip4Dst:])), vxlan.EtherTypeIPv4, true
	}
	if len(pkt) >= ipv6HeaderLen && pkt[0]>>4 == 6 {
		return netip.AddrFrom16([16]byte(pkt[ip6Dst:])), vxlan.EtherTypeIPv6, true
	}
	return netip.Addr{}, 0, false
}

// innerSrc returns the source address of an IP packet.
func innerSrc(pkt []byte) (netip.Addr, bool) {
	if len(pkt) >= ipv4MinHeaderLen && pkt[0]>>4 == 4 {
		return netip.AddrFrom4([4]byte(pkt[ip4Src:])), true
	}
	if len(pkt) >= ipv6HeaderLen && pkt[0]>>4 == 6 {
		return netip.AddrFrom16([16]byte(pkt[ip6Src:])), true
	}
	return netip.Addr{}, false
}

// l4ChecksumValid reports whether the TCP or UDP checksum of the whole
// packet pkt, whose IP header h describes, is right.
func l4ChecksumValid(pkt []byte, h *ipHeader) bool {
	src, dst := addrs(pkt, h.v6)
	l4 := pkt[h.l3Len:]
	return offload.Checksum(l4, offload.PseudoSum(src, dst, h.proto, len(l4))) == 0xffff
}
