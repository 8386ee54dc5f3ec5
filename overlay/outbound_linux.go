//go:build linux

package overlay

// Outbound (TUN → wire), the Linux fast path: outboundFast.
//
// The router reads the TUN file descriptor itself (tun_linux.go), one
// packet per read(2), virtio header in front, and keeps reading without
// waiting while packets are queued, at most readBatch per round. A TCP or
// UDP super-packet (GSO) bound for a VXLAN peer is sent as VXLAN segments
// without ever being cut apart in memory: each segment's VXLAN and inner
// Ethernet headers, and behind them its IP and L4 headers
// (offload.Super.Segment), go into a small header buffer, and one sendmmsg with UDP_SEGMENT
// takes iovecs that alternate those headers with payload slices of the
// read buffer (vxlan.Gather). A packet without GSO has its checksum
// finished if the kernel left it partial and takes the ordinary per-packet
// path (sendBatch, outbound.go) together with the others read in the same
// round, as does every segment of a super-packet that cannot be sent
// gathered (the sender lost GSO, a segment too large for one datagram):
// those are split into real packets by offload.Super.Split, a copy, because
// the per-packet path needs whole packets with headroom.
//
// Spread reads: TUN super-packets read straight into their VXLAN layout.
//
// A gathered send (sendSuper) alternates small header iovecs with payload
// slices, and the kernel pays for every iovec it copies from. When the
// outbound path knows the layout the next super-packet will have (the
// header length and segment size of the last one: one TCP flow keeps them),
// it reads the TUN with readv(2) into iovecs that leave, in front of each
// segment's payload, exactly the room its VXLAN, inner Ethernet and IP/TCP
// headers take. The segments then lie one after another in memory, frames
// complete once their headers are written, and one GSO datagram is a single
// iovec. A packet that does not fit the guess is copied into an ordinary
// buffer and takes the usual paths, and its layout becomes the next guess.

import (
	"errors"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// gatherSender sends gathered datagrams; vxlan.Sender is one. The same
// contract as FrameSender holds: the router owns g and reuses it when
// SendGather returns; one goroutine calls it at a time; an error wrapping
// net.ErrClosed stops the loop. GSO reports whether the sender may still
// segment (it turns false for good once the egress device refused).
type gatherSender interface {
	SendGather(g *vxlan.Gather, dst netip.AddrPort, flow uint32) error
	GSO() bool
}

// fastOut is the fast outbound loop's state beside its outState: the read
// queue, the gather buffers and the spread layout. Only that goroutine
// touches it.
type fastOut struct {
	snd  gatherSender
	g    *vxlan.Gather
	hdrs []byte       // segment headers of the gathered sends
	lay  spreadLayout // the guess for spread reads
	// The round's queue: packets without GSO read into rbufs[:k] (at
	// tunOffset, virtio header in front), waiting for one sendBatch.
	rbufs  [][]byte
	rsizes []int
	k      int
	// split path buffers, allocated on first use
	bufs  [][]byte
	sizes []int
}

func newFastOut(snd gatherSender) *fastOut {
	fo := &fastOut{snd: snd, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen),
		rbufs: make([][]byte, readBatch), rsizes: make([]int, readBatch)}
	for i := range fo.rbufs {
		fo.rbufs[i] = make([]byte, tunOffset+bufSize)
	}
	return fo
}

// outboundFast is the fast outbound loop; it runs until the TUN is closed.
// Each round starts with a blocking read, then outboundRound reads on
// without waiting: packets without GSO (ACKs, small datagrams) are queued
// and sent together through sendBatch, one send per peer and flow bucket
// instead of one per packet; a super-packet first flushes the queue (order
// is kept) and then goes out gathered.
func (r *Router) outboundFast(rd *tunReader, snd gatherSender) {
	defer r.wg.Done()
	st := r.newOutState()
	fo := newFastOut(snd)
	for {
		// The virtio header lands right in front of tunOffset, inside the
		// headroom the VXLAN header takes later.
		n, err := rd.readSpread(&fo.lay, fo.rbufs[0][tunOffset-offload.HeaderLen:], true)
		if err != nil {
			if r.park(err) {
				continue
			}
			if r.closing() || isClosed(err) || errors.Is(err, unix.EBADFD) || errors.Is(err, unix.EBADF) {
				return
			}
			r.log.Debug("tun read failed", "err", err)
			time.Sleep(10 * time.Millisecond) // e.g. EIO while the link is down
			continue
		}
		alive := r.outboundRound(rd, n, fo, st)
		r.flushOut(st)
		if !alive {
			return
		}
	}
}

