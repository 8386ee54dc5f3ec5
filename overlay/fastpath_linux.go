package overlay

// The fast paths: TUN I/O with offloads carried through, no payload copies.
//
// They run when the router owns a real TUN device opened with virtio-net
// headers (IFF_VNET_HDR, as weftd opens it) and a vxlan.Sender:
//
// Outbound (TUN → wire), outboundFast: the router reads the TUN file
// descriptor itself, one packet per read(2), virtio header in front, and
// keeps reading without waiting while packets are queued. A TCP
// or UDP super-packet (GSO) bound for a VXLAN peer is sent as VXLAN
// segments without ever being cut apart in memory: superPacket.segment
// writes each segment's VXLAN, inner Ethernet, IP and L4 headers into a
// small header buffer, and one sendmmsg with UDP_SEGMENT takes iovecs that
// alternate those headers with payload slices of the read buffer
// (vxlan.Gather). A packet without GSO has its checksum finished if the
// kernel left it partial and takes the ordinary per-packet path
// (sendBatch) together with the others read in the same round, as does every segment of a super-packet that cannot be sent
// gathered (the sender lost GSO, a segment too large for one datagram):
// those are split into real packets by superPacket.split, a copy, because
// the per-packet path needs whole packets with headroom.
//
// outboundFast runs only when the router has no WireGuard transport: on a
// node with a WireGuard device, the TUN's reader is the ordinary outbound
// loop or the WireGuard device itself (divert.go), and the TUN must have
// exactly one reader. The inbound fast path runs on every node.
//
// Inbound (wire → TUN), inboundFast: the router receives on the VXLAN port
// with its own socket (vxlan.Receiver: recvmmsg and UDP GRO), validates
// every datagram of a GRO buffer in place exactly as decapsulate always
// has, and hands the survivors to the coalescer (coalesce.go), whose
// writes go to the TUN file descriptor with writev: one GSO packet per
// run of one TCP flow, everything else one packet per write.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/encap/vxlan"
)

const (
	// inBatch is how many receive buffers (each up to 64 KiB of GRO
	// datagrams) one recvmmsg fills.
	inBatch = 32
	// splitBatch is how many packets the split path hands sendBatch at a
	// time.
	splitBatch = 64
	// readBatch bounds the TUN reads of one outbound round.
	readBatch = 32
	// segHdrLen is the most header bytes one gathered segment needs.
	segHdrLen = vxlan.FrameHeaderLen + maxHdrLen
)

// gatherSender sends gathered datagrams; vxlan.Sender is one.
type gatherSender interface {
	SendGather(g *vxlan.Gather, dst netip.AddrPort, flow uint32) error
	GSO() bool
}

// startFast starts the fast loops the router's devices allow and reports
// which it started; the caller starts the ordinary loops for the others.
func (r *Router) startFast(port uint16) (outbound, inbound bool, err error) {
	snd, ok := r.cfg.Sender.(gatherSender)
	if !ok {
		return false, false, nil
	}
	f := r.tun.File()
	if f == nil {
		return false, false, nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return false, false, nil
	}
	if !vnetHeaders(rc) || !nonBlocking(rc) {
		return false, false, nil
	}
	rcv, err := vxlan.ListenReceiver(port, inBatch)
	if err != nil {
		return false, false, err
	}
	r.receiver = rcv
	r.wg.Add(1)
	go r.inboundFast(rcv, newTUNWriter(rc))
	if r.cfg.WireGuard == nil {
		r.wg.Add(1)
		go r.outboundFast(newTUNReader(rc), snd)
		outbound = true
	}
	return outbound, true, nil
}

// vnetHeaders reports whether the TUN file carries virtio-net headers.
func vnetHeaders(rc syscall.RawConn) bool {
	var flags uint16
	var ierr error
	err := rc.Control(func(fd uintptr) {
		var ifr *unix.Ifreq
		if ifr, ierr = unix.NewIfreq("weft"); ierr != nil {
			return
		}
		if ierr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); ierr == nil {
			flags = ifr.Uint16()
		}
	})
	return err == nil && ierr == nil && flags&unix.IFF_VNET_HDR != 0 && flags&unix.IFF_TUN != 0
}

