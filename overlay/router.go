// Package overlay is weft's router: it moves pod packets between the TUN
// device and the underlay.
//
// Direction words, used throughout: outbound is TUN → wire (a local pod
// sends to a pod on another node), inbound is wire → TUN.
//
// Design: one goroutine reads batches from the TUN, looks up each inner
// destination in an immutable prefix table (atomic pointer, no lock), writes
// the VXLAN and inner Ethernet headers in place into headroom in front of
// the packet, and sends the batch grouped by peer, one Send per peer. One
// goroutine per UDP receive function reads batches, validates each frame
// (VNI, flags, known sender, inner source inside the sender's pod CIDRs) and
// writes the surviving inner packets to the TUN in one call. Buffers are
// allocated once per loop and reused; the per-packet work allocates nothing.
//
// That is the portable path. On Linux, with weftd's real TUN device
// (virtio-net headers, TSO/USO) and its vxlan.Sender, the loops of
// fastpath_linux.go take over: TCP and UDP super-packets are sent as VXLAN
// segments gathered from the TUN read buffer without being cut apart
// (gso.go), and received segments of one TCP flow are written to the TUN as
// one super-packet without being copied together (coalesce.go).
package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/encap/wireguard"
)

const (
	// tunOffset is where packets start in TUN buffers. Outbound it is the
	// headroom for the VXLAN and Ethernet headers; it must also be at least
	// the virtio-net header the TUN device may prepend (10 bytes).
	tunOffset = 32
	// rxPad is the headroom in front of received frames, so that after the
	// 22 header bytes are stripped the inner packet sits at a TUN write
	// offset of rxPad: backing[rxPad+22-rxPad:] has it at [rxPad:].
	rxPad = 16
	// bufSize holds the largest UDP datagram or TUN super-packet.
	bufSize = 1 << 16
)

// Config is what the router needs to know about this node.
type Config struct {
	VNI      uint32  // VXLAN network identifier, 24 bits
	LocalMAC [6]byte // our VTEP MAC: inner Ethernet source out, expected destination in
	// WireGuard carries the packets of peers whose Transport is
	// TransportWireGuard; nil when the node has no WireGuard device. When
	// set, the device is the TUN's only reader: it hands every batch to
	// the router's Divert (divert.go), and Start runs no outbound loop.
	WireGuard WireGuard
	// PathMTU returns the kernel's path MTU toward an underlay address (0
	// if unknown); nil disables path MTU tracking. See pmtu.go.
	PathMTU func(netip.Addr) (int, error)
	// ICMPSource is the address "fragmentation needed" messages come
	// from: the node's gateway address. Invalid disables them.
	ICMPSource netip.Addr
	// Sender sends VXLAN frames, choosing the outer source port by inner
	// flow; nil sends through the bind (one source port).
	Sender FrameSender
	Logger *slog.Logger
}

// FrameSender sends VXLAN frames to a peer from the socket of a flow's
// bucket; see vxlan.Sender.
type FrameSender interface {
	Send(frames [][]byte, dst netip.AddrPort, flow uint32) error
	Buckets() int
}

// WireGuard is the encrypted transport as the router uses it; see
// package encap/wireguard.
type WireGuard interface {
	// SetPeers replaces the whole WireGuard peer set.
	SetPeers(peers []wireguard.Peer) error
}

