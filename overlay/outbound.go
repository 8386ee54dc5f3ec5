package overlay

// Outbound: TUN → wire, the portable per-packet path.
//
// outbound reads a batch from the TUN; sendBatch encapsulates each packet
// in place (encapsulate: route lookup, path MTU, VXLAN and inner Ethernet
// headers written into the headroom in front of it), groups the frames by
// peer and source-port bucket, and sends each group with one call
// (sendGroups); counters are added once per batch (flushOut). The Linux
// fast path (outbound_linux.go) and the WireGuard divert (divert.go) use
// the same per-packet functions and the same outState.

import (
	"errors"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/encap/vxlan"
)

// outbound is the portable outbound loop: it reads batches from the TUN
// (tun.Device.Read, tun.Device.BatchSize packets at tunOffset) until the
// device is closed. It owns its buffers; nothing is allocated per packet.
func (r *Router) outbound() {
	defer r.wg.Done()
	batch := r.tun.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, batch)
	st := r.newOutState()
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
	st.resetGroups()
	for i := range bufs {
		pkt := bufs[i][tunOffset : tunOffset+sizes[i]]
		p, v := r.encapsulate(t, bufs[i], sizes[i])
		if v == dropTooBig {
			r.tooBig(p, pkt, st)
		}
		if v != pass {
			st.counts.drops[v]++
			continue
		}
		st.add(p, pkt, bufs[i][tunOffset-vxlan.FrameHeaderLen:tunOffset+sizes[i]])
	}
	return r.sendGroups(st.groups, &st.counts)
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
	if !p.fits(size, r.mtu) {
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
// "fragmentation needed" (IPv4) or ICMPv6 "packet too big" (IPv6) written
// back into the TUN, rate-limited (one budget for both families).
func (r *Router) tooBig(p *peerEntry, pkt []byte, st *outState) {
	v6 := len(pkt) > 0 && pkt[0]>>4 == 6
	src := r.cfg.ICMPSource
	if v6 {
		src = r.cfg.ICMPSource6
	}
	if !src.IsValid() || !st.limiter.allow(time.Now()) {
		return
	}
	var n int
	if v6 {
		n = packetTooBig(st.icmp[tunOffset:], src, pkt, p.innerMTU())
	} else {
		n = fragNeeded(st.icmp[tunOffset:], src, pkt, p.innerMTU())
	}
	if n == 0 {
		return
	}
	if _, err := r.tun.Write([][]byte{st.icmp[:tunOffset+n]}, tunOffset); err != nil {
		r.log.Debug("write icmp too big", "err", err, "ipv6", v6)
		return
	}
	if v6 {
		r.stats.ICMPPacketTooBig.Add(1)
	} else {
		r.stats.ICMPFragNeeded.Add(1)
	}
}

// outState is one outbound goroutine's reusable state (the portable loop,
// the fast loop, or one divert filter): nothing in it is allocated per
// packet, and only its goroutine touches it.
type outState struct {
	// groups is reused across batches; each group's bufs keeps its capacity.
	groups  []sendGroup
	icmp    []byte // room for one ICMP error behind tunOffset of headroom
	limiter icmpLimiter
	counts  batchCounts
	buckets uint32 // source-port buckets of the sender (1: one port)
}

// sendGroup is the frames of one batch bound for one peer from one
// source-port bucket.
type sendGroup struct {
	peer   *peerEntry
	bucket uint32
	bufs   [][]byte
}

func (r *Router) newOutState() *outState {
	st := &outState{
		groups:  make([]sendGroup, 0, 8),
		icmp:    make([]byte, tunOffset+icmpBufLen),
		buckets: 1,
	}
	if r.cfg.Sender != nil {
		st.buckets = uint32(r.cfg.Sender.Buckets())
	}
	return st
}

// resetGroups empties the groups for a new batch, keeping their capacity.
func (st *outState) resetGroups() {
	for g := range st.groups {
		st.groups[g].bufs = st.groups[g].bufs[:0]
	}
	st.groups = st.groups[:0]
}

// add counts the inner packet pkt as sent and queues its frame for p, in
// the group of pkt's flow bucket.
func (st *outState) add(p *peerEntry, pkt, frame []byte) {
	st.counts.packets++
	st.counts.bytes += uint64(len(pkt))
	st.groups = addToGroup(st.groups, p, st.bucketOf(pkt), frame)
}

// bucketOf is the source-port bucket of an inner packet's flow.
func (st *outState) bucketOf(pkt []byte) uint32 {
	if st.buckets <= 1 {
		return 0
	}
	return flowHash(pkt) % st.buckets
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
	ip, ok := parseIP(pkt)
	if !ok {
		return h
	}
	src, dst := addrs(pkt, ip.v6)
	mix(src)
	mix(dst)
	h = (h ^ uint32(ip.proto)) * 16777619
	if (ip.proto == protoTCP || ip.proto == protoUDP) && !ip.fragment() && len(pkt) >= ip.l3Len+4 {
		mix(pkt[ip.l3Len : ip.l3Len+4])
	}
	return h
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

// flushOut adds the batch's counters to the router's, once per batch.
func (r *Router) flushOut(st *outState) {
	r.stats.TxPackets.Add(st.counts.packets)
	r.stats.TxBytes.Add(st.counts.bytes)
	r.stats.addDrops(&st.counts)
	st.counts.reset()
}