// nonBlocking reports whether the file is in non-blocking mode, which the
// fast paths' raw system calls (see rawRead) need.
func nonBlocking(rc syscall.RawConn) bool {
	var flags int
	var ferr error
	err := rc.Control(func(fd uintptr) {
		flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0)
	})
	return err == nil && ferr == nil && flags&unix.O_NONBLOCK != 0
}

// tunReader reads single packets from the TUN file descriptor through the
// runtime poller. The callbacks are made once, so reads do not allocate.
type tunReader struct {
	rc      syscall.RawConn
	buf     []byte
	iovs    []unix.Iovec // when set, reads go into these (readv) instead of buf
	n       int
	err     error
	read    func(fd uintptr) bool
	tryRead func(fd uintptr) bool
}

func newTUNReader(rc syscall.RawConn) *tunReader {
	t := &tunReader{rc: rc}
	t.read = t.readFunc
	t.tryRead = t.tryReadFunc
	return t
}

// tryReadFunc reads once without waiting: n is -1 when nothing is queued
// or the read fails.
func (t *tunReader) tryReadFunc(fd uintptr) bool {
	for {
		n, err := t.raw(fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			n = -1
		}
		t.n = n
		return true
	}
}

// TryRead reads one virtio header and packet into b if one is queued, and
// returns its length, or -1 if none is (or the read failed: the next
// blocking Read reports that).
func (t *tunReader) TryRead(b []byte) int {
	t.buf, t.iovs, t.n = b, nil, -1
	if t.rc.Read(t.tryRead) != nil {
		return -1
	}
	return t.n
}

// raw is one read(2), or readv(2) into t.iovs.
func (t *tunReader) raw(fd uintptr) (int, error) {
	if t.iovs != nil {
		return readv(fd, t.iovs)
	}
	return rawRead(fd, t.buf)
}

func (t *tunReader) readFunc(fd uintptr) bool {
	for {
		n, err := t.raw(fd)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		t.n, t.err = n, err
		return true
	}
}

// Read reads one virtio header and packet into b. An error from the
// poller means the file is closed and is reported as os.ErrClosed; an error
// of the read itself is returned as it is.
func (t *tunReader) Read(b []byte) (int, error) {
	t.buf, t.iovs, t.n, t.err = b, nil, 0, nil
	if err := t.rc.Read(t.read); err != nil {
		return 0, fmt.Errorf("%w: %v", os.ErrClosed, err)
	}
	return t.n, t.err
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
		return 0, fmt.Errorf("%w: %v", os.ErrClosed, err)
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

// tunWriter writes packets to the TUN file descriptor, gathering a
// coalesced packet from its pieces. Used by one goroutine at a time.
type tunWriter struct {
	rc    syscall.RawConn
	iovs  []unix.Iovec
	err   error
	write func(fd uintptr) bool
}

func newTUNWriter(rc syscall.RawConn) *tunWriter {
	t := &tunWriter{rc: rc, iovs: make([]unix.Iovec, 0, maxRunSegs+1)}
	t.write = t.writeFunc
	return t
}

func (t *tunWriter) writeFunc(fd uintptr) bool {
	for {
		_, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&t.iovs[0])), uintptr(len(t.iovs)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			t.err = nil
		default:
			t.err = e
		}
		return true
	}
}

// Write writes head (virtio header and packet, or the head of a coalesced
// packet) followed by the payloads in more, as one packet.
func (t *tunWriter) Write(head []byte, more [][]byte) error {
	t.iovs = t.iovs[:0]
	t.iovs = append(t.iovs, unix.Iovec{Base: &head[0]})
	t.iovs[0].SetLen(len(head))
	for _, b := range more {
		t.iovs = append(t.iovs, unix.Iovec{Base: &b[0]})
		t.iovs[len(t.iovs)-1].SetLen(len(b))
	}
	t.err = nil
	if err := t.rc.Write(t.write); err != nil {
		return fmt.Errorf("%w: %v", os.ErrClosed, err)
	}
	return t.err
}

