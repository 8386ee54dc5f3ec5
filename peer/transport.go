package peer

// Gossip across NAT. memberlist knows one address per node; weft's nodes
// have up to two (Record.Underlay, internal, and Record.Public) and some
// have no address another site can reach at all. transport wraps
// memberlist's NetTransport and picks, per packet and per connection, the
// address that works from here:
//
//   - a node of our own site: its internal address (Record.Underlay,
//     which weftd binds gossip to as well);
//   - a node of another site with a public address: that address, which
//     is what it advertises;
//   - a node of another site without one: the address its gossip packets
//     were last seen coming from (the NAT mapping it keeps open), if that
//     is fresh; if not, a node behind NAT (CapBehindNAT) nowhere (its
//     advertised address is private to its site), a routed one at its
//     advertised address;
//   - otherwise, or for a node we have no record of yet (seeds): the
//     address memberlist has, which is what the node advertises (its
//     public address if it has one, else its internal one).
//
// To learn where a node behind NAT is seen, every packet to a peer that
// takes it (CapGossipTag) starts with a tag naming the sender; the
// receiver notes (name, source address) and hands memberlist the rest. A
// node without a public address also sends a bare tag to every peer of
// another site that has one, every Config.NATKeepalive: that keeps its
// NAT's mappings open (a conntrack UDP mapping lives 30 s unreplied) and
// tells the peer where to send. Peers of another site without a public
// address cannot be reached from here; memberlist's indirect probes
// (through the nodes that can reach both) keep them alive in our view,
// and their gossip reaches us through others.
//
// Tags are not authenticated (memberlist's encryption covers only what
// follows): a forged tag can make a peer send gossip for a node behind NAT
// to the forger, which can read nothing of it and only delays that node's
// news until its next keepalive corrects the address. Only nodes without
// a public address are ever reached at a learned address.
//
// A node with an underlay address in each family (Record.AltUnderlay,
// Config.AltBindAddr) binds gossip on both, on the same port, and
// advertises its first. memberlist knows a node at one address; when that
// one is of a family this node has no address in, the resolver uses the
// node's address of the other family, and when the node has none either
// there is no path (memberlist's indirect probes through the nodes that
// have both families keep it alive in our view, and their gossip carries
// its news). Packets leave by the socket of the destination's family.
//
// Streams (push/pull, joins) go to the same resolved address. A node
// behind NAT cannot be dialled; its own push/pulls, which it dials, carry
// state both ways.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// tagMsg starts a tagged gossip packet: the byte, the sender's name length
// (1..MaxNameLen), the name, then memberlist's packet (empty for a
// keepalive). memberlist's own packets start with a message type below 32
// or its label marker (244), so the first byte tells them apart.
const tagMsg = 0xf7

// seenTTL is how long a learned address is used: several keepalive
// intervals, and well under the 120 s a conntrack mapping with replies
// lives, after which the node's next packet sets it again.
const seenTTL = 2 * time.Minute

// transport is the memberlist transport weft runs with (see above).
type transport struct {
	*memberlist.NetTransport
	// alt is the gossip socket pair of the other family (Record.
	// AltUnderlay), nil when the node has one family.
	alt     *memberlist.NetTransport
	streams chan net.Conn // both transports' inbound streams, when alt is set
	self    Record
	packets chan *memberlist.Packet
	stop    chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup // the stream forwarders

	// peers is the latest directory (Membership.run stores it): the
	// records the resolver and the tagger read, by name.
	peers atomic.Pointer[map[string]Peer]

	seenMu sync.Mutex
	seen   map[string]seenAddr

	nTagged, nBadTag, nKeepalive, nNoPath atomic.Uint64

	// local is the bound gossip address; behindNAT is set once a public
	// peer saw this node's keepalive come from elsewhere (seenMsg).
	local     netip.AddrPort
	behindNAT atomic.Bool
	onNAT     func() // called once when behindNAT is first set
}

type seenAddr struct {
	addr netip.AddrPort
	at   time.Time
}