// Router carries packets between a TUN device and a UDP bind.
type Router struct {
	cfg   Config
	tun   tun.Device
	bind  conn.Bind
	log   *slog.Logger
	table atomic.Pointer[table]
	stats Stats

	// receiver is the VXLAN socket of the inbound fast path
	// (fastpath_linux.go), nil when the bind receives instead.
	receiver io.Closer

	pmtuMu   sync.Mutex // guards pmtus
	pmtus    map[netip.Addr]*pathMTU
	pmtuKick chan struct{}
	done     chan struct{} // closed by Close

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// New returns a router over dev and bind. Start opens the bind and starts
// the loops; the router owns both from then on and Close closes them.
func New(cfg Config, dev tun.Device, bind conn.Bind) *Router {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{cfg: cfg, tun: dev, bind: bind, log: log,
		pmtus: make(map[netip.Addr]*pathMTU), pmtuKick: make(chan struct{}, 1), done: make(chan struct{})}
	r.table.Store(newTable(nil))
	return r
}

// Start opens the UDP port and starts the packet loops. With a real TUN
// device carrying virtio-net headers and a vxlan.Sender, the fast loops of
// fastpath_linux.go run and receive on their own socket; otherwise the
// bind is opened on port.
func (r *Router) Start(port uint16) error {
	fastOut, fastIn, err := r.startFast(port)
	if err != nil {
		return fmt.Errorf("open udp port %d: %w", port, err)
	}
	var fns []conn.ReceiveFunc
	if !fastIn {
		if fns, _, err = r.bind.Open(port); err != nil {
			return fmt.Errorf("open udp port %d: %w", port, err)
		}
	}
	r.log.Info("router datapath", "fast_outbound", fastOut, "fast_inbound", fastIn)
	r.wg.Add(1 + len(fns))
	go r.pmtuLoop()
	if !fastOut && r.cfg.WireGuard == nil {
		// With a WireGuard device, the device reads the TUN (divert.go).
		r.wg.Add(1)
		go r.outbound()
	}
	for _, fn := range fns {
		go r.inbound(fn)
	}
	return nil
}

// SetPeers replaces the whole peer set. Peers whose underlay address does
// not parse are skipped and reported in the error; the rest take effect.
func (r *Router) SetPeers(peers []Peer) error {
	entries := make([]*peerEntry, 0, len(peers))
	var errs []error
	var wgPeers []wireguard.Peer
	for _, p := range peers {
		if p.Transport == TransportWireGuard {
			if r.cfg.WireGuard == nil {
				errs = append(errs, fmt.Errorf("peer %s: wireguard transport but this node has no wireguard device", p.Name))
				continue
			}
			wgPeers = append(wgPeers, p.WireGuard)
		}
		ep, err := r.bind.ParseEndpoint(p.Underlay.String())
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s: endpoint %s: %w", p.Name, p.Underlay, err))
			continue
		}
		p.PodCIDRs = append([]netip.Prefix(nil), p.PodCIDRs...)
		entries = append(entries, &peerEntry{Peer: p, ep: ep, pmtu: r.pathMTUFor(p.Underlay.Addr())})
	}
	if r.cfg.WireGuard != nil {
		// WireGuard learns its peers before the table routes to them.
		if err := r.cfg.WireGuard.SetPeers(wgPeers); err != nil {
			errs = append(errs, err)
		}
	}
	r.table.Store(newTable(entries))
	return errors.Join(errs...)
}

// Peers returns the peer set in force.
func (r *Router) Peers() []Peer {
	t := r.table.Load()
	out := make([]Peer, len(t.peers))
	for i, e := range t.peers {
		out[i] = e.Peer
	}
	return out
}

// Stats returns the router's counters.
func (r *Router) Stats() *Stats { return &r.stats }

// Close stops the loops and closes the TUN device, the bind and the fast
// path's socket. It is idempotent.
func (r *Router) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.done)
	r.mu.Unlock()
	err := errors.Join(r.tun.Close(), r.bind.Close())
	if r.receiver != nil {
		err = errors.Join(err, r.receiver.Close())
	}
	r.wg.Wait()
	return err
}

// pathMTUFor returns the path MTU entry for an underlay address, making it
// on first use. Entries are few (one per peer address ever seen) and tiny.
func (r *Router) pathMTUFor(a netip.Addr) *pathMTU {
	r.pmtuMu.Lock()
	defer r.pmtuMu.Unlock()
	a = a.Unmap()
	if m := r.pmtus[a]; m != nil {
		return m
	}
	m := &pathMTU{}
	r.pmtus[a] = m
	return m
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}