// closing reports whether Close has begun.
func (r *Router) closing() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// outState for the fast path carries the gather buffers too.
type fastOut struct {
	snd  gatherSender
	g    *vxlan.Gather
	hdrs []byte
	lay  spreadLayout // the guess for spread reads (spread_linux.go)
	// split path buffers, allocated on first use
	bufs  [][]byte
	sizes []int
}

// outboundFast reads the TUN until it would block, at most readBatch
// packets per round: packets without GSO (ACKs, small datagrams) are
// queued and sent together through sendBatch, one send per peer and flow
// bucket instead of one per packet; a super-packet first flushes the queue
// (order is kept) and then goes out gathered.
func (r *Router) outboundFast(rd *tunReader, snd gatherSender) {
	defer r.wg.Done()
	bufs := make([][]byte, readBatch)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+bufSize)
	}
	sizes := make([]int, readBatch)
	st := r.newOutState(readBatch)
	fo := &fastOut{snd: snd, g: vxlan.NewGather(), hdrs: make([]byte, 0, 16*vxlan.MaxGatherSegments*segHdrLen)}
	for {
		// The virtio header lands right in front of tunOffset, inside the
		// headroom the VXLAN header takes later.
		n, err := rd.readSpread(&fo.lay, bufs[0][tunOffset-virtioHdrLen:], true)
		if err != nil {
			if r.closing() || isClosed(err) || errors.Is(err, unix.EBADFD) || errors.Is(err, unix.EBADF) {
				return
			}
			r.log.Debug("tun read failed", "err", err)
			time.Sleep(10 * time.Millisecond) // e.g. EIO while the link is down
			continue
		}
		t := r.table.Load()
		alive := true
		k := 0 // packets queued in bufs[:k]
		for reads := 1; ; reads++ {
			buf := bufs[k]
			var h virtioHdr
			if n == spreadSuper {
				// A super-packet read into the spread layout: after
				// what is queued, it goes out from there.
				if k > 0 {
					alive = r.sendBatch(t, bufs[:k], sizes[:k], st)
					k = 0
				}
				if alive {
					alive = r.sendParsed(t, &fo.lay.sp, fo, st)
				}
			} else if h.decode(buf[tunOffset-virtioHdrLen:tunOffset-virtioHdrLen+n]) != nil {
				st.counts.drops[dropBadOffload]++
			} else if pkt := buf[tunOffset : tunOffset-virtioHdrLen+n]; h.gsoType == gsoNone {
				if h.flags&virtioNeedsCsum != 0 && finishChecksum(&h, pkt) != nil {
					st.counts.drops[dropBadOffload]++
				} else {
					sizes[k] = len(pkt)
					k++
				}
			} else {
				if k > 0 {
					alive = r.sendBatch(t, bufs[:k], sizes[:k], st)
					k = 0
				}
				if alive {
					alive = r.sendOffload(t, &h, pkt, fo, st)
				}
			}
			if !alive || reads == readBatch {
				break
			}
			if n, _ = rd.readSpread(&fo.lay, bufs[k][tunOffset-virtioHdrLen:], false); n == -1 {
				break
			}
		}
		if alive && k > 0 {
			alive = r.sendBatch(t, bufs[:k], sizes[:k], st)
		}
		r.flushOut(st)
		if !alive {
			return
		}
	}
}

