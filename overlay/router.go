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
// The files follow a packet:
//
//	router.go            Router, its configuration, Start and Close
//	outbound.go          TUN → wire, per packet (the portable loop)
//	outbound_gso.go      super-packets cut into segments without copying
//	outbound_linux.go    the fast outbound loop: gathered GSO sends, spread reads
//	divert.go            outbound on a node whose WireGuard device reads the TUN
//	inbound.go           wire → TUN: the portable loop and the checks (decapsulate)
//	inbound_coalesce.go  runs of one TCP or UDP flow written as one GSO packet
//	inbound_linux.go     the fast inbound loop: recvmmsg, UDP GRO, writev
//	tun_linux.go         the TUN file descriptor: raw reads (writes: offload.Writer)
//	packet.go, offload.go  inner headers, RCO headers (the virtio-net header,
//	                     super-packets and checksums are encap/offload's)
//	table.go, stats.go, pmtu.go, policy.go, host_linux.go
//
// The portable loops run everywhere. On Linux, with weftd's real TUN device
// (virtio-net headers, TSO/USO) and its vxlan.Sender, the fast loops take
// over: TCP and UDP super-packets are sent as VXLAN segments gathered from
// the TUN read buffer without being cut apart, and received segments of one
// TCP flow (datagrams of one UDP flow, with USO) are written to the TUN as
// one super-packet without being copied together.
package overlay

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

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
	// PodCIDRs are this node's own pod CIDRs (the gateway address is
	// inside): inbound, an inner destination outside them is dropped
	// (drop_not_local), so a forged frame cannot reach the node's host
	// addresses or anything it routes. Empty drops every inbound packet.
	PodCIDRs []netip.Prefix
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
	// ICMPSource6 is the address ICMPv6 "packet too big" messages come
	// from: the node's IPv6 gateway address. Invalid disables them.
	ICMPSource6 netip.Addr
	// Sender sends VXLAN frames, choosing the outer source port by inner
	// flow; nil sends through the bind (one source port).
	Sender FrameSender
	Logger *slog.Logger
	// VXLANSocket, when set, is an open UDP socket on the VXLAN port to
	// receive on instead of binding it: the one a previous weftd passed on
	// (package overlay/handoff). It stays the caller's to close.
	VXLANSocket *os.File
}

// FrameSender sends VXLAN frames to a peer from the socket of a flow's
// bucket; vxlan.Sender is the one weftd uses.
//
// Send sends each of frames (VXLAN header onward: the kernel adds the outer
// IP and UDP headers) as one datagram to dst, from the source port of
// bucket flow (the router passes a flow hash modulo Buckets()). A batch
// holds one outbound round's frames for one peer and bucket: at most the
// TUN's batch size (tun.Device.BatchSize, or the WireGuard device's batch
// when diverting) and at most 64 on the fast path; each frame is at most
// 65,507 bytes. The frames have no headroom in front. The frames are slices of the router's
// buffers: the router owns them and reuses them as soon as Send returns, so
// Send must not keep them. Send is called by one goroutine at a time (each
// outbound loop or divert filter has its own batch, and the router calls
// Send from one of them at a time per Sender); it returns an error
// wrapping net.ErrClosed once the sender is closed, which stops the loop,
// and any other error counts the batch's frames as send drops.
//
// Buckets is how many source ports the sender has (at least 1); it is read
// once per loop.
//
// The router never closes the FrameSender: its creator does, after the
// router's Close.
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
	// pods is cfg.PodCIDRs, for the inbound destination check.
	pods prefixSet
	// mtu is the TUN's MTU, read by Start: inbound super-packets are cut
	// into segments that fit it (tunnelSuper). Zero takes none.
	mtu int

	// receiver is the VXLAN socket of the inbound fast path
	// (fastpath_linux.go), nil when the bind receives instead.
	receiver io.Closer

	// Hand-off (handoff_linux.go): readLoops counts the loops reading
	// the TUN or the VXLAN socket, parked those waiting in park; resume
	// is closed by Resume, nil unless paused.
	readLoops atomic.Int32
	parked    atomic.Int32
	pauseMu   sync.Mutex
	resume    chan struct{}

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
	local := make([]netip.Prefix, len(cfg.PodCIDRs))
	for i, c := range cfg.PodCIDRs {
		local[i] = c.Masked()
	}
	cfg.PodCIDRs = local
	r := &Router{cfg: cfg, tun: dev, bind: bind, log: log, pods: newPrefixSet(local),
		pmtus: make(map[netip.Addr]*pathMTU), pmtuKick: make(chan struct{}, 1), done: make(chan struct{})}
	r.table.Store(newTable(nil))
	return r
}

// Start opens the UDP port and starts the packet loops. With a real TUN
// device carrying virtio-net headers and a vxlan.Sender, the fast loops of
// fastpath_linux.go run and receive on their own socket; otherwise the
// bind is opened on port.
func (r *Router) Start(port uint16) error {
	if r.tun != nil {
		if mtu, err := r.tun.MTU(); err == nil {
			r.mtu = mtu
		}
	}
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
		if p.Standby {
			if p.Transport == TransportWireGuard && r.cfg.WireGuard != nil {
				w := p.WireGuard
				w.Standby = true
				wgPeers = append(wgPeers, w)
			}
			continue
		}
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
	// A new peer's path MTU is unknown (no limit) until the next refresh:
	// ask for it now, so that its first packets are checked against it.
	r.kickPathMTU()
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

// closing reports whether Close has begun.
func (r *Router) closing() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}
