// Package offload is the TUN device's offload format: the virtio-net
// header in front of every packet of a TUN opened with IFF_VNET_HDR, the
// super-packets it describes, and the checksums they need. encap/vxlan is
// the wire format; this is the format between weftd and the kernel.
//
// weftd opens the TUN with IFF_VNET_HDR and TSO/USO offloads, so the kernel
// hands it TCP and UDP super-packets of up to 64 KiB with one virtio-net
// header in front, and takes such packets back (virtio spec 1.x, section
// 5.1.6 "Device Operation", struct virtio_net_hdr; the Linux TUN driver
// uses the 10-byte legacy form in native byte order, which is little-endian
// on every platform weft ships for).
//
// Outbound (TUN → wire) a super-packet is parsed against its own headers
// (ParseSuper) and cut into segments (Super.Segment writes one segment's
// headers, Super.Split and SplitFrame make whole packets). Inbound (wire →
// TUN) the datapaths write packets behind a header of their own, with the
// raw writev Writer on Linux.
//
// Who uses it: overlay (the VXLAN fast path, which also segments in place
// for VXLAN and translates remote checksum offload) and encap/wireguard
// (the WireGuard device's TUN reader and writer).
package offload

import (
	"encoding/binary"
	"errors"
	"io"
)

// HeaderLen is the size of the virtio-net header in front of every packet
// of a TUN opened with IFF_VNET_HDR.
const HeaderLen = 10

// Flags and GSO types of the virtio-net header.
const (
	NeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: the L4 checksum is partial
	DataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID

	GSONone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	GSOTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	GSOTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	GSOUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO)
	GSOECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: the packet carries CWR
)

// MaxHdrLen bounds the IP and L4 headers of one segment: 60 bytes of IPv4
// header (40 for IPv6) and 60 of TCP header.
const MaxHdrLen = 60 + 60

var (
	// ErrMalformed: a packet that does not match its virtio header, or a
	// header that cannot be met (a checksum place outside the packet).
	ErrMalformed = errors.New("offload: malformed TUN packet")
	// ErrTooManySegments: a super-packet with more segments than the
	// batch has buffers left.
	ErrTooManySegments = errors.New("offload: super-packet has more segments than the batch has room")
)

// Header is the virtio-net header:
//
//	u8  flags        NEEDS_CSUM: the L4 checksum field holds only the
//	                 pseudo-header sum; finish it over [csum_start, end)
//	u8  gso_type     NONE, TCPV4, TCPV6, UDP_L4, | ECN
//	u16 hdr_len      length of the headers (a hint; ParseSuper recomputes it)
//	u16 gso_size     payload bytes per segment
//	u16 csum_start   where the checksum starts (the L4 header)
//	u16 csum_offset  where, from csum_start, the checksum is stored
//
// The zero Header is a packet with no offload and complete checksums.
type Header struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// Decode reads the header from b[:HeaderLen].
func (h *Header) Decode(b []byte) error {
	if len(b) < HeaderLen {
		return io.ErrShortBuffer
	}
	h.Flags = b[0]
	h.GSOType = b[1]
	h.HdrLen = binary.LittleEndian.Uint16(b[2:4])
	h.GSOSize = binary.LittleEndian.Uint16(b[4:6])
	h.CsumStart = binary.LittleEndian.Uint16(b[6:8])
	h.CsumOffset = binary.LittleEndian.Uint16(b[8:10])
	return nil
}

// Encode writes the header into b[:HeaderLen].
func (h *Header) Encode(b []byte) {
	_ = b[HeaderLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:4], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:6], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:8], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:10], h.CsumOffset)
}

// Header offsets of the IP, TCP and UDP fields this package reads and
// writes (RFC 791, RFC 8200, RFC 793, RFC 768).
const (
	ipv4MinHeaderLen = 20
	ipv6HeaderLen    = 40

	ip4TotalLen   = 2
	ip4ID         = 4
	ip4Frag       = 6
	ip4Proto      = 9
	ip4Csum       = 10
	ip4Src        = 12
	ip6PayloadLen = 4
	ip6NextHdr    = 6
	ip6Src        = 8

	ip4FragMask = 0x3fff // MF and the fragment offset

	// ProtoTCP and ProtoUDP are the IP protocol numbers of TCP and UDP.
	ProtoTCP = 6
	ProtoUDP = 17

	tcpMinHeaderLen = 20
	tcpSeq          = 4
	tcpDataOff      = 12
	tcpFlags        = 13
	// TCPCsum and UDPCsum are where, from the L4 header, the checksum is
	// stored: a Header's CsumOffset.
	TCPCsum      = 16
	UDPCsum      = 6
	udpLen       = 4
	udpHeaderLen = 8

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpURG = 0x20
	tcpCWR = 0x80
)
