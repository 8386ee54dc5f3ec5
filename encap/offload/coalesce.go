package offload

import (
	"bytes"
	"encoding/binary"
)

// Inbound coalescing (wire → TUN).
//
// A peer's TCP stream arrives as many segments, a UDP flow as many
// datagrams. Writing each to the TUN costs a system call and a trip through
// the kernel's IP stack per packet; the coalescer turns each run of
// consecutive segments of one TCP flow (and, when the TUN takes USO, each
// run of datagrams of one UDP flow) into one GSO packet that the kernel
// takes whole, written with writev (Writer) from the receive buffers
// themselves: the virtio header and the fixed-up IP and L4 headers of the
// run sit in place in front of the first packet's payload, and every later
// packet contributes only its payload slice. No payload byte is copied.
//
// A packet is buf[off:]: the caller leaves at least HeaderLen bytes of
// headroom in front of it (the VXLAN path its frame header, the WireGuard
// device its 16 bytes), where the virtio header is written.
//
// A TCP segment joins the open run only when the kernel would have merged
// it too: same addresses, ports, IP header fields (TOS, TTL, DF, no other
// fragment bits, same options), same TCP ack, window, flags (PSH aside),
// options and header lengths, sequence number right after the run, no
// SYN, FIN, RST, URG or CWR, a payload no longer than the first segment's,
// and, unless the packets are trusted, a valid TCP checksum. The checksum
// is verified because a merged packet reaches the kernel flagged
// NEEDS_CSUM, which the kernel trusts: a transport without integrity of
// its own (VXLAN, whose outer UDP checksum is often zero) would otherwise
// let a corrupted segment reach the pod. A shorter segment, or one with
// PSH, closes its run.
//
// A UDP datagram joins the open run (UDP set) when it has the same
// addresses, ports and IP header fields and the run's length; a shorter
// one is the last. Untrusted, its checksum is verified, and one without a
// checksum (zero, IPv4) never joins. An IPv6 datagram without a checksum
// never joins, trusted or not: the kernel drops it alone, and in a run it
// would get one. (A trusted IPv4 run of datagrams without checksums gets
// one, which changes nothing for the receiver.)
//
// Anything else is written on its own, unchanged, behind the virtio header
// its caller gave, and the kernel checks it as usual.

const (
	// MaxRunSegs bounds the packets of one coalesced write (and so the
	// iovecs of one writev, MaxRunSegs+1 with the head); it is also the
	// kernel's limit of segments of one UDP GSO packet (UDP_MAX_SEGMENTS:
	// 64 on older kernels, 128 on newer), so a UDP run fits every kernel.
	MaxRunSegs = 64
	// maxRunLen is the largest coalesced IP packet.
	maxRunLen = 65535
)

// Write is one write to the TUN: Head is the virtio header followed by the
// packet (for a run, the fixed-up headers and the first payload); the
// payloads of the later packets of a run are Coalescer.Payloads[Lo:Hi].
type Write struct {
	Head   []byte
	Lo, Hi int
	Segs   int // packets in this write, for the counters
}

// run is the open run: its first packet (headers and all) and what the
// next packet must look like to join.
type run struct {
	head    []byte // the first packet with HeaderLen bytes of headroom in front
	first   []byte // the packet: head[HeaderLen:]
	single  Header // the header the first packet is written with alone
	proto   uint8
	v6      bool
	l3Len   int
	hdrLen  int
	mss     int    // payload length of the first packet
	nextSeq uint32 // TCP: sequence number the next segment must carry
	length  int    // IP packet length so far
	segs    int
	psh     bool // TCP: the last segment carried PSH
	checked bool // the first packet's checksum was verified
	trusted bool // the first packet came trusted
	closed  bool // no more packets may join
	lo      int  // first index of this run's later payloads in Payloads
}

// Coalescer groups packets into TUN writes. It is reused across batches;
// Reset before each (and Release after, to let go of the batch's buffers).
// The slices it hands out point into the buffers given to Add, which must
// stay untouched until the writes are done. It
// allocates only while its slices grow to the largest batch.
type Coalescer struct {
	Writes   []Write
	Payloads [][]byte
	// Trusted: the packets now being added need no check of their L4
	// checksums (they came under an integrity check of their own: an
	// outer UDP checksum the kernel verified, or an AEAD tag).
	Trusted bool
	// UDP: runs of UDP datagrams become UDP GSO writes (the TUN has USO);
	// without it every datagram is written on its own.
	UDP bool
	// Dropped counts the packets of runs whose virtio header did not
	// describe the packet (never written); Reset clears it.
	Dropped int
	open    bool
	cur     run
}

// Reset empties the coalescer for a new batch.
func (c *Coalescer) Reset() {
	c.Writes = c.Writes[:0]
	c.Payloads = c.Payloads[:0]
	c.open = false
	c.Dropped = 0
}

// Release drops the coalescer's references into the batch's buffers once
// its writes are done (Reset keeps them until the next batch).
func (c *Coalescer) Release() {
	clear(c.Writes[:cap(c.Writes)])
	clear(c.Payloads[:cap(c.Payloads)])
	c.Reset()
	c.cur = run{}
}