// outboundRound takes the round's first read (n as readSpread returned it)
// and reads on while packets are queued, up to readBatch reads, then sends
// what is still queued. It reports false once the router is closing.
func (r *Router) outboundRound(rd *tunReader, n int, fo *fastOut, st *outState) bool {
	t := r.table.Load()
	fo.k = 0
	for reads := 1; ; reads++ {
		if !r.takeRead(t, n, fo, st) {
			return false
		}
		if reads == readBatch {
			break
		}
		if n, _ = rd.readSpread(&fo.lay, fo.rbufs[fo.k][tunOffset-offload.HeaderLen:], false); n == -1 {
			break
		}
	}
	return r.flushQueued(t, fo, st)
}

// takeRead handles one read into fo.rbufs[fo.k] (or the spread layout): a
// packet without GSO is queued, a super-packet sent after the queue.
func (r *Router) takeRead(t *table, n int, fo *fastOut, st *outState) bool {
	if n == spreadSuper {
		// A super-packet read into the spread layout: it goes out from
		// there.
		return r.flushQueued(t, fo, st) && r.sendParsed(t, &fo.lay.sp, fo, st)
	}
	buf := fo.rbufs[fo.k]
	var h offload.Header
	if n < offload.HeaderLen || h.Decode(buf[tunOffset-offload.HeaderLen:]) != nil {
		st.counts.drops[dropBadOffload]++
		return true
	}
	pkt := buf[tunOffset : tunOffset-offload.HeaderLen+n]
	if h.GSOType != offload.GSONone {
		return r.flushQueued(t, fo, st) && r.sendOffload(t, &h, pkt, fo, st)
	}
	if h.Flags&offload.NeedsCsum != 0 && offload.FinishChecksum(&h, pkt) != nil {
		st.counts.drops[dropBadOffload]++
		return true
	}
	fo.rsizes[fo.k] = len(pkt)
	fo.k++
	return true
}

// flushQueued sends the queued packets through the per-packet path.
func (r *Router) flushQueued(t *table, fo *fastOut, st *outState) bool {
	if fo.k == 0 {
		return true
	}
	k := fo.k
	fo.k = 0
	return r.sendBatch(t, fo.rbufs[:k], fo.rsizes[:k], st)
}

// sendOffload sends a GSO super-packet: gathered when it is bound for a
// VXLAN peer, else split into packets.
func (r *Router) sendOffload(t *table, h *offload.Header, pkt []byte, fo *fastOut, st *outState) bool {
	sp, err := offload.ParseSuper(h, pkt)
	if err != nil {
		st.counts.drops[dropBadOffload]++
		return true
	}
	if sp.Proto == protoTCP {
		fo.lay.set(sp.HdrLen, sp.MSS) // the next one likely looks the same
	}
	return r.sendParsed(t, &sp, fo, st)
}

// sendParsed sends a parsed super-packet: gathered, else split.
func (r *Router) sendParsed(t *table, sp *offload.Super, fo *fastOut, st *outState) bool {
	done, alive := r.sendSuper(t, sp, fo, st)
	if !done && alive {
		alive = r.splitSuper(t, sp, fo, st)
	}
	return alive
}

// sendSuper sends a super-packet bound for a VXLAN peer as gathered GSO
// datagrams. It reports done=false for what it leaves to the split path,
// and alive=false once the router is closing.
func (r *Router) sendSuper(t *table, sp *offload.Super, fo *fastOut, st *outState) (done, alive bool) {
	dst, et, ok := innerDst(sp.Pkt)
	if !ok {
		return false, true
	}
	p := t.lookup(dst)
	if p == nil {
		st.counts.drops[dropNoRoute] += uint64(sp.Segs)
		return true, true
	}
	if p.Transport != TransportVXLAN || !fo.snd.GSO() {
		return false, true
	}
	segLen := sp.HdrLen + sp.MSS
	if !p.fits(segLen, r.mtu) {
		r.tooBig(p, sp.Pkt, st)
		st.counts.drops[dropTooBig] += uint64(sp.Segs)
		return true, true
	}
	gs := gathered{r: r, fo: fo, st: st, p: p, bucket: st.bucketOf(sp.Pkt), frameLen: vxlan.FrameHeaderLen + segLen}
	gs.perMsg = min(vxlan.MaxGatherSegments, vxlan.MaxGatherPayload/gs.frameLen)
	if gs.perMsg == 0 {
		return false, true
	}
	gs.f = vxlan.Frame{VNI: r.cfg.VNI, Dst: p.VTEPMAC, Src: r.cfg.LocalMAC, EtherType: et}
	// Remote checksum offload to peers that take it: TCP segments go with
	// the pseudo-header sum only, and their payloads are never summed here.
	gs.rco = p.RemoteChecksum && sp.Proto == protoTCP && sp.L3Len%2 == 0 &&
		vxlan.EthernetLen+sp.L3Len <= vxlan.MaxCsumStart
	if gs.rco {
		gs.f.CsumStart = vxlan.EthernetLen + sp.L3Len
	}
	fo.g.Reset()
	gs.hdrs = fo.hdrs[:0]
	if sp.Stride == gs.frameLen {
		return true, gs.spread(sp)
	}
	return true, gs.headers(sp)
}