// newTransport wraps nt for self; local is the bound gossip address and
// onNAT is called (once) when a public peer says this node is behind NAT.
func newTransport(nt, alt *memberlist.NetTransport, self Record, local netip.AddrPort, onNAT func()) *transport {
	t := &transport{
		NetTransport: nt,
		alt:          alt,
		self:         self,
		local:        local,
		onNAT:        onNAT,
		packets:      make(chan *memberlist.Packet),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
		seen:         make(map[string]seenAddr),
	}
	empty := map[string]Peer{}
	t.peers.Store(&empty)
	go t.receive()
	if alt != nil {
		t.streams = make(chan net.Conn)
		t.wg.Add(2)
		go t.forwardStreams(nt.StreamCh())
		go t.forwardStreams(alt.StreamCh())
	}
	return t
}

// forwardStreams hands memberlist the streams of one of two transports.
func (t *transport) forwardStreams(in <-chan net.Conn) {
	defer t.wg.Done()
	for {
		select {
		case c := <-in:
			select {
			case t.streams <- c:
			case <-t.stop:
				c.Close()
				return
			}
		case <-t.stop:
			return
		}
	}
}

// StreamCh delivers inbound streams of every bound family.
func (t *transport) StreamCh() <-chan net.Conn {
	if t.alt == nil {
		return t.NetTransport.StreamCh()
	}
	return t.streams
}

// writeTo sends b to addr ("host:port") from the socket of addr's family.
func (t *transport) writeTo(b []byte, addr string) (time.Time, error) {
	if t.alt != nil {
		if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Unmap().Is4() != t.local.Addr().Is4() {
			return t.alt.WriteTo(b, addr)
		}
	}
	return t.NetTransport.WriteTo(b, addr)
}

// WriteTo sends b to addr (memberlist's calls without a node name).
func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) { return t.writeTo(b, addr) }

// hasFamily reports whether this node has an underlay address of a's
// family.
func (t *transport) hasFamily(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() == t.local.Addr().Is4() {
		return true
	}
	return t.self.AltUnderlay.IsValid() && t.self.AltUnderlay.Is4() == a.Is4()
}

// inFamily rewrites the resolved address addr of the node with record r
// into one of a family this node has: addr itself, or r's underlay
// address of the other family on the same port; "" when there is none.
func (t *transport) inFamily(addr string, r Record) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || t.hasFamily(ap.Addr()) {
		return addr // a name, or already fine
	}
	for _, a := range []netip.Addr{r.Underlay.Addr(), r.AltUnderlay} {
		if a.IsValid() && t.hasFamily(a) {
			return netip.AddrPortFrom(a.Unmap(), ap.Port()).String()
		}
	}
	return ""
}

// setPeers replaces the directory the resolver reads.
func (t *transport) setPeers(all []Peer) {
	m := make(map[string]Peer, len(all))
	for _, p := range all {
		m[p.Record.Name] = p
	}
	t.peers.Store(&m)
}

// receive strips tags off inbound packets, noting where their senders are
// seen, and passes memberlist the rest.
func (t *transport) receive() {
	defer close(t.done)
	in := t.NetTransport.PacketCh()
	var in2 <-chan *memberlist.Packet // nil (never ready) without alt
	if t.alt != nil {
		in2 = t.alt.PacketCh()
	}
	for {
		var p *memberlist.Packet
		select {
		case p = <-in:
		case p = <-in2:
		case <-t.stop:
			return
		}
		if len(p.Buf) > 0 && p.Buf[0] == seenMsg {
			t.gotSeen(p)
			continue
		}
		if len(p.Buf) > 0 && p.Buf[0] == tagMsg {
			name, rest, err := parseTag(p.Buf)
			if err != nil {
				t.nBadTag.Add(1)
				continue
			}
			t.note(name, p.From, p.Timestamp)
			if len(rest) == 0 {
				t.tellSeen(p.From) // a keepalive: say where it came from
				continue
			}
			p.Buf = rest
		}
		select {
		case t.packets <- p:
		case <-t.stop:
			return
		}
	}
}

