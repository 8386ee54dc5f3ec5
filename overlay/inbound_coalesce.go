package overlay

import (
	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// Inbound coalescing (the fast path, inbound_linux.go): offload.Coalescer
// turns each run of consecutive segments of one TCP flow (or datagrams of
// one UDP flow, below) into one GSO packet written from the receive
// buffers themselves (its opening note says when a segment joins a run). What is VXLAN's is here: the packet is
// a frame's inner packet, with the frame header as the headroom the virtio
// header is written into, and a packet written alone carries the virtio
// header of its frame's remote checksum offload, if any (rcoHeader).
//
// Segment checksums are verified unless the frame came under an outer UDP
// checksum the kernel verified (Peer.OuterChecksum, coalescer.Trusted):
// VXLAN carries no integrity of its own. Runs of UDP datagrams of one flow
// become UDP GSO writes where the TUN takes USO (coalescer.UDP, set by
// inboundFast): the kernel cuts them into the same datagrams again for a
// pod socket that did not ask for UDP_GRO, and hands one that did the run
// whole. What a packet-level observer on the node sees changes: one large
// packet, IPv4 IDs renumbered from the first datagram's. Without USO every
// datagram is written on its own. A trusted run takes datagrams unchecked:
// one whose inner checksum its sender got wrong reaches the pod with a
// correct one, as TCP segments and WireGuard's packets do.

// coalescer is the VXLAN side of offload.Coalescer.
type coalescer struct {
	offload.Coalescer
}

// add takes one validated VXLAN frame (frame header and inner packet). The
// frame's header bytes are overwritten: the virtio header goes right in
// front of the inner packet.
func (c *coalescer) add(frame []byte) {
	h, _ := rcoHeader(frame) // no RCO: the zero header
	c.Add(frame, vxlan.FrameHeaderLen, h)
}

// super queues a frame around an inner TCP super-packet (decapsulateSuper)
// as one GSO write of mss-byte segments whose checksums the kernel
// finishes. Its virtio header is read back the way the outbound path reads
// the kernel's; super reports false, and queues nothing, if the two
// disagree.
func (c *coalescer) super(frame []byte, ip ipHeader, mss int) bool {
	inner := frame[vxlan.FrameHeaderLen:]
	h := offload.Header{
		Flags:      offload.NeedsCsum,
		GSOType:    offload.GSOTCPv4,
		HdrLen:     uint16(ip.l3Len + ip.l4Len(inner)),
		GSOSize:    uint16(mss),
		CsumStart:  uint16(ip.l3Len),
		CsumOffset: tcpCsum,
	}
	if ip.v6 {
		h.GSOType = offload.GSOTCPv6
	}
	if inner[ip.l3Len+tcpFlags]&tcpCWR != 0 {
		h.GSOType |= offload.GSOECN
	}
	return c.AddSuper(frame, vxlan.FrameHeaderLen, h)
}