// gathered is one super-packet's gathered send in progress.
type gathered struct {
	r        *Router
	fo       *fastOut
	st       *outState
	p        *peerEntry
	bucket   uint32
	f        vxlan.Frame // the segments' frame header
	rco      bool
	frameLen int    // a whole segment's frame
	perMsg   int    // segments per GSO datagram
	hdrs     []byte // segment headers written so far, in fo.hdrs
	// segments in fo.g, and their inner bytes
	pending, pendingBytes int
}

// spread sends a super-packet read into the spread layout: each segment's
// headers go in place in front of its payload, the template (segment 0's)
// last; then each datagram is one run of whole frames.
func (gs *gathered) spread(sp *offload.Super) bool {
	g := gs.fo.g
	for i := sp.Segs - 1; i >= 0; i-- {
		h := sp.Base[i*sp.Stride : i*sp.Stride+vxlan.FrameHeaderLen+sp.HdrLen]
		gs.f.Encode(h)
		sp.Segment(i, h[vxlan.FrameHeaderLen:], gs.rco)
	}
	for first := 0; first < sp.Segs; first += gs.perMsg {
		last := min(first+gs.perMsg, sp.Segs) - 1
		if g.Full() && !gs.send() {
			return false
		}
		g.Begin(gs.frameLen)
		g.Add(sp.Base[first*sp.Stride : last*sp.Stride+vxlan.FrameHeaderLen+sp.HdrLen+sp.PayloadLen(last)])
		gs.pending += last - first + 1
		gs.pendingBytes += (last-first+1)*sp.HdrLen + (last-first)*sp.MSS + sp.PayloadLen(last)
	}
	return gs.send()
}

// headers sends a super-packet from its read buffer: each segment's
// headers are written into fo.hdrs, and the iovecs alternate them with the
// payload slices.
func (gs *gathered) headers(sp *offload.Super) bool {
	g := gs.fo.g
	for i := 0; i < sp.Segs; i++ {
		if i%gs.perMsg == 0 {
			if g.Full() || cap(gs.hdrs)-len(gs.hdrs) < gs.perMsg*(vxlan.FrameHeaderLen+sp.HdrLen) {
				if !gs.send() {
					return false
				}
			}
			g.Begin(gs.frameLen)
		}
		h := gs.hdrs[len(gs.hdrs) : len(gs.hdrs)+vxlan.FrameHeaderLen+sp.HdrLen]
		gs.hdrs = gs.hdrs[:len(gs.hdrs)+len(h)]
		gs.f.Encode(h)
		payload := sp.Segment(i, h[vxlan.FrameHeaderLen:], gs.rco)
		g.Add(h)
		g.Add(payload)
		gs.pending++
		gs.pendingBytes += sp.HdrLen + len(payload)
	}
	return gs.send()
}

// send sends what is gathered and counts it; it reports false once the
// socket is closed.
func (gs *gathered) send() bool {
	fo, st := gs.fo, gs.st
	err := fo.snd.SendGather(fo.g, gs.p.Underlay, gs.bucket)
	fo.g.Reset()
	gs.hdrs = fo.hdrs[:0]
	n, nb := gs.pending, gs.pendingBytes
	gs.pending, gs.pendingBytes = 0, 0
	if err == nil {
		st.counts.packets += uint64(n)
		st.counts.bytes += uint64(nb)
		return true
	}
	st.counts.drops[dropSendError] += uint64(n)
	if isClosed(err) {
		return false
	}
	gs.r.log.Debug("udp send failed", "peer", gs.p.Name, "err", err)
	gs.r.kickPathMTU()
	return true
}

// splitSuper cuts a super-packet into whole packets (a copy) and sends them
// through the per-packet path.
func (r *Router) splitSuper(t *table, sp *offload.Super, fo *fastOut, st *outState) bool {
	if fo.bufs == nil {
		fo.bufs = make([][]byte, splitBatch)
		for i := range fo.bufs {
			fo.bufs[i] = make([]byte, bufSize)
		}
		fo.sizes = make([]int, splitBatch)
	}
	for first := 0; first < sp.Segs; {
		k := sp.Split(first, fo.bufs, fo.sizes, tunOffset)
		if k == 0 {
			// A segment longer than a buffer (a frame near 64 KiB
			// from a local writer): the rest is dropped, counted.
			st.counts.drops[dropTooBig] += uint64(sp.Segs - first)
			return true
		}
		if !r.sendBatch(t, fo.bufs[:k], fo.sizes[:k], st) {
			return false
		}
		first += k
	}
	return true
}

