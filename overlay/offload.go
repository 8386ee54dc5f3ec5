package overlay

import (
	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// Offloads at the TUN device (the format is encap/offload's).
//
// Outbound, a super-packet bound for a VXLAN peer is never cut into packets
// in memory: offload.Super.Segment writes the headers of each segment into
// a small buffer behind room for its VXLAN frame header, and the payload is
// sent straight from the read buffer (outbound_gso.go, outbound_linux.go).
// Everything else (WireGuard peers, fallbacks) gets real packets from
// offload.Super.Split. Inbound, inbound_coalesce.go does the reverse.
//
// VXLAN remote checksum offload (RCO) says the same thing as NEEDS_CSUM in
// the VXLAN header; rcoHeader is the one translation between the two.

// rcoHeader returns the virtio header that describes the partial inner
// checksum of a frame with remote checksum offload: NEEDS_CSUM, csum_start
// at the inner L4 header, csum_offset at TCP's or UDP's checksum field.
// ok is false for a frame without RCO. frame must hold a VXLAN header that
// vxlan.Header.Decode accepted; decapsulate has checked where it points
// (rcoFits).
func rcoHeader(frame []byte) (h offload.Header, ok bool) {
	if !vxlan.RCO(frame) {
		return h, false
	}
	var vh vxlan.Header
	_ = vh.Decode(frame)
	h = offload.Header{Flags: offload.NeedsCsum, CsumStart: uint16(vh.CsumStart - vxlan.EthernetLen), CsumOffset: tcpCsum}
	if vh.CsumUDP {
		h.CsumOffset = udpCsum
	}
	return h, true
}