// sendGroup is the packets of one batch bound for one peer from one
// source-port bucket.
type sendGroup struct {
	peer   *peerEntry
	bucket uint32
	bufs   [][]byte
}

// outState is the outbound loop's reusable state: nothing in it is
// allocated per packet.
type outState struct {
	// groups is reused across batches; each group's bufs keeps its capacity.
	groups  []sendGroup
	icmp    []byte
	limiter icmpLimiter
	counts  batchCounts
	buckets uint32
}

func (r *Router) newOutState(batch int) *outState {
	st := &outState{
		groups:  make([]sendGroup, 0, 8),
		icmp:    make([]byte, tunOffset+128),
		buckets: 1,
	}
	if r.cfg.Sender != nil {
		st.buckets = uint32(r.cfg.Sender.Buckets())
	}
	return st
}

// bucketOf is the source-port bucket of an inner packet's flow.
func (st *outState) bucketOf(pkt []byte) uint32 {
	if st.buckets <= 1 {
		return 0
	}
	return flowHash(pkt) % st.buckets
}

// flushOut adds the batch's counters to the router's, once per batch.
func (r *Router) flushOut(st *outState) {
	r.stats.TxPackets.Add(st.counts.packets)
	r.stats.TxBytes.Add(st.counts.bytes)
	r.stats.addDrops(&st.counts)
	st.counts.reset()
}

func (r *Router) outbound() {
	defer r.wg.Done()
	batch := r.tun.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, batch)
	st := r.newOutState(batch)
	for {
		n, err := r.tun.Read(bufs, sizes, tunOffset)
		if err != nil && n == 0 {
			if isClosed(err) {
				return
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				r.log.Debug("tun read: too many segments", "err", err)
				continue
			}
			r.log.Error("tun read failed; outbound loop stops", "err", err)
			return
		}
		ok := r.sendBatch(r.table.Load(), bufs[:n], sizes[:n], st)
		r.flushOut(st)
		if !ok {
			return
		}
	}
}

// sendBatch encapsulates the packets bufs[i][tunOffset:tunOffset+sizes[i]] and
// sends them, grouped by peer and flow bucket. (It never sees WireGuard
// peers: they exist only with a WireGuard device, which reads the TUN
// itself.) It adds to st.counts and reports false once the router is
// closing.
func (r *Router) sendBatch(t *table, bufs [][]byte, sizes []int, st *outState) bool {
	for g := range st.groups {
		st.groups[g].bufs = st.groups[g].bufs[:0]
	}
	st.groups = st.groups[:0]
	counts := &st.counts
	for i := range bufs {
		p, v := r.encapsulate(t, bufs[i], sizes[i])
		if v == dropTooBig {
			r.tooBig(p, bufs[i][tunOffset:tunOffset+sizes[i]], st.icmp, &st.limiter)
		}
		if v != pass {
			counts.drops[v]++
			continue
		}
		counts.packets++
		counts.bytes += uint64(sizes[i])
		frame := bufs[i][tunOffset-vxlan.FrameHeaderLen : tunOffset+sizes[i]]
		st.groups = addToGroup(st.groups, p, st.bucketOf(bufs[i][tunOffset:tunOffset+sizes[i]]), frame)
	}
	return r.sendGroups(st.groups, counts)
}

// sendGroups sends each group to its peer, from the group's source-port
// bucket. Failed sends are counted as drops (and taken off counts.packets);
// it reports false once the socket is closed.
func (r *Router) sendGroups(groups []sendGroup, counts *batchCounts) bool {
	open := true
	for _, g := range groups {
		var err error
		if r.cfg.Sender != nil {
			err = r.cfg.Sender.Send(g.bufs, g.peer.Underlay, g.bucket)
		} else {
			err = r.bind.Send(g.bufs, g.peer.ep)
		}
		if err == nil {
			continue
		}
		counts.drops[dropSendError] += uint64(len(g.bufs))
		counts.packets -= uint64(len(g.bufs))
		if isClosed(err) {
			open = false
			continue
		}
		r.log.Debug("udp send failed", "peer", g.peer.Name, "err", err)
		// A datagram over the path MTU fails here; learn it now.
		r.kickPathMTU()
	}
	return open
}

