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
// small buffer and the payload is sent straight from the read buffer
// (outbound_gso.go, outbound_linux.go). Everything else (WireGuard peers,
// fallbacks) gets real packets from superPacket.split. Inbound,
// inbound_coalesce.go does the reverse.
//
// VXLAN remote checksum offload (RCO) says the same thing as NEEDS_CSUM in
// the VXLAN header; rcoHeader is the one translation between the two.

const (
	virtioHdrLen = 10

	virtioNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: L4 checksum is partial
	virtioDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID

	gsoNone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	gsoUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO)
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: the packet carries CWR

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
	s := ^csum(pkt[start:], 0)
	if s == 0 {
		s = 0xffff // zero means "no checksum" to UDP
	}
	binary.BigEndian.PutUint16(pkt[at:], s)
	return nil
}

// superPacket is a GSO packet from the TUN device, checked against its own
// IP and L4 headers (the virtio header's hdr_len and csum_start are not

// rcoHeader returns the virtio header that describes the partial inner
// checksum of a frame with remote checksum offload: NEEDS_CSUM, csum_start
// at the inner L4 header, csum_offset at TCP's or UDP's checksum field.
// ok is false for a frame without RCO. frame must hold a VXLAN header that
// vxlan.Header.Decode accepted; decapsulate has checked where it points
// (rcoFits).
func rcoHeader(frame []byte) (h virtioHdr, ok bool) {
	if !vxlan.RCO(frame) {
		return h, false
	}
	var vh vxlan.Header
	_ = vh.Decode(frame)
	h = virtioHdr{flags: virtioNeedsCsum, csumStart: uint16(vh.CsumStart - vxlan.EthernetLen), csumOffset: tcpCsum}
	if vh.CsumUDP {
		h.csumOffset = udpCsum
	}
	return h, true
}