// Add takes one packet, buf[off:], with off ≥ HeaderLen; single is the
// virtio header it is written with if it goes alone (the zero Header: no
// offload, checksums complete). The HeaderLen bytes in front of the packet
// are overwritten, and a run's first packet is rewritten in place.
func (c *Coalescer) Add(buf []byte, off int, single Header) {
	p := buf[off:]
	if c.open && c.join(p) {
		return
	}
	c.closeRun()
	head := buf[off-HeaderLen:]
	if c.start(head, single) {
		return
	}
	c.single(head, single)
}

// AddSuper queues the packet buf[off:] (off ≥ HeaderLen), already a
// super-packet, as one write behind h. It reports false, and queues
// nothing, if h does not describe the packet as ParseSuper reads it.
func (c *Coalescer) AddSuper(buf []byte, off int, h Header) bool {
	c.closeRun()
	if _, err := ParseSuper(&h, buf[off:]); err != nil {
		return false
	}
	head := buf[off-HeaderLen:]
	h.Encode(head)
	c.Writes = append(c.Writes, Write{Head: head, Lo: len(c.Payloads), Hi: len(c.Payloads), Segs: 1})
	return true
}

// Flush closes the open run; Writes is then complete.
func (c *Coalescer) Flush() { c.closeRun() }

// single queues a packet as a write of its own behind h.
func (c *Coalescer) single(head []byte, h Header) {
	h.Encode(head)
	c.Writes = append(c.Writes, Write{Head: head, Lo: len(c.Payloads), Hi: len(c.Payloads), Segs: 1})
}

// runnable returns the layout of a packet that may take part in a run: an
// unfragmented TCP segment (with payload, without SYN, FIN, RST, URG or
// CWR) or, with udp, UDP datagram (with payload), whose IP (and UDP)
// length matches the packet and whose IPv4 header checksum is right.
func runnable(p []byte, udp bool) (proto uint8, v6 bool, l3Len, hdrLen int, ok bool) {
	v6, l3Len, proto, ok = parseIP(p)
	if !ok || (proto != ProtoTCP && (proto != ProtoUDP || !udp)) || ipLength(p, v6) != len(p) {
		return 0, false, 0, 0, false
	}
	if !v6 && !IPv4HeaderValid(p[:l3Len]) {
		return 0, false, 0, 0, false // the merged header would hide it
	}
	l4Len := l4HeaderLen(p, l3Len, proto)
	if l4Len == 0 || len(p) <= l3Len+l4Len {
		return 0, false, 0, 0, false // no payload (or a bad offset): nothing to merge
	}
	if proto == ProtoTCP && p[l3Len+tcpFlags]&(tcpSYN|tcpFIN|tcpRST|tcpURG|tcpCWR) != 0 {
		return 0, false, 0, 0, false
	}
	if proto == ProtoUDP && int(binary.BigEndian.Uint16(p[l3Len+udpLen:])) != len(p)-l3Len {
		return 0, false, 0, 0, false
	}
	if proto == ProtoUDP && v6 && binary.BigEndian.Uint16(p[l3Len+UDPCsum:]) == 0 {
		// IPv6 UDP without a checksum: the kernel drops it; in a run
		// it would get one. Alone, it meets the kernel's rule.
		return 0, false, 0, 0, false
	}
	return proto, v6, l3Len, l3Len + l4Len, true
}

// ipLength is the packet's length by its IP header.
func ipLength(p []byte, v6 bool) int {
	if v6 {
		return ipv6HeaderLen + int(binary.BigEndian.Uint16(p[ip6PayloadLen:]))
	}
	return int(binary.BigEndian.Uint16(p[ip4TotalLen:]))
}

// start opens a run with the packet head[HeaderLen:] as its first, if it
// may start one.
func (c *Coalescer) start(head []byte, single Header) bool {
	p := head[HeaderLen:]
	proto, v6, l3Len, hdrLen, ok := runnable(p, c.UDP)
	if !ok {
		return false
	}
	mss := len(p) - hdrLen
	c.cur = run{head: head, first: p, single: single, proto: proto, v6: v6, l3Len: l3Len, hdrLen: hdrLen,
		mss: mss, length: len(p), segs: 1, lo: len(c.Payloads), trusted: c.Trusted}
	if proto == ProtoTCP {
		c.cur.nextSeq = binary.BigEndian.Uint32(p[l3Len+tcpSeq:]) + uint32(mss)
		c.cur.psh = p[l3Len+tcpFlags]&tcpPSH != 0
		c.cur.closed = c.cur.psh
	}
	c.open = true
	return true
}

