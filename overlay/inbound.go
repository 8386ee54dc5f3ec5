package overlay

// Inbound: wire → TUN.
//
// A receive loop reads a batch of UDP datagrams (the portable inbound,
// through the bind; on Linux inboundFast, with its own socket and UDP GRO,
// inbound_linux.go), validates every VXLAN frame in place (decapsulate),
// and writes the inner packets that pass to the TUN in one call: the
// portable loop whole packets, the fast loop through the coalescer
// (inbound_coalesce.go), which merges runs of one TCP or UDP flow. Nothing that
// fails a check reaches the TUN; every drop is counted by reason.

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// inbound is the portable inbound loop over one receive function of the
// bind. It owns its buffers: received frames sit rxPad bytes into them, so
// that once the frame header is stripped the inner packet is at the TUN
// write offset.
func (r *Router) inbound(receive conn.ReceiveFunc) {
	defer r.wg.Done()
	batch := r.bind.BatchSize()
	backing := make([][]byte, batch)
	rbufs := make([][]byte, batch)
	for i := range backing {
		backing[i] = make([]byte, rxPad+bufSize)
		rbufs[i] = backing[i][rxPad:]
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	wbufs := make([][]byte, 0, batch)
	var counts batchCounts
	for {
		n, err := receive(rbufs, sizes, eps)
		if err != nil {
			if isClosed(err) {
				return
			}
			r.log.Debug("udp receive failed", "err", err)
			continue
		}
		t := r.table.Load()
		counts.reset()
		wbufs = wbufs[:0]
		for i := 0; i < n; i++ {
			if sizes[i] == 0 {
				continue
			}
			if v := r.decapsulate(rbufs[i][:sizes[i]], t.peerAt(eps[i].DstIP())); v != pass {
				counts.drops[v]++
				continue
			}
			finishRCO(rbufs[i][:sizes[i]])
			counts.packets++
			counts.bytes += uint64(sizes[i] - vxlan.FrameHeaderLen)
			// The inner packet is rbufs[i][22:sizes[i]]; hand the TUN a
			// slice that has it at offset rxPad.
			wbufs = append(wbufs, backing[i][vxlan.FrameHeaderLen:rxPad+sizes[i]])
		}
		if !r.writeInbound(wbufs, &counts) {
			return
		}
		r.flushIn(&counts)
	}
}

// writeInbound writes the batch's inner packets (each at rxPad) to the TUN
// in one call; a failed write counts them as drops. It reports false once
// the TUN is closed.
func (r *Router) writeInbound(wbufs [][]byte, counts *batchCounts) bool {
	if len(wbufs) == 0 {
		return true
	}
	if _, err := r.tun.Write(wbufs, rxPad); err != nil {
		if isClosed(err) {
			return false
		}
		counts.drops[dropTunWrite] += uint64(len(wbufs))
		counts.packets -= uint64(len(wbufs))
		r.log.Debug("tun write failed", "err", err)
	}
	return true
}

// flushIn adds a batch's counters to the router's, once per batch.
func (r *Router) flushIn(counts *batchCounts) {
	r.stats.RxPackets.Add(counts.packets)
	r.stats.RxBytes.Add(counts.bytes)
	r.stats.addDrops(counts)
}

// decapsulateGRO validates each datagram of a received buffer (datagrams of
// seg bytes, the last possibly shorter, all from the underlay address from)
// and hands the good ones to c.
func (r *Router) decapsulateGRO(t *table, b []byte, seg int, from netip.Addr, c *coalescer, counts *batchCounts) {
	if len(b) == 0 {
		counts.drops[dropShort]++ // empty or truncated
		return
	}
	if seg <= 0 || seg > len(b) {
		seg = len(b)
	}
	p := t.peerAt(from)
	c.Trusted = p != nil && p.OuterChecksum
	if len(b) > seg || len(b)-vxlan.FrameHeaderLen > r.mtu {
		if mss, ok := tunnelSuper(b, seg, r.mtu); ok {
			r.decapsulateSuper(b, mss, p, c, counts)
			return
		}
	}
	for off := 0; off < len(b); off += seg {
		frame := b[off:min(off+seg, len(b))]
		if v := r.decapsulate(frame, p); v != pass {
			counts.drops[v]++
			continue
		}
		counts.packets++
		counts.bytes += uint64(len(frame) - vxlan.FrameHeaderLen)
		c.add(frame)
	}
}

// tunnelSuper reports whether a received buffer is one VXLAN frame around
// an inner TCP super-packet rather than a run of datagrams, and the
// segment size its payload is to be cut into. A Linux vxlan device on the
// same host or L2 segment (veth, virtio between VMs) passes its TSO packets
// on unsegmented (SKB_GSO_UDP_TUNNEL), and a UDP GRO socket takes them
// whole: the inner IP length then spans the whole buffer, where a GRO run
// of datagrams has one frame per seg bytes. gro is the GRO segment size
// the kernel reported (the buffer's length without one); mtu is the TUN's,
// which every segment must fit.
func tunnelSuper(b []byte, gro, mtu int) (mss int, ok bool) {
	if len(b) <= vxlan.FrameHeaderLen {
		return 0, false
	}
	inner := b[vxlan.FrameHeaderLen:]
	ip, ok := parseIP(inner)
	if !ok || ip.proto != protoTCP || ip.length != len(inner) || ip.length <= mtu {
		return 0, false
	}
	l4 := ip.l4Len(inner)
	if l4 == 0 || ip.l3Len+l4 >= mtu {
		return 0, false
	}
	mss = mtu - ip.l3Len - l4
	if gro > 0 && gro < len(b) && gro < mss {
		mss = gro // the sender's own segment size, when the kernel says it
	}
	return mss, true
}

// decapsulateSuper validates a frame around an inner TCP super-packet
// (tunnelSuper) like any other frame and hands it to the coalescer as one
// GSO write of mss-byte segments. Its TCP checksum must be partial (the
// pseudo-header sum a TSO sender leaves for the NIC); the kernel finishes
// it per segment. Such frames come only over virtual links, where nothing
// corrupts them in flight.
func (r *Router) decapsulateSuper(frame []byte, mss int, p *peerEntry, c *coalescer, counts *batchCounts) {
	inner := frame[vxlan.FrameHeaderLen:]
	var ip ipHeader
	v := r.admit(frame, p, &ip)
	if v == pass && ip.fragment() {
		v = dropInnerIP
	}
	if v == pass {
		src, dst := addrs(inner, ip.v6)
		if binary.BigEndian.Uint16(inner[ip.l3Len+tcpCsum:]) != offload.PseudoSum(src, dst, protoTCP, ip.length-ip.l3Len) {
			v = dropBadOffload
		}
	}
	if v != pass || !c.super(frame, ip, mss) {
		if v == pass {
			v = dropBadOffload
		}
		counts.drops[v]++
		return
	}
	counts.packets++
	counts.bytes += uint64(len(inner))
}

// decapsulate validates one received frame from the peer p (the table's
// entry for the frame's underlay source address, nil if there is none).
// Only a frame that passes every check reaches the TUN.
func (r *Router) decapsulate(frame []byte, p *peerEntry) verdict {
	var ip ipHeader
	if v := r.admit(frame, p, &ip); v != pass {
		return v
	}
	if !p.OuterChecksum {
		completeL4(frame[vxlan.FrameHeaderLen:], &ip)
	}
	return pass
}

// admit runs every check of a received frame from the peer p: the VXLAN
// header, the peer and its transport, the inner packet (checkInner), its
// source inside the peer's and its destination inside our pod CIDRs, and
// remote checksum offload only where allowed.
func (r *Router) admit(frame []byte, p *peerEntry, ip *ipHeader) verdict {
	var f vxlan.Frame
	if err := f.Decode(frame); err != nil {
		switch {
		case errors.Is(err, vxlan.ErrFlags):
			return dropFlags
		case errors.Is(err, vxlan.ErrEtherType):
			return dropEtherType
		case errors.Is(err, vxlan.ErrInnerIP):
			return dropInnerIP
		default:
			return dropShort
		}
	}
	if f.VNI != r.cfg.VNI {
		return dropVNI
	}
	if f.Dst != r.cfg.LocalMAC {
		return dropDstMAC
	}
	if p == nil {
		return dropUnknownPeer
	}
	if p.Transport != TransportVXLAN {
		// Both ends apply the same policy, so a peer we reach over
		// WireGuard never sends us VXLAN: this is spoofed or stale.
		return dropWrongTransport
	}
	inner := frame[vxlan.FrameHeaderLen:]
	if v := checkInner(inner, ip); v != pass {
		return v
	}
	src, dst := addrs(inner, ip.v6)
	if !p.pods.contains(src) {
		return dropSpoofedSource
	}
	if !r.pods.contains(dst) {
		return dropNotLocal
	}
	if f.CsumStart != 0 {
		if !p.OuterChecksum {
			// Only weft peers send remote checksum offload, and only
			// under an outer checksum the kernel verified.
			return dropFlags
		}
		if !rcoFits(inner, f.CsumStart-vxlan.EthernetLen, f.CsumUDP) {
			return dropInnerIP
		}
	}
	return pass
}

// minEthernetFrame is the shortest Ethernet frame (without FCS): a sender
// may pad a shorter inner frame up to it, and the kernel trims the padding.
const minEthernetFrame = 60

// checkInner checks an inner packet before anything of it reaches the TUN,
// so that weft hands the kernel only what it would have sent itself: an
// IPv4 or IPv6 header that parses (version, IHL); a length by the header
// equal to the bytes present (or shorter by Ethernet padding of a minimum
// frame); IPv4 with a right header checksum, the reserved flag clear, and
// fragments whose length and offset fit (RFC 791: all but the last a
// multiple of 8 bytes, none past 65,535); and for TCP and UDP (not in
// later fragments) a whole L4 header, a TCP data offset inside the packet,
// and (unfragmented) a UDP length equal to the IP payload's.
func checkInner(pkt []byte, ip *ipHeader) verdict {
	if !ip.parse(pkt) {
		if len(pkt) >= ipv4MinHeaderLen && pkt[0]>>4 == 4 && int(pkt[0]&0x0f)*4 > len(pkt) {
			return dropInnerLength // IHL past the end: truncated
		}
		return dropInnerIP
	}
	if ip.length < ip.l3Len || ip.length > len(pkt) ||
		ip.length < len(pkt) && len(pkt)+vxlan.EthernetLen > minEthernetFrame {
		return dropInnerLength
	}
	pkt = pkt[:ip.length]
	if !ip.v6 {
		if !offload.IPv4HeaderValid(pkt[:ip.l3Len]) {
			return dropBadChecksum
		}
		if !ip.fragmentSane() {
			return dropInnerIP
		}
	}
	if ip.laterFragment() || ip.proto != protoTCP && ip.proto != protoUDP {
		return pass
	}
	if len(pkt) < ip.l3Len+minL4Len(ip.proto) {
		return dropInnerLength
	}
	if ip.l4Len(pkt) == 0 {
		return dropInnerIP // a TCP data offset under 5 words or past the end
	}
	if ip.proto == protoUDP && !ip.fragment() && int(binary.BigEndian.Uint16(pkt[ip.l3Len+udpLen:])) != ip.length-ip.l3Len {
		return dropInnerLength
	}
	return pass
}

// completeL4 finishes the TCP or UDP checksum of an inner packet from a
// peer without an outer checksum (a kernel vxlan device, a static peer)
// when it arrived partial. Such a sender on the same host or L2 segment
// (veth, virtio between VMs) may hand over segments whose checksum field
// holds only the pseudo-header sum, the rest left to a NIC that never came
// (the kernel's CHECKSUM_PARTIAL); the kernel would drop them as corrupt.
// They are told apart by exactly that field value and finished here, as
// the NIC would have. (A complete checksum that happens to equal the
// pseudo-header sum comes out of the finishing unchanged.) Any other
// checksum is left as it is: the kernel verifies it on a packet written
// alone, and the coalescer before it merges one (its runs reach the kernel
// flagged NEEDS_CSUM, which it trusts). Fragments are left to the kernel's
// reassembly.
func completeL4(pkt []byte, ip *ipHeader) {
	if ip.fragment() || ip.proto != protoTCP && ip.proto != protoUDP {
		return
	}
	at := ip.l3Len + tcpCsum
	if ip.proto == protoUDP {
		at = ip.l3Len + udpCsum
	}
	l4 := pkt[ip.l3Len:ip.length]
	src, dst := addrs(pkt, ip.v6)
	if binary.BigEndian.Uint16(pkt[at:]) != offload.PseudoSum(src, dst, ip.proto, len(l4)) {
		return
	}
	s := ^offload.Checksum(l4, 0) // the field's pseudo-header sum included
	if s == 0 && ip.proto == protoUDP {
		s = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[at:], s)
}

// rcoFits reports whether a remote checksum offload start (from the inner
// IP header) and kind point exactly at the inner packet's TCP or UDP
// header, which must be whole.
func rcoFits(inner []byte, start int, udp bool) bool {
	ip, ok := parseIP(inner)
	if !ok || ip.laterFragment() {
		return false // a later fragment has no L4 header
	}
	if udp && ip.proto != protoUDP || !udp && ip.proto != protoTCP {
		return false
	}
	return start == ip.l3Len && len(inner) >= ip.l3Len+minL4Len(ip.proto)
}

// minL4Len is the shortest TCP or UDP header.
func minL4Len(proto uint8) int {
	if proto == protoUDP {
		return udpHeaderLen
	}
	return tcpMinHeaderLen
}

// finishRCO completes, in software, the partial checksum of a frame's inner
// packet that came with remote checksum offload (decapsulate accepted it),
// for the paths that write whole packets to the TUN.
func finishRCO(frame []byte) {
	if h, ok := rcoHeader(frame); ok {
		_ = offload.FinishChecksum(&h, frame[vxlan.FrameHeaderLen:])
	}
}