// sendOffload sends a GSO super-packet: gathered when it is bound for a
// VXLAN peer, else split into packets.
func (r *Router) sendOffload(t *table, h *virtioHdr, pkt []byte, fo *fastOut, st *outState) bool {
	sp, err := parseSuper(h, pkt)
	if err != nil {
		st.counts.drops[dropBadOffload]++
		return true
	}
	if sp.proto == protoTCP {
		fo.lay.set(sp.hdrLen, sp.mss) // the next one likely looks the same
	}
	return r.sendParsed(t, &sp, fo, st)
}

// sendParsed sends a parsed super-packet: gathered, else split.
func (r *Router) sendParsed(t *table, sp *superPacket, fo *fastOut, st *outState) bool {
	done, alive := r.sendSuper(t, sp, fo, st)
	if !done && alive {
		alive = r.splitSuper(t, sp, fo, st)
	}
	return alive
}

// sendSuper sends a super-packet bound for a VXLAN peer as gathered GSO
// datagrams. It reports done=false for what it leaves to the split path,
// and alive=false once the router is closing.
func (r *Router) sendSuper(t *table, sp *superPacket, fo *fastOut, st *outState) (done, alive bool) {
	dst, et, ok := innerDst(sp.pkt)
	if !ok {
		return false, true
	}
	p := t.lookup(dst)
	if p == nil {
		st.counts.drops[dropNoRoute] += uint64(sp.segs)
		return true, true
	}
	if p.Transport != TransportVXLAN || !fo.snd.GSO() {
		return false, true
	}
	segLen := sp.hdrLen + sp.mss
	if !p.fits(segLen) {
		r.tooBig(p, sp.pkt, st.icmp, &st.limiter)
		st.counts.drops[dropTooBig] += uint64(sp.segs)
		return true, true
	}
	frameLen := vxlan.FrameHeaderLen + segLen
	perMsg := min(vxlan.MaxGatherSegments, vxlan.MaxGatherPayload/frameLen)
	if perMsg == 0 {
		return false, true
	}
	f := vxlan.Frame{VNI: r.cfg.VNI, Dst: p.VTEPMAC, Src: r.cfg.LocalMAC, EtherType: et}
	// Remote checksum offload to peers that take it: TCP segments go with
	// the pseudo-header sum only, and their payloads are never summed here.
	rco := p.RemoteChecksum && sp.proto == protoTCP && sp.l3Len%2 == 0 &&
		vxlan.EthernetLen+sp.l3Len <= vxlan.MaxCsumStart
	if rco {
		f.CsumStart = vxlan.EthernetLen + sp.l3Len
	}
	bucket := st.bucketOf(sp.pkt)
	g := fo.g
	g.Reset()
	hdrs := fo.hdrs[:0]
	pending, pendingBytes := 0, 0 // segments in g, and their inner bytes
	send := func() bool {
		err := fo.snd.SendGather(g, p.Underlay, bucket)
		g.Reset()
		hdrs = fo.hdrs[:0]
		n, nb := pending, pendingBytes
		pending, pendingBytes = 0, 0
		if err == nil {
			st.counts.packets += uint64(n)
			st.counts.bytes += uint64(nb)
			return true
		}
		st.counts.drops[dropSendError] += uint64(n)
		if isClosed(err) {
			return false
		}
		r.log.Debug("udp send failed", "peer", p.Name, "err", err)
		r.kickPathMTU()
		return true
	}
	if sp.stride == frameLen {
		// Spread: each segment's headers go in place in front of its
		// payload, the template (segment 0's) last; then each datagram
		// is one run of whole frames.
		for i := sp.segs - 1; i >= 0; i-- {
			h := sp.base[i*sp.stride : i*sp.stride+vxlan.FrameHeaderLen+sp.hdrLen]
			f.Encode(h)
			sp.segment(i, h[vxlan.FrameHeaderLen:], rco)
		}
		for first := 0; first < sp.segs; first += perMsg {
			last := min(first+perMsg, sp.segs) - 1
			if g.Full() && !send() {
				return true, false
			}
			g.Begin(frameLen)
			g.Add(sp.base[first*sp.stride : last*sp.stride+vxlan.FrameHeaderLen+sp.hdrLen+sp.payloadLen(last)])
			pending += last - first + 1
			pendingBytes += (last-first+1)*sp.hdrLen + (last-first)*sp.mss + sp.payloadLen(last)
		}
		return true, send()
	}
	for i := 0; i < sp.segs; i++ {
		if i%perMsg == 0 {
			if g.Full() || cap(hdrs)-len(hdrs) < perMsg*(vxlan.FrameHeaderLen+sp.hdrLen) {
				if !send() {
					return true, false
				}
			}
			g.Begin(frameLen)
		}
		h := hdrs[len(hdrs) : len(hdrs)+vxlan.FrameHeaderLen+sp.hdrLen]
		hdrs = hdrs[:len(hdrs)+len(h)]
		f.Encode(h)
		payload := sp.segment(i, h[vxlan.FrameHeaderLen:], rco)
		g.Add(h)
		g.Add(payload)
		pending++
		pendingBytes += sp.hdrLen + len(payload)
	}
	return true, send()
}