// join appends p to the open run if it continues it.
func (c *Coalescer) join(p []byte) bool {
	r := &c.cur
	if r.closed || r.segs >= MaxRunSegs {
		return false
	}
	proto, v6, l3Len, hdrLen, ok := runnable(p, c.UDP)
	if !ok || proto != r.proto || v6 != r.v6 || l3Len != r.l3Len || hdrLen != r.hdrLen {
		return false
	}
	n := len(p) - hdrLen
	if n > r.mss || r.length+n > maxRunLen {
		return false
	}
	f := r.first
	if v6 {
		// version, traffic class, flow label | next header, hop limit,
		// addresses
		if !bytes.Equal(p[0:4], f[0:4]) || !bytes.Equal(p[6:40], f[6:40]) {
			return false
		}
	} else {
		// version, IHL, TOS | flags, fragment offset, TTL, protocol |
		// addresses and options (ID and checksum may differ)
		if !bytes.Equal(p[0:2], f[0:2]) || !bytes.Equal(p[6:10], f[6:10]) || !bytes.Equal(p[12:l3Len], f[12:l3Len]) {
			return false
		}
	}
	t, ft := p[l3Len:hdrLen], f[l3Len:hdrLen]
	if proto == ProtoTCP {
		// ports | seq | ack | offset, flags without PSH | window | - | urgent | options
		if !bytes.Equal(t[0:4], ft[0:4]) || binary.BigEndian.Uint32(t[4:8]) != r.nextSeq ||
			!bytes.Equal(t[8:13], ft[8:13]) || (t[13]^ft[13])&^tcpPSH != 0 ||
			!bytes.Equal(t[14:16], ft[14:16]) || !bytes.Equal(t[18:], ft[18:]) {
			return false
		}
	} else if !bytes.Equal(t[0:4], ft[0:4]) { // ports
		return false
	}
	if !r.checked && !r.trusted {
		if !checksumOK(f, r.v6, r.l3Len, r.proto) {
			// The head is bad: it goes alone and the kernel drops it.
			return false
		}
		r.checked = true
	}
	if !c.Trusted && !checksumOK(p, v6, l3Len, proto) {
		return false
	}
	c.Payloads = append(c.Payloads, p[hdrLen:])
	r.segs++
	r.length += n
	if proto == ProtoTCP {
		r.nextSeq += uint32(n)
		r.psh = t[13]&tcpPSH != 0
		r.closed = r.psh || n < r.mss
	} else {
		r.closed = n < r.mss
	}
	return true
}

// checksumOK verifies the TCP or UDP checksum of a whole packet; a UDP
// datagram without one (zero) does not pass.
func checksumOK(p []byte, v6 bool, l3Len int, proto uint8) bool {
	if proto == ProtoUDP && binary.BigEndian.Uint16(p[l3Len+UDPCsum:]) == 0 {
		return false
	}
	src, dst := Addrs(p, v6)
	l4 := p[l3Len:]
	return Checksum(l4, PseudoSum(src, dst, proto, len(l4))) == 0xffff
}

// closeRun turns the open run into a write. A run of one packet is written
// as it came, behind its own header. A longer one gets, in place in the
// first packet: the IP length (and IPv4 header checksum) of the whole run,
// the UDP length of the whole run, or PSH if its last TCP segment had it;
// the pseudo-header sum in the L4 checksum field; and in front a virtio
// header asking the kernel to finish the checksum and to treat the packet
// as TCP or UDP GSO with the first packet's payload size.
func (c *Coalescer) closeRun() {
	if !c.open {
		return
	}
	c.open = false
	r := &c.cur
	f := r.first
	if r.segs == 1 {
		c.single(r.head, r.single)
		return
	}
	h := Header{
		Flags:      NeedsCsum,
		GSOType:    GSOTCPv4,
		HdrLen:     uint16(r.hdrLen),
		GSOSize:    uint16(r.mss),
		CsumStart:  uint16(r.l3Len),
		CsumOffset: TCPCsum,
	}
	switch {
	case r.proto == ProtoUDP:
		h.GSOType, h.CsumOffset = GSOUDPL4, UDPCsum
		binary.BigEndian.PutUint16(f[r.l3Len+udpLen:], uint16(r.length-r.l3Len))
	case r.v6:
		h.GSOType = GSOTCPv6
	}
	if r.v6 {
		binary.BigEndian.PutUint16(f[ip6PayloadLen:], uint16(r.length-ipv6HeaderLen))
	} else {
		binary.BigEndian.PutUint16(f[ip4TotalLen:], uint16(r.length))
		PutIPv4Checksum(f[:r.l3Len])
	}
	if r.proto == ProtoTCP && r.psh {
		f[r.l3Len+tcpFlags] |= tcpPSH
	}
	src, dst := Addrs(f, r.v6)
	binary.BigEndian.PutUint16(f[r.l3Len+int(h.CsumOffset):], PseudoSum(src, dst, r.proto, r.length-r.l3Len))
	// The kernel trusts this header (and so the checksum it asks for):
	// read it back the way the outbound path reads the kernel's, and drop
	// the run if the two disagree.
	if sp, err := ParseSuperLen(&h, f, r.length); err != nil || sp.Segs != r.segs || sp.HdrLen != r.hdrLen {
		c.Dropped += r.segs
		return
	}
	h.Encode(r.head)
	c.Writes = append(c.Writes, Write{Head: r.head, Lo: r.lo, Hi: len(c.Payloads), Segs: r.segs})
}
