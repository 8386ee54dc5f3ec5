package overlay

// Outbound on a node with a WireGuard device.
//
// The WireGuard device reads the TUN itself (encap/wireguard, reader.go),
// as standalone wireguard-go does: into its own buffers, at its own
// headroom, in its own batches, so a packet for a WireGuard peer is
// encrypted where it was read, with no copy and no hand-off between
// goroutines. Before the device sees a batch, the router's divert
// classifies each packet with the outbound loop's own per-packet functions
// and takes out of the batch everything that is not for a WireGuard peer:
//
//   - packets for VXLAN peers (policy wireguard-across-sites) are copied
//     into the router's buffers, which have the headroom for the VXLAN
//     header the device's buffers lack, and sent grouped by peer and flow
//     bucket, one send per group;
//   - packets with no route or not IP are dropped, packets too big for the
//     path are answered with ICMP "fragmentation needed" and dropped; every
//     drop is counted.
//
// The router's own outbound loop does not run then: the TUN has exactly one
// reader. Packets for WireGuard peers count as sent when the device gets
// them; what the device does with them after is wireguard-go's business.

import (
	"net/netip"

	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/encap/wireguard"
)

// frameSize is the packet room a VXLAN copy buffer starts with; it grows
// (once) for a larger packet.
const frameSize = 2048

// Divert returns the filter the WireGuard device applies to every batch it
// reads from the TUN (see wireguard.Divert and wireguard.Device.SetDivert).
// Each call makes a new filter with its own buffers; a filter must be
// called by one goroutine at a time.
func (r *Router) Divert() wireguard.Divert {
	d := &diverter{r: r, st: r.newOutState()}
	return d.divert
}

// diverter is the state of one filter: the outbound state every outbound
// goroutine has, and the copy buffers for VXLAN packets. Its buffers are
// allocated on first use and reused for every batch after, so the
// per-packet work allocates nothing.
type diverter struct {
	r      *Router
	st     *outState
	frames [][]byte // VXLAN copies: packet at [tunOffset:], header in front
}

func (d *diverter) divert(bufs [][]byte, sizes []int, offset int) {
	r, st := d.r, d.st
	t := r.table.Load()
	rt := routes{t: t, devMTU: r.mtu}
	st.resetGroups()
	k := 0 // next free VXLAN copy buffer
	for i := range bufs {
		size := sizes[i]
		if size <= 0 {
			continue
		}
		pkt := bufs[i][offset : offset+size]
		p, v := rt.route(pkt)
		if v == pass && p.Transport == TransportWireGuard {
			st.counts.packets++
			st.counts.bytes += uint64(size)
			continue // stays in the batch for the device
		}
		sizes[i] = 0
		var buf []byte
		if v == pass {
			buf = d.frame(k, size)
			copy(buf[tunOffset:], pkt)
			p, v = r.encapsulate(t, buf, size)
		}
		if v == dropTooBig {
			r.tooBig(p, pkt, st)
		}
		if v != pass {
			st.counts.drops[v]++
			continue
		}
		k++
		st.add(p, pkt, buf[tunOffset-vxlan.FrameHeaderLen:tunOffset+size])
	}
	r.sendGroups(st.groups, &st.counts) // a closed socket: counted, the device stops on its own
	r.flushOut(st)
}

// frame returns VXLAN copy buffer k, with room for a packet of size bytes
// behind tunOffset bytes of headroom.
func (d *diverter) frame(k, size int) []byte {
	if k == len(d.frames) {
		d.frames = append(d.frames, nil)
	}
	if len(d.frames[k]) < tunOffset+size {
		d.frames[k] = make([]byte, tunOffset+max(size, frameSize))
	}
	return d.frames[k]
}

// routes looks up the peers of one batch's packets in one table. A batch
// is mostly one flow, so the last lookup answers the next.
type routes struct {
	t      *table
	devMTU int        // the TUN's MTU (Router.mtu)
	dst    netip.Addr // last destination looked up; invalid at first
	peer   *peerEntry // its peer
}

// route finds the peer for an outbound packet and checks that it fits the
// path: encapsulate's decision, for a packet that has no headroom.
func (rt *routes) route(pkt []byte) (*peerEntry, verdict) {
	dst, _, ok := innerDst(pkt)
	if !ok {
		return nil, dropNotIP
	}
	if dst != rt.dst {
		rt.dst, rt.peer = dst, rt.t.lookup(dst)
	}
	p := rt.peer
	if p == nil {
		return nil, dropNoRoute
	}
	if !p.fits(len(pkt), rt.devMTU) {
		return p, dropTooBig
	}
	return p, pass
}