// seenMsg answers a keepalive: the byte, then the address the keepalive
// came from (family 4 or 6, 4 or 16 bytes, port). A node that hears back
// an address other than the one it sends from is behind NAT
// (Membership.BehindNAT): its internal address is no use to other sites.
const seenMsg = 0xf8

// appendSeen appends the seenMsg for a to b.
func appendSeen(b []byte, a netip.AddrPort) []byte {
	b = append(b, seenMsg)
	if a.Addr().Is4() {
		v := a.Addr().As4()
		b = append(append(b, 4), v[:]...)
	} else {
		v := a.Addr().As16()
		b = append(append(b, 6), v[:]...)
	}
	return append(b, byte(a.Port()>>8), byte(a.Port()))
}

// parseSeen decodes a seenMsg.
func parseSeen(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 || b[0] != seenMsg {
		return netip.AddrPort{}, errors.New("gossip seen: short packet")
	}
	var a netip.Addr
	switch {
	case b[1] == 4 && len(b) == 2+4+2:
		a = netip.AddrFrom4([4]byte(b[2:6]))
	case b[1] == 6 && len(b) == 2+16+2:
		a = netip.AddrFrom16([16]byte(b[2:18]))
	default:
		return netip.AddrPort{}, fmt.Errorf("gossip seen: family %d in %d bytes", b[1], len(b))
	}
	n := len(b)
	return netip.AddrPortFrom(a, uint16(b[n-2])<<8|uint16(b[n-1])), nil
}

// tellSeen answers a keepalive from from with where it came from.
func (t *transport) tellSeen(from net.Addr) {
	if ap, ok := udpAddrPort(from); ok {
		t.writeTo(appendSeen(nil, ap), ap.String())
	}
}

// gotSeen takes a seenMsg, only from a known peer's public address (the
// ones this node sends keepalives to): an address other than ours means
// a NAT between us and the rest.
func (t *transport) gotSeen(p *memberlist.Packet) {
	ap, err := parseSeen(p.Buf)
	if err != nil {
		t.nBadTag.Add(1)
		return
	}
	src, ok := udpAddrPort(p.From)
	if !ok {
		return
	}
	known := false
	for _, q := range *t.peers.Load() {
		if q.Record.Public.IsValid() && q.Record.Public == src.Addr() {
			known = true
			break
		}
	}
	if !known {
		t.nBadTag.Add(1)
		return
	}
	if ap != t.local && !t.behindNAT.Swap(true) && t.onNAT != nil {
		t.onNAT()
	}
}

// parseTag splits a tagged packet into the sender's name and the rest.
func parseTag(b []byte) (string, []byte, error) {
	if len(b) < 2 || b[0] != tagMsg {
		return "", nil, fmt.Errorf("gossip tag: short packet")
	}
	n := int(b[1])
	if n == 0 || n > MaxNameLen || len(b) < 2+n {
		return "", nil, fmt.Errorf("gossip tag: name length %d in %d bytes", n, len(b))
	}
	name := string(b[2 : 2+n])
	if err := checkLabel("name", name, MaxNameLen); err != nil {
		return "", nil, fmt.Errorf("gossip tag: %w", err)
	}
	return name, b[2+n:], nil
}

// appendTag appends the tag of name to b.
func appendTag(b []byte, name string) []byte {
	return append(append(append(b, tagMsg), byte(len(name))), name...)
}

// udpAddrPort is a packet's source as an AddrPort.
func udpAddrPort(from net.Addr) (netip.AddrPort, bool) {
	ua, ok := from.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	a, ok := netip.AddrFromSlice(ua.IP)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(ua.Port)), true
}

func (t *transport) note(name string, from net.Addr, at time.Time) {
	ap, ok := udpAddrPort(from)
	if name == t.self.Name || !ok {
		return
	}
	t.nTagged.Add(1)
	t.seenMu.Lock()
	t.seen[name] = seenAddr{addr: ap, at: at}
	t.seenMu.Unlock()
}