// splitSuper cuts a super-packet into whole packets (a copy) and sends them
// through the per-packet path.
func (r *Router) splitSuper(t *table, sp *superPacket, fo *fastOut, st *outState) bool {
	if fo.bufs == nil {
		fo.bufs = make([][]byte, splitBatch)
		for i := range fo.bufs {
			fo.bufs[i] = make([]byte, bufSize)
		}
		fo.sizes = make([]int, splitBatch)
	}
	for first := 0; first < sp.segs; {
		k := sp.split(first, fo.bufs, fo.sizes, tunOffset)
		if !r.sendBatch(t, fo.bufs[:k], fo.sizes[:k], st) {
			return false
		}
		first += k
	}
	return true
}

func (r *Router) inboundFast(rcv *vxlan.Receiver, w *tunWriter) {
	defer r.wg.Done()
	bufs := make([][]byte, inBatch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, inBatch)
	segs := make([]int, inBatch)
	from := make([]netip.Addr, inBatch)
	var c coalescer
	var counts batchCounts
	for {
		n, err := rcv.Read(bufs, sizes, segs, from)
		if err != nil {
			if r.closing() || isClosed(err) {
				return
			}
			r.log.Debug("udp receive failed", "err", err)
			continue
		}
		t := r.table.Load()
		counts.reset()
		c.reset()
		for i := 0; i < n; i++ {
			r.decapsulateGRO(t, bufs[i][:sizes[i]], segs[i], from[i], &c, &counts)
		}
		c.flush()
		for _, wr := range c.writes {
			if err := w.Write(wr.head, c.payloads[wr.lo:wr.hi]); err != nil {
				if r.closing() || isClosed(err) {
					return
				}
				counts.drops[dropTunWrite] += uint64(wr.segs)
				counts.packets -= uint64(wr.segs)
				r.log.Debug("tun write failed", "err", err)
			}
		}
		r.stats.RxPackets.Add(counts.packets)
		r.stats.RxBytes.Add(counts.bytes)
		r.stats.addDrops(&counts)
	}
}

// decapsulateGRO validates each datagram of a received buffer (datagrams of
// seg bytes, the last possibly shorter) and hands the good ones to c.
func (r *Router) decapsulateGRO(t *table, b []byte, seg int, from netip.Addr, c *coalescer, counts *batchCounts) {
	if len(b) == 0 {
		counts.drops[dropShort]++ // empty or truncated
		return
	}
	if seg <= 0 || seg > len(b) {
		seg = len(b)
	}
	p := t.peerAt(from)
	c.trusted = p != nil && p.OuterChecksum
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

// rawRead is read(2) as a raw system call: the goroutine keeps its P
// instead of handing it off, which spares the scheduler's monitor thread a
// wake-up per call. Only for non-blocking descriptors, where the call never
// waits; the fast paths' other calls (writev, sendmmsg, recvmmsg) are raw
// for the same reason.
func rawRead(fd uintptr, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}
