// Package vxlan is weft's codec for VXLAN-format frames (RFC 7348).
//
// weft carries an inner IP packet read from the TUN device inside a VXLAN
// header and an inner Ethernet header; the kernel adds the outer IP and UDP
// headers when the frame is sent on a UDP socket. On the wire:
//
//	outer IPv4/IPv6 | outer UDP (dst port 4789 by default) |
//	VXLAN header (8 bytes):
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|R|R|R|R|I|R|R|R|            Reserved                           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                VXLAN Network Identifier (VNI) |   Reserved    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	inner Ethernet (14 bytes): dst MAC | src MAC | EtherType |
//	inner IP packet
//
// Remote checksum offload (RCO) is the one extension spoken, and only
// between weft nodes that announce it (peer.CapRemoteChecksum), encoded as
// the Linux vxlan driver's remcsumtx/remcsumrx encode it: flag bit 0x20 of
// the second byte, and in the last byte (reserved in RFC 7348) the offset
// from the inner Ethernet header to where the inner L4 checksum starts,
// halved, in the low 7 bits, with 0x80 set when that checksum is UDP's
// (else TCP's). The inner checksum field then holds only the pseudo-header
// sum, as a packet with a partial checksum does inside a host; the receiver
// finishes it, or hands the packet on still partial (fastpath_linux.go).
//
// Everything here works in place on the caller's buffer and allocates nothing.
package vxlan

import (
	"encoding/binary"
	"errors"
	"io"
)

const (
	// HeaderLen is the length of the VXLAN header.
	HeaderLen = 8
	// EthernetLen is the length of the inner Ethernet header (no 802.1Q tag).
	EthernetLen = 14
	// FrameHeaderLen is what weft writes in front of an inner IP packet.
	FrameHeaderLen = HeaderLen + EthernetLen
	// OverheadIPv4 is the full per-packet cost over an IPv4 underlay:
	// outer IPv4 (20) + UDP (8) + FrameHeaderLen (22).
	OverheadIPv4 = 20 + 8 + FrameHeaderLen
	// OverheadIPv6 is the same over an IPv6 underlay (outer IPv6 is 40).
	OverheadIPv6 = 40 + 8 + FrameHeaderLen

	// DefaultPort is the IANA port for VXLAN (flannel uses 8472).
	DefaultPort = 4789
	// MaxVNI is the largest 24-bit VNI.
	MaxVNI = 1<<24 - 1

	// flagVNI is the I flag: the VNI field is valid. It is the only flag
	// RFC 7348 defines.
	flagVNI = 0x08
	// flagRCO, in the header's second byte, marks remote checksum offload.
	flagRCO = 0x20
	// rcoUDP, in the last byte, says the partial checksum is UDP's.
	rcoUDP = 0x80
	// MaxCsumStart is the largest checksum start RCO can say.
	MaxCsumStart = 0x7f << 1

	// EtherTypeIPv4 and EtherTypeIPv6 are the inner EtherTypes weft carries.
	EtherTypeIPv4 = 0x0800
	EtherTypeIPv6 = 0x86dd
)

var (
	// ErrFlags reports a header without the I flag or with flags RFC 7348
	// does not define (GPE, GBP and other extensions are not spoken here;
	// the Linux vxlan driver drops those too).
	ErrFlags = errors.New("vxlan: unsupported flags")
	// ErrEtherType reports an inner frame that is neither IPv4 nor IPv6.
	ErrEtherType = errors.New("vxlan: inner frame is not IPv4 or IPv6")
	// ErrInnerIP reports an inner packet whose IP version does not match
	// its EtherType, or that is too short to hold an IP header.
	ErrInnerIP = errors.New("vxlan: malformed inner IP packet")
)

// Header is the VXLAN header.
type Header struct {
	VNI uint32 // 24 bits
	// CsumStart, when not zero, marks remote checksum offload: the inner
	// L4 checksum is partial and starts CsumStart bytes after the start of
	// the inner Ethernet header (even, at most MaxCsumStart).
	CsumStart int
	CsumUDP   bool // the partial checksum is UDP's, else TCP's
}

