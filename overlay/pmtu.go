package overlay

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/wireguard"
)

// Path MTU.
//
// The kernel learns the path MTU toward each peer's underlay address from
// the ICMP "fragmentation needed" messages routers send back for our UDP
// datagrams (they carry DF). Once it knows, it refuses to send larger UDP
// datagrams, so a pod packet that no longer fits after encapsulation would
// be lost again and again, and TCP would hang. The router therefore keeps
// each peer's path MTU (refreshed from the kernel every pmtuRefresh, and at
// once after a failed send), checks each outbound packet against it, and
// answers one that does not fit with an ICMP "fragmentation needed" to the
// pod that sent it, carrying the inner MTU that does fit. The pod's TCP then
// lowers its segment size, as it would on a plain routed path.

const (
	pmtuRefresh  = 2 * time.Second
	outerIPv4UDP = 20 + 8 // the outer headers the kernel adds
	outerIPv6UDP = 40 + 8 // the same over an IPv6 underlay
	// icmpPerSecond bounds the ICMP errors the router generates.
	icmpPerSecond = 100
)

// pathMTU is one peer's path MTU; zero means unknown (no limit below the
// device MTU). Entries outlive table snapshots: they are keyed by underlay
// address in Router.pmtus.
type pathMTU struct{ v atomic.Int32 }

// fits reports whether an inner packet of size bytes fits the path to p.
// devMTU is the TUN's MTU (0: unknown), which bounds WireGuard's padding.
func (p *peerEntry) fits(size, devMTU int) bool {
	if p.pmtu == nil {
		return true
	}
	m := int(p.pmtu.v.Load())
	if m == 0 {
		return true
	}
	if p.Transport == TransportWireGuard {
		return wgPadded(size, devMTU)+p.wgOverhead() <= m
	}
	return size+p.outerUDP()+22 <= m // + VXLAN header and inner Ethernet
}

// wgPadded is the plaintext length WireGuard sends for an inner packet of
// size bytes: padded to a multiple of 16, but never past the device MTU
// (the device pads up to the MTU at most: calculatePaddingSize in
// encap/wireguard/internal/device), so a packet of the MTU's size goes
// unpadded. That matters where the pod MTU is no multiple of 16, as
// over an IPv6 underlay (1500 − 80 = 1420): without the cap, full-size
// packets would be refused on a path that carries them.
func wgPadded(size, devMTU int) int {
	padded := (size + 15) &^ 15
	if devMTU > 0 && padded > devMTU {
		padded = max(devMTU, size)
	}
	return padded
}

// innerMTU is the largest inner packet that fits the path to p, when some
// packet the TUN can hold does not (the answer to one that did not fit):
// for WireGuard a multiple of 16, as padding then applies in full.
func (p *peerEntry) innerMTU() int {
	m := int(p.pmtu.v.Load())
	if p.Transport == TransportWireGuard {
		return (m - p.wgOverhead()) &^ 15
	}
	return m - p.outerUDP() - 22
}

// outerUDP is the outer IP and UDP headers toward p's underlay address.
func (p *peerEntry) outerUDP() int {
	if p.Underlay.Addr().Is6() && !p.Underlay.Addr().Is4In6() {
		return outerIPv6UDP
	}
	return outerIPv4UDP
}

// wgOverhead is WireGuard's overhead toward p's underlay address.
func (p *peerEntry) wgOverhead() int {
	if p.outerUDP() == outerIPv6UDP {
		return wireguard.OverheadIPv6
	}
	return wireguard.OverheadIPv4
}

// refreshPathMTUs asks the kernel for the path MTU toward every peer.
func (r *Router) refreshPathMTUs() {
	if r.cfg.PathMTU == nil {
		return
	}
	for _, p := range r.table.Load().peers {
		if !p.Underlay.Addr().IsValid() {
			continue // reached only where its packets come from
		}
		m, err := r.cfg.PathMTU(p.Underlay.Addr())
		if err != nil {
			continue
		}
		if old := int(p.pmtu.v.Swap(int32(m))); old != m {
			r.log.Info("path MTU to peer changed", "peer", p.Name, "underlay", p.Underlay.Addr(), "mtu", m, "was", old)
		}
	}
}

func (r *Router) pmtuLoop() {
	defer r.wg.Done()
	t := time.NewTicker(pmtuRefresh)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-t.C:
		case <-r.pmtuKick:
		}
		r.refreshPathMTUs()
	}
}

// kickPathMTU asks for a refresh now, without blocking the packet loop.
func (r *Router) kickPathMTU() {
	select {
	case r.pmtuKick <- struct{}{}:
	default:
	}
}