// spreadSuper is what readSpread returns for a packet left in the layout.
const spreadSuper = -2

// readSpread reads like Read (or TryRead, unless block), but with the
// layout l when it has a guess: the result is then either spreadSuper (the
// super-packet is in l.sp) or the packet copied into b as Read would have
// put it.
func (t *tunReader) readSpread(l *spreadLayout, b []byte, block bool) (int, error) {
	if l.hdrLen == 0 {
		if block {
			return t.Read(b)
		}
		return t.TryRead(b), nil
	}
	t.iovs, t.n, t.err = l.iovs, -1, nil
	var err error
	if block {
		t.n = 0
		err = t.rc.Read(t.read)
	} else {
		err = t.rc.Read(t.tryRead)
	}
	t.iovs = nil
	switch {
	case err != nil && block:
		return 0, pollerError(err)
	case err != nil:
		return -1, nil
	case t.err != nil || t.n < 0:
		return t.n, t.err
	}
	if m := l.take(t.n, b); m >= 0 {
		return m, nil
	}
	return spreadSuper, nil
}

const (
	// spreadMaxSegs bounds the slots of a layout (and its iovecs): layouts
	// with segments so small that a 64 KiB packet needs more are not used.
	spreadMaxSegs = 128
	// spreadMaxRead is the most a TUN read returns: virtio header and the
	// largest IP packet.
	spreadMaxRead = offload.HeaderLen + 65535
)

// spreadLayout is the guessed layout and its buffer. Slot k occupies
// buf[k*stride:(k+1)*stride]: frame header, IP/TCP headers, payload.
type spreadLayout struct {
	hdrLen, mss int // the guess; hdrLen 0: none
	stride      int
	buf         []byte
	iovs        []unix.Iovec
	sp          offload.Super // the packet of the last read that matched
}

// set makes hdrLen and mss the guess, or clears it when such a layout would
// need too many slots.
func (l *spreadLayout) set(hdrLen, mss int) {
	if hdrLen == l.hdrLen && mss == l.mss {
		return
	}
	l.hdrLen, l.mss = 0, 0
	first := offload.HeaderLen + hdrLen + mss
	if mss <= 0 || first >= spreadMaxRead {
		return
	}
	slots := 1 + (spreadMaxRead-first+mss-1)/mss
	if slots > spreadMaxSegs {
		return
	}
	l.hdrLen, l.mss = hdrLen, mss
	l.stride = vxlan.FrameHeaderLen + hdrLen + mss
	if need := slots * l.stride; cap(l.buf) < need {
		l.buf = make([]byte, need)
	}
	l.buf = l.buf[:slots*l.stride]
	l.iovs = l.iovs[:0]
	// Slot 0: the virtio header lands in the frame header's room, right
	// before the IP header.
	l.iovs = append(l.iovs, iovec(l.buf[vxlan.FrameHeaderLen-offload.HeaderLen:l.stride]))
	for k := 1; k < slots; k++ {
		l.iovs = append(l.iovs, iovec(l.buf[k*l.stride+vxlan.FrameHeaderLen+hdrLen:(k+1)*l.stride]))
	}
}

// firstLen is how much of a read slot 0 holds.
func (l *spreadLayout) firstLen() int { return offload.HeaderLen + l.hdrLen + l.mss }

// take looks at n bytes read with the layout. A packet that fits the guess
// (a TCP super-packet with its header length and segment size, longer than
// slot 0) is parsed into l.sp and take returns -1. Anything else is copied
// into dst as an ordinary read would have put it (virtio header first) and
// take returns its length.
func (l *spreadLayout) take(n int, dst []byte) int {
	read := l.buf[vxlan.FrameHeaderLen-offload.HeaderLen:]
	if n > l.firstLen() {
		var h offload.Header
		if h.Decode(read) == nil && (h.GSOType&^offload.GSOECN == offload.GSOTCPv4 || h.GSOType&^offload.GSOECN == offload.GSOTCPv6) &&
			int(h.GSOSize) == l.mss {
			sp, err := offload.ParseSuperLen(&h, l.buf[vxlan.FrameHeaderLen:l.stride], n-offload.HeaderLen)
			if err == nil && sp.HdrLen == l.hdrLen {
				sp.Stride, sp.Base, sp.Headroom = l.stride, l.buf, vxlan.FrameHeaderLen
				l.sp = sp
				return -1
			}
		}
	}
	// Linearize: slot 0, then each later slot's payload part.
	m := copy(dst, read[:min(n, l.firstLen())])
	for k := 1; m < n; k++ {
		off := k*l.stride + vxlan.FrameHeaderLen + l.hdrLen
		m += copy(dst[m:], l.buf[off:off+min(l.mss, n-m)])
	}
	return n
}
