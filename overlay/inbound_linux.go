//go:build linux

package overlay

// Inbound (wire → TUN), the Linux fast path: inboundFast receives on the
// VXLAN port with its own socket (vxlan.Receiver: recvmmsg and UDP GRO),
// validates every datagram of a GRO buffer in place exactly as the portable
// path does (decapsulateGRO, inbound.go), and hands the survivors to the
// coalescer (inbound_coalesce.go), whose writes go to the TUN file
// descriptor with writev (offload.Writer): one GSO packet per run of one TCP
// flow (and, with USO, of one UDP flow), everything else one packet per
// write.

import (
	"net/netip"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// inboundFast is the fast inbound loop; it owns its buffers and runs until
// the socket or the TUN is closed. uso says the TUN takes UDP GSO packets:
// runs of UDP datagrams are then coalesced too.
func (r *Router) inboundFast(rcv *vxlan.Receiver, w *offload.Writer, uso bool) {
	defer r.wg.Done()
	bufs := make([][]byte, inBatch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, inBatch)
	segs := make([]int, inBatch)
	from := make([]netip.Addr, inBatch)
	var c coalescer
	c.UDP = uso
	var counts batchCounts
	for {
		n, err := rcv.Read(bufs, sizes, segs, from)
		if err != nil {
			if r.park(err) {
				continue
			}
			if r.closing() || isClosed(err) {
				return
			}
			r.log.Debug("udp receive failed", "err", err)
			continue
		}
		t := r.table.Load()
		counts.reset()
		c.Reset()
		for i := 0; i < n; i++ {
			r.decapsulateGRO(t, bufs[i][:sizes[i]], segs[i], from[i], &c, &counts)
		}
		c.Flush()
		counts.drops[dropBadOffload] += uint64(c.Dropped)
		counts.packets -= uint64(c.Dropped)
		for _, wr := range c.Writes {
			if err := w.Write(wr.Head, c.Payloads[wr.Lo:wr.Hi]); err != nil {
				if r.closing() {
					r.flushIn(&counts)
					return
				}
				if isClosed(err) {
					r.log.Warn("the TUN device is gone: VXLAN receive stops", "err", err)
					r.flushIn(&counts)
					return
				}
				counts.drops[dropTunWrite] += uint64(wr.Segs)
				counts.packets -= uint64(wr.Segs)
				r.log.Debug("tun write failed", "err", err)
			}
		}
		r.flushIn(&counts)
	}
}