// icmpLimiter is a token bucket refilled once per second; only the
// outbound goroutine uses it.
type icmpLimiter struct {
	tokens int
	last   time.Time
}

func (l *icmpLimiter) allow(now time.Time) bool {
	if now.Sub(l.last) >= time.Second {
		l.tokens, l.last = icmpPerSecond, now
	}
	if l.tokens == 0 {
		return false
	}
	l.tokens--
	return true
}

// fragNeeded writes into b an ICMPv4 "destination unreachable, fragmentation
// needed" (type 3, code 4, RFC 1191) from src about the IPv4 packet pkt,
// carrying mtu, and returns its length; 0 if pkt deserves no answer (not
// IPv4, DF clear, or itself an ICMP error). b must hold 20+8+28+40 bytes.
func fragNeeded(b []byte, src netip.Addr, pkt []byte, mtu int) int {
	ip, ok := parseIP(pkt)
	if !ok || ip.v6 || ip.frag&ip4FlagDF == 0 {
		return 0
	}
	ihl := ip.l3Len
	if ip.proto == protoICMP && len(pkt) > ihl && pkt[ihl] != 0 && pkt[ihl] != 8 {
		return 0 // never answer an ICMP error with one
	}
	quote := min(len(pkt), ihl+8)
	n := ipv4MinHeaderLen + 8 + quote
	h := b[:ipv4MinHeaderLen]
	clear(h)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[ip4TotalLen:], uint16(n))
	h[8] = 64 // TTL
	h[ip4Proto] = protoICMP
	s := src.As4()
	copy(h[ip4Src:], s[:])
	copy(h[ip4Dst:ip4Dst+4], pkt[ip4Src:ip4Src+4]) // back to the sender
	offload.PutIPv4Checksum(h)
	icmp := b[ipv4MinHeaderLen:n]
	clear(icmp[:8])
	icmp[0], icmp[1] = 3, 4
	binary.BigEndian.PutUint16(icmp[6:8], uint16(mtu))
	copy(icmp[8:], pkt[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], ^offload.Checksum(icmp, 0))
	return n
}

const (
	protoICMPv6 = 58
	// ipv6MinMTU is the MTU every IPv6 link has (RFC 8200 section 5): an
	// ICMPv6 error quotes as much of its packet as keeps it within that.
	ipv6MinMTU = 1280
	// icmpBufLen is the room tooBig needs for the larger of the two
	// errors: an ICMPv6 "packet too big" of ipv6MinMTU bytes.
	icmpBufLen = ipv6MinMTU
)

// packetTooBig writes into b an ICMPv6 "packet too big" (type 2, code 0,
// RFC 4443 section 3.2) from src about the IPv6 packet pkt, carrying mtu,
// and returns its length; 0 if pkt deserves no answer (not IPv6, from the
// unspecified or a multicast address, or itself an ICMPv6 error). The
// message quotes as much of pkt as fits in ipv6MinMTU bytes; b must hold
// that many.
//
//	 0 ver|class|flow  4 payload length  6 next header 58  7 hop limit
//	 8 source (src)   24 destination (pkt's source)
//	40 type 2  41 code 0  42 checksum  44 MTU (32 bits)  48 quote
func packetTooBig(b []byte, src netip.Addr, pkt []byte, mtu int) int {
	ip, ok := parseIP(pkt)
	if !ok || !ip.v6 || !src.Is6() {
		return 0
	}
	from := netip.AddrFrom16([16]byte(pkt[ip6Src:]))
	if from.IsUnspecified() || from.IsMulticast() {
		return 0
	}
	if ip.proto == protoICMPv6 && len(pkt) > ip.l3Len && pkt[ip.l3Len] < 128 {
		return 0 // never answer an ICMPv6 error (types 0..127) with one
	}
	quote := min(len(pkt), ipv6MinMTU-ipv6HeaderLen-8)
	n := ipv6HeaderLen + 8 + quote
	h := b[:ipv6HeaderLen]
	clear(h)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[ip6PayloadLen:], uint16(8+quote))
	h[ip6NextHdr] = protoICMPv6
	h[7] = 64 // hop limit
	s := src.As16()
	copy(h[ip6Src:], s[:])
	copy(h[ip6Dst:ip6Dst+16], pkt[ip6Src:ip6Src+16]) // back to the sender
	icmp := b[ipv6HeaderLen:n]
	clear(icmp[:8])
	icmp[0] = 2
	binary.BigEndian.PutUint32(icmp[4:8], uint32(mtu))
	copy(icmp[8:], pkt[:quote])
	src6, dst6 := addrs(h, true)
	binary.BigEndian.PutUint16(icmp[2:4], ^offload.Checksum(icmp, offload.PseudoSum(src6, dst6, protoICMPv6, len(icmp))))
	return n
}