// Seen returns where node name's gossip was last seen coming from, if
// within seenTTL.
func (t *transport) Seen(name string) (netip.AddrPort, bool) {
	t.seenMu.Lock()
	s, ok := t.seen[name]
	t.seenMu.Unlock()
	if !ok || time.Since(s.at) > seenTTL {
		return netip.AddrPort{}, false
	}
	return s.addr, true
}

// resolve returns the address to reach a at (see the file's note) and
// whether the node takes tagged packets.
func (t *transport) resolve(a memberlist.Address) (string, bool) {
	if a.Name == "" {
		return a.Addr, false
	}
	p, ok := (*t.peers.Load())[a.Name]
	if !ok {
		return a.Addr, false
	}
	addr, tagged := t.resolveSite(a, p.Record)
	if addr == "" {
		return "", tagged
	}
	return t.inFamily(addr, p.Record), tagged
}

// resolveSite is resolve's choice by site and NAT, before the family.
func (t *transport) resolveSite(a memberlist.Address, r Record) (string, bool) {
	tagged := r.Caps&CapGossipTag != 0
	switch {
	case r.Site == t.self.Site:
		// memberlist has the advertised address: the public one, if the
		// node has one; inside the site its internal one is the bound
		// one, which weftd makes the underlay address.
		host, port, err := net.SplitHostPort(a.Addr)
		if err == nil && r.Public.IsValid() && host == r.Public.String() {
			return net.JoinHostPort(r.Underlay.Addr().String(), port), tagged
		}
	case !r.Public.IsValid():
		if s, ok := t.Seen(a.Name); ok {
			return s.String(), tagged
		}
		if r.Caps&CapBehindNAT != 0 {
			// Its advertised address is private to its site, and may
			// be another node's in ours: send nothing rather than
			// misdeliver.
			return "", tagged
		}
		// A routed node: its address works from everywhere.
	}
	return a.Addr, tagged
}

// errNoPath is returned for a node of another site without a public
// address that has not been seen yet: memberlist logs it and carries on
// (its indirect probes and other nodes' gossip reach the node).
var errNoPath = errors.New("no path: node behind NAT in another site, not seen yet")

// WriteToAddress sends b to a at the resolved address, tagged if the node
// takes tags.
func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	addr, tagged := t.resolve(a)
	if addr == "" {
		t.nNoPath.Add(1)
		return time.Time{}, fmt.Errorf("send to %s: %w", a.Name, errNoPath)
	}
	if tagged {
		b = append(appendTag(make([]byte, 0, 2+len(t.self.Name)+len(b)), t.self.Name), b...)
	}
	return t.writeTo(b, addr)
}

// DialAddressTimeout dials a at the resolved address.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	addr, _ := t.resolve(a)
	if addr == "" {
		t.nNoPath.Add(1)
		return nil, fmt.Errorf("dial %s: %w", a.Name, errNoPath)
	}
	return t.NetTransport.DialTimeout(addr, timeout)
}

// PacketCh delivers inbound packets, tags stripped.
func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// keepalive sends a bare tag to every live peer of another site that has
// a public address and takes tags: a node without a public address calls
// it every Config.NATKeepalive (Membership.natLoop).
func (t *transport) keepalive() {
	tag := appendTag(nil, t.self.Name)
	for _, p := range *t.peers.Load() {
		r := p.Record
		if p.State != StateAlive || r.Site == t.self.Site || !r.Public.IsValid() || r.Caps&CapGossipTag == 0 {
			continue
		}
		port := int(p.gossipAddr.Port())
		if port == 0 {
			continue
		}
		if !t.hasFamily(r.Public) {
			continue
		}
		if _, err := t.writeTo(tag, net.JoinHostPort(r.Public.String(), strconv.Itoa(port))); err == nil {
			t.nKeepalive.Add(1)
		}
	}
}

// Shutdown stops the receive loop, then memberlist's transport.
func (t *transport) Shutdown() error {
	err := t.NetTransport.Shutdown()
	if t.alt != nil {
		err = errors.Join(err, t.alt.Shutdown())
	}
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	<-t.done
	t.wg.Wait()
	return err
}