// addToGroup appends frame to the group of (p, bucket), making the group if
// needed. A batch rarely spans more than a few peers and flows, so a linear
// scan wins over a map.
func addToGroup(groups []sendGroup, p *peerEntry, bucket uint32, frame []byte) []sendGroup {
	for i := range groups {
		if groups[i].peer == p && groups[i].bucket == bucket {
			groups[i].bufs = append(groups[i].bufs, frame)
			return groups
		}
	}
	if len(groups) < cap(groups) {
		groups = groups[:len(groups)+1]
		g := &groups[len(groups)-1]
		g.peer, g.bucket = p, bucket
		g.bufs = append(g.bufs[:0], frame)
		return groups
	}
	return append(groups, sendGroup{peer: p, bucket: bucket, bufs: [][]byte{frame}})
}

// flowHash hashes an IP packet's flow: addresses, protocol and, for TCP and
// UDP, ports (FNV-1a). Fragments after the first hash without ports, as do
// all fragments of a flow, so they stay together.
func flowHash(pkt []byte) uint32 {
	h := uint32(2166136261)
	mix := func(b []byte) {
		for _, c := range b {
			h = (h ^ uint32(c)) * 16777619
		}
	}
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		mix(pkt[12:20])
		mix(pkt[9:10])
		ihl := int(pkt[0]&0x0f) * 4
		fragmented := pkt[6]&0x3f != 0 || pkt[7] != 0 || pkt[6]&0x20 != 0
		if (pkt[9] == 6 || pkt[9] == 17) && !fragmented && len(pkt) >= ihl+4 {
			mix(pkt[ihl : ihl+4])
		}
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		mix(pkt[8:40])
		mix(pkt[6:7])
		if (pkt[6] == 6 || pkt[6] == 17) && len(pkt) >= 44 {
			mix(pkt[40:44])
		}
	}
	return h
}

// encapsulate finds the peer for the packet at buf[tunOffset:tunOffset+size]
// and, for a VXLAN peer, writes the frame header into the headroom in front
// of it. WireGuard peers get the packet as it is.
func (r *Router) encapsulate(t *table, buf []byte, size int) (*peerEntry, verdict) {
	pkt := buf[tunOffset : tunOffset+size]
	dst, et, ok := innerDst(pkt)
	if !ok {
		return nil, dropNotIP
	}
	p := t.lookup(dst)
	if p == nil {
		return nil, dropNoRoute
	}
	if !p.fits(size) {
		return p, dropTooBig
	}
	if p.Transport == TransportWireGuard {
		return p, pass
	}
	f := vxlan.Frame{VNI: r.cfg.VNI, Dst: p.VTEPMAC, Src: r.cfg.LocalMAC, EtherType: et}
	f.Encode(buf[tunOffset-vxlan.FrameHeaderLen : tunOffset])
	return p, pass
}

// tooBig answers a packet that does not fit the path to p with an ICMP
// "fragmentation needed" written back into the TUN, rate-limited.
func (r *Router) tooBig(p *peerEntry, pkt, buf []byte, limiter *icmpLimiter) {
	if !r.cfg.ICMPSource.IsValid() || !limiter.allow(time.Now()) {
		return
	}
	n := fragNeeded(buf[tunOffset:], r.cfg.ICMPSource, pkt, p.innerMTU())
	if n == 0 {
		return
	}
	if _, err := r.tun.Write([][]byte{buf[:tunOffset+n]}, tunOffset); err != nil {
		r.log.Debug("write icmp frag-needed", "err", err)
		return
	}
	r.stats.ICMPFragNeeded.Add(1)
}

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
		if len(wbufs) > 0 {
			if _, err := r.tun.Write(wbufs, rxPad); err != nil {
				if isClosed(err) {
					return
				}
				counts.drops[dropTunWrite] += uint64(len(wbufs))
				counts.packets -= uint64(len(wbufs))
				r.log.Debug("tun write failed", "err", err)
			}
		}
		r.stats.RxPackets.Add(counts.packets)
		r.stats.RxBytes.Add(counts.bytes)
		r.stats.addDrops(&counts)
	}
}