// Encode writes h into b[:HeaderLen]. Reserved fields are written as zero,
// but for the RCO bits when h.CsumStart is set.
func (h Header) Encode(b []byte) {
	_ = b[HeaderLen-1]
	binary.BigEndian.PutUint32(b[0:4], flagVNI<<24)
	binary.BigEndian.PutUint32(b[4:8], (h.VNI&MaxVNI)<<8)
	if h.CsumStart != 0 {
		b[1] = flagRCO
		b[7] = byte(h.CsumStart>>1) & 0x7f
		if h.CsumUDP {
			b[7] |= rcoUDP
		}
	}
}

// Decode parses b[:HeaderLen] into h. Reserved bits are ignored on receipt,
// as RFC 7348 asks, but for the RCO flag and byte; undefined flag bits in
// the first byte are not (see ErrFlags).
func (h *Header) Decode(b []byte) error {
	if len(b) < HeaderLen {
		return io.ErrShortBuffer
	}
	if b[0] != flagVNI {
		return ErrFlags
	}
	h.VNI = binary.BigEndian.Uint32(b[4:8]) >> 8
	h.CsumStart, h.CsumUDP = 0, false
	if b[1]&flagRCO != 0 {
		h.CsumStart = int(b[7]&0x7f) << 1
		h.CsumUDP = b[7]&rcoUDP != 0
		if h.CsumStart == 0 {
			return ErrFlags // RCO pointing at the Ethernet header
		}
	}
	return nil
}

// RCO reports whether the VXLAN header at the start of b marks remote
// checksum offload; b must hold a header that Decode accepted.
func RCO(b []byte) bool { return b[1]&flagRCO != 0 }

// Frame is the part of a VXLAN frame in front of the inner IP packet: the
// VXLAN header and the inner Ethernet header.
type Frame struct {
	VNI       uint32
	Dst, Src  [6]byte // inner Ethernet addresses: the VTEP MACs
	EtherType uint16
	CsumStart int  // remote checksum offload, see Header
	CsumUDP   bool // see Header
}

// Encode writes f into b[:FrameHeaderLen].
func (f *Frame) Encode(b []byte) {
	_ = b[FrameHeaderLen-1]
	Header{VNI: f.VNI, CsumStart: f.CsumStart, CsumUDP: f.CsumUDP}.Encode(b)
	e := b[HeaderLen:FrameHeaderLen]
	copy(e[0:6], f.Dst[:])
	copy(e[6:12], f.Src[:])
	binary.BigEndian.PutUint16(e[12:14], f.EtherType)
}

// Decode parses the frame header at the start of b and checks that the inner
// packet after it is an IP packet of the version its EtherType announces.
// The inner packet is b[FrameHeaderLen:].
func (f *Frame) Decode(b []byte) error {
	var h Header
	if err := h.Decode(b); err != nil {
		return err
	}
	if len(b) < FrameHeaderLen {
		return io.ErrShortBuffer
	}
	f.VNI, f.CsumStart, f.CsumUDP = h.VNI, h.CsumStart, h.CsumUDP
	e := b[HeaderLen:FrameHeaderLen]
	copy(f.Dst[:], e[0:6])
	copy(f.Src[:], e[6:12])
	f.EtherType = binary.BigEndian.Uint16(e[12:14])
	inner := b[FrameHeaderLen:]
	switch f.EtherType {
	case EtherTypeIPv4:
		if len(inner) < 20 || inner[0]>>4 != 4 {
			return ErrInnerIP
		}
	case EtherTypeIPv6:
		if len(inner) < 40 || inner[0]>>4 != 6 {
			return ErrInnerIP
		}
	default:
		return ErrEtherType
	}
	return nil
}

// EtherTypeFor returns the EtherType of an inner IP packet by its version
// nibble, or 0 if pkt is not IPv4 or IPv6.
func EtherTypeFor(pkt []byte) uint16 {
	if len(pkt) == 0 {
		return 0
	}
	switch pkt[0] >> 4 {
	case 4:
		return EtherTypeIPv4
	case 6:
		return EtherTypeIPv6
	}
	return 0
}
