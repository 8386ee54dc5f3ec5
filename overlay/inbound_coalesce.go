package overlay

import (
	"bytes"
	"encoding/binary"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// Inbound coalescing (the fast path, inbound_linux.go).
//
// The underlay delivers a TCP stream as many segments (often many per
// received UDP GRO datagram). Writing each to the TUN costs a system call
// and a trip through the kernel's IP stack per segment; the coalescer turns
// each run of consecutive segments of one TCP flow into one GSO packet that
// the kernel takes whole, written with writev from the receive buffers
// themselves: the virtio header and the fixed-up IP and TCP headers of the
// run sit in place in front of the first segment's payload, and every later
// segment contributes only its payload slice. No payload byte is copied.
//
// A segment joins the open run only when the kernel would have merged it
// too: same addresses, ports, IP header fields (TOS, TTL, DF, no other
// fragment bits, same options), same TCP ack, window, flags (PSH aside),
// options and header lengths, sequence number right after the run, no
// SYN, FIN, RST, URG or CWR, a payload no longer than the first segment's,
// and a valid TCP checksum. The checksum is verified here because a merged
// packet reaches the kernel flagged NEEDS_CSUM, which the kernel trusts:
// VXLAN carries no integrity of its own (the outer UDP checksum is often
// zero), so without this check a corrupted segment would reach the pod. A
// shorter segment, or one with PSH, closes its run. Anything else is
// written on its own, unchanged, and the kernel checks it as usual.

const (
	// maxRunSegs bounds the segments of one coalesced write (and so the
	// iovecs of one writev).
	maxRunSegs = 64
	// maxRunLen is the largest coalesced IP packet.
	maxRunLen = 65535
)

// tunWrite is one write to the TUN device: head is the virtio header
// followed by the packet (for a run, the fixed-up headers and the first
// payload); more are the payloads of the later segments of a run,
// coalescer.payloads[lo:hi].
type tunWrite struct {
	head   []byte
	lo, hi int
	segs   int // inner packets in this write, for the counters
}

// run is the open run: its first segment (headers and all) and what the
// next segment must look like to join.
type run struct {
	frame   []byte // the first segment's VXLAN frame
	first   []byte // its inner packet: frame[vxlan.FrameHeaderLen:]
	v6      bool
	l3Len   int
	hdrLen  int
	mss     int    // payload length of the first segment
	nextSeq uint32 // sequence number the next segment must carry
	length  int    // IP packet length so far
	segs    int
	psh     bool // the last segment carried PSH
	checked bool // the first segment's checksum was verified
	trusted bool // the first segment came under a verified outer checksum
	closed  bool // no more segments may join
	lo      int  // first index of this run's later payloads in coalescer.payloads
}

// coalescer groups validated inner packets into TUN writes. It is reused
// across batches; reset before each. The slices it hands out point into the
// frames given to add, which must stay untouched until the writes are done.
type coalescer struct {
	writes   []tunWrite
	payloads [][]byte
	open     bool
	cur      run
	// trusted: the frames now being added came under an outer UDP
	// checksum the kernel verified (Peer.OuterChecksum), so their inner
	// TCP checksums need no second check.
	trusted bool
	// dropped counts the segments of runs whose virtio header did not
	// describe the packet (drop_bad_offload); reset clears it.
	dropped int
}

func (c *coalescer) reset() {
	c.writes = c.writes[:0]
	c.payloads = c.payloads[:0]
	c.open = false
	c.dropped = 0
}

// add takes one validated VXLAN frame (frame header and inner packet). The
// frame's header bytes are overwritten: the virtio header goes right in
// front of the inner packet.
func (c *coalescer) add(frame []byte) {
	inner := frame[vxlan.FrameHeaderLen:]
	if c.open && c.join(inner) {
		return
	}
	c.closeRun()
	if c.start(frame) {
		return
	}
	c.single(frame)
}

// flush closes the open run; c.writes is then complete.
func (c *coalescer) flush() { c.closeRun() }

// super queues a frame around an inner TCP super-packet (decapsulateSuper)
// as one GSO write of mss-byte segments whose checksums the kernel
// finishes. Its virtio header is read back the way the outbound path reads
// the kernel's; super reports false, and queues nothing, if the two
// disagree.
func (c *coalescer) super(frame []byte, ip ipHeader, mss int) bool {
	c.closeRun()
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
	if _, err := offload.ParseSuperLen(&h, inner, len(inner)); err != nil {
		return false
	}
	head := frame[vxlan.FrameHeaderLen-offload.HeaderLen:]
	h.Encode(head)
	c.writes = append(c.writes, tunWrite{head: head, lo: len(c.payloads), hi: len(c.payloads), segs: 1})
	return true
}

// single queues a frame's inner packet as a write of its own (singleHead).
func (c *coalescer) single(frame []byte) {
	c.writes = append(c.writes, tunWrite{head: singleHead(frame), segs: 1})
}

// singleHead writes the virtio header in front of a frame's inner packet
// for a write of its own, and returns the header and packet: a zero header
// (no offload, checksum complete), or for a frame with remote checksum
// offload one that asks the kernel to finish the checksum where the VXLAN
// header says it starts (decapsulate checked that place).
func singleHead(frame []byte) []byte {
	head := frame[vxlan.FrameHeaderLen-offload.HeaderLen:]
	h, _ := rcoHeader(frame) // no RCO: the zero header
	h.Encode(head)
	return head
}

// tcpSegment returns the layout of an inner packet that may take part in a
// run: an unfragmented TCP packet whose IP length matches the frame, with
// payload and without SYN, FIN, RST, URG or CWR.
func tcpSegment(p []byte) (v6 bool, l3Len, hdrLen int, ok bool) {
	ip, ok := parseIP(p)
	if !ok || ip.proto != protoTCP || ip.fragment() || ip.length != len(p) {
		return false, 0, 0, false
	}
	l4Len := ip.l4Len(p)
	if l4Len == 0 || len(p) <= ip.l3Len+l4Len {
		return false, 0, 0, false // no payload (or a bad offset): nothing to merge
	}
	if p[ip.l3Len+tcpFlags]&(tcpSYN|tcpFIN|tcpRST|tcpURG|tcpCWR) != 0 {
		return false, 0, 0, false
	}
	return ip.v6, ip.l3Len, ip.l3Len + l4Len, true
}

// start opens a run with frame as its first segment, if it may start one.
func (c *coalescer) start(frame []byte) bool {
	inner := frame[vxlan.FrameHeaderLen:]
	v6, l3Len, hdrLen, ok := tcpSegment(inner)
	if !ok {
		return false
	}
	mss := len(inner) - hdrLen
	c.cur = run{frame: frame, first: inner, v6: v6, l3Len: l3Len, hdrLen: hdrLen, mss: mss,
		nextSeq: binary.BigEndian.Uint32(inner[l3Len+tcpSeq:]) + uint32(mss),
		length:  len(inner), segs: 1, psh: inner[l3Len+tcpFlags]&tcpPSH != 0,
		lo: len(c.payloads), trusted: c.trusted}
	c.cur.closed = c.cur.psh
	c.open = true
	return true
}

// join appends inner to the open run if it continues it.
func (c *coalescer) join(p []byte) bool {
	r := &c.cur
	if r.closed || r.segs >= maxRunSegs {
		return false
	}
	v6, l3Len, hdrLen, ok := tcpSegment(p)
	if !ok || v6 != r.v6 || l3Len != r.l3Len || hdrLen != r.hdrLen {
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
	// ports | seq | ack | offset, flags without PSH | window | - | urgent | options
	if !bytes.Equal(t[0:4], ft[0:4]) || binary.BigEndian.Uint32(t[4:8]) != r.nextSeq ||
		!bytes.Equal(t[8:13], ft[8:13]) || (t[13]^ft[13])&^tcpPSH != 0 ||
		!bytes.Equal(t[14:16], ft[14:16]) || !bytes.Equal(t[18:], ft[18:]) {
		return false
	}
	if !r.checked && !r.trusted {
		if !tcpChecksumOK(f, r.v6, r.l3Len) {
			// The head is bad: it goes alone and the kernel drops it.
			return false
		}
		r.checked = true
	}
	if !c.trusted && !tcpChecksumOK(p, v6, l3Len) {
		return false
	}
	c.payloads = append(c.payloads, p[hdrLen:])
	r.segs++
	r.length += n
	r.nextSeq += uint32(n)
	r.psh = t[13]&tcpPSH != 0
	r.closed = r.psh || n < r.mss
	return true
}

// tcpChecksumOK verifies the TCP checksum of a whole inner packet.
func tcpChecksumOK(p []byte, v6 bool, l3Len int) bool {
	return l4ChecksumValid(p, &ipHeader{v6: v6, l3Len: l3Len, proto: protoTCP})
}

// closeRun turns the open run into a write. A run of one segment is written
// as it came. A longer one gets, in place in the first segment: the IP
// length (and IPv4 header checksum) of the whole run, PSH if its last
// segment had it, the pseudo-header sum in the TCP checksum field, and in
// front a virtio header asking the kernel to finish the checksum and to
// treat the packet as TCP GSO with the first segment's payload size.
func (c *coalescer) closeRun() {
	if !c.open {
		return
	}
	c.open = false
	r := &c.cur
	f := r.first
	base := r.frame[vxlan.FrameHeaderLen-offload.HeaderLen:]
	if r.segs == 1 {
		c.writes = append(c.writes, tunWrite{head: singleHead(r.frame), segs: 1})
		return
	}
	h := offload.Header{
		Flags:      offload.NeedsCsum,
		GSOType:    offload.GSOTCPv4,
		HdrLen:     uint16(r.hdrLen),
		GSOSize:    uint16(r.mss),
		CsumStart:  uint16(r.l3Len),
		CsumOffset: tcpCsum,
	}
	if r.v6 {
		h.GSOType = offload.GSOTCPv6
		binary.BigEndian.PutUint16(f[ip6PayloadLen:], uint16(r.length-ipv6HeaderLen))
	} else {
		binary.BigEndian.PutUint16(f[ip4TotalLen:], uint16(r.length))
		offload.PutIPv4Checksum(f[:r.l3Len])
	}
	if r.psh {
		f[r.l3Len+tcpFlags] |= tcpPSH
	}
	src, dst := addrs(f, r.v6)
	binary.BigEndian.PutUint16(f[r.l3Len+tcpCsum:], offload.PseudoSum(src, dst, protoTCP, r.length-r.l3Len))
	// The kernel trusts this header (and so the checksum it asks for):
	// read it back the way the outbound path reads the kernel's, and drop
	// the run if the two disagree.
	if sp, err := offload.ParseSuperLen(&h, f, r.length); err != nil || sp.Segs != r.segs || sp.HdrLen != r.hdrLen {
		c.dropped += r.segs
		return
	}
	h.Encode(base)
	c.writes = append(c.writes, tunWrite{head: base, lo: r.lo, hi: len(c.payloads), segs: r.segs})
}