// decapsulate validates one received frame from the peer p (the table's
// entry for the frame's underlay source address, nil if there is none).
// Only a frame that passes every check reaches the TUN.
func (r *Router) decapsulate(frame []byte, p *peerEntry) verdict {
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
	src, ok := innerSrc(frame[vxlan.FrameHeaderLen:])
	if !ok {
		return dropInnerIP
	}
	if !p.owns(src) {
		return dropSpoofedSource
	}
	if f.CsumStart != 0 {
		if !p.OuterChecksum {
			// Only weft peers send remote checksum offload, and only
			// under an outer checksum the kernel verified.
			return dropFlags
		}
		if !rcoFits(frame[vxlan.FrameHeaderLen:], f.CsumStart-vxlan.EthernetLen, f.CsumUDP) {
			return dropInnerIP
		}
	}
	return pass
}

// rcoFits reports whether a remote checksum offload start (from the inner
// IP header) and kind point exactly at the inner packet's TCP or UDP
// header, which must be whole.
func rcoFits(inner []byte, start int, udp bool) bool {
	var l3Len int
	var proto byte
	if inner[0]>>4 == 4 {
		l3Len, proto = int(inner[0]&0x0f)*4, inner[9]
		if binary.BigEndian.Uint16(inner[6:8])&0x1fff != 0 {
			return false // a later fragment has no L4 header
		}
	} else {
		l3Len, proto = 40, inner[6]
	}
	l4Len := 20
	if udp {
		l4Len = 8
	}
	return start == l3Len && len(inner) >= l3Len+l4Len &&
		(udp && proto == protoUDP || !udp && proto == protoTCP)
}

// finishRCO completes, in software, the partial checksum of a frame's inner
// packet that came with remote checksum offload (decapsulate accepted it),
// for the paths that write whole packets to the TUN.
func finishRCO(frame []byte) {
	if !vxlan.RCO(frame) {
		return
	}
	var vh vxlan.Header
	_ = vh.Decode(frame)
	h := virtioHdr{csumStart: uint16(vh.CsumStart - vxlan.EthernetLen), csumOffset: 16}
	if vh.CsumUDP {
		h.csumOffset = 6
	}
	_ = finishChecksum(&h, frame[vxlan.FrameHeaderLen:])
}

// innerDst returns the destination address and EtherType of an IP packet.
func innerDst(pkt []byte) (netip.Addr, uint16, bool) {
	switch vxlan.EtherTypeFor(pkt) {
	case vxlan.EtherTypeIPv4:
		if len(pkt) < 20 {
			return netip.Addr{}, 0, false
		}
		return netip.AddrFrom4([4]byte(pkt[16:20])), vxlan.EtherTypeIPv4, true
	case vxlan.EtherTypeIPv6:
		if len(pkt) < 40 {
			return netip.Addr{}, 0, false
		}
		return netip.AddrFrom16([16]byte(pkt[24:40])), vxlan.EtherTypeIPv6, true
	}
	return netip.Addr{}, 0, false
}

// innerSrc returns the source address of an IP packet.
func innerSrc(pkt []byte) (netip.Addr, bool) {
	switch vxlan.EtherTypeFor(pkt) {
	case vxlan.EtherTypeIPv4:
		if len(pkt) < 20 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(pkt[12:16])), true
	case vxlan.EtherTypeIPv6:
		if len(pkt) < 40 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16([16]byte(pkt[8:24])), true
	}
	return netip.Addr{}, false
}
