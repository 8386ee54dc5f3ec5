package peer

// Design note. memberlist calls its delegates while holding its own node
// lock, so the callbacks here only copy what they need (name, state,
// metadata bytes) into a pending map and kick a one-slot channel. A single
// goroutine (run) owns the directory: it decodes and validates records,
// counts and logs the bad ones, and publishes whole snapshots. Consumers
// never see per-event mutations, only the latest complete picture.
//
// The directory is built from the copies the callbacks take rather than
// from memberlist.Members(): Members returns pointers into memberlist's
// state, which memberlist keeps mutating under its private lock, so reading
// Meta from them later is a data race. memberlist also never fills in
// Node.State (its real state lives in a private wrapper), so the callback
// itself is the state: NotifyJoin/NotifyUpdate mean alive, NotifyLeave
// means gone. Whether gone is "left" or "dead" memberlist does not say;
// Leave therefore gossips a small leave intent first (as Serf does), and
// a gone peer with an intent newer than its last alive event is "left".
//
// Files: membership.go (Membership, Join, the record we gossip, leave and
// close), config.go (Config and its defaults), seeds.go (joining and
// rejoining seeds, reconnecting to failed peers), delegate.go (memberlist's
// callbacks and the leave intent), directory.go (run: the directory and the
// snapshots it publishes), keyring.go (gossip encryption), record.go (the
// node record codec), admit.go (admission before the datapath).

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrClosed is returned by Leave and UpdateSelf after Close.
var ErrClosed = errors.New("membership closed")

// Membership is this node's seat in the gossip cluster. Create it with
// Join; stop it with Leave (optional, graceful) and Close.
type Membership struct {
	log     *slog.Logger
	name    string
	seeds   []string
	rejoin  time.Duration
	recon   time.Duration
	retain  time.Duration
	gossip  time.Duration // memberlist's gossip interval, paces Leave
	ml      *memberlist.Memberlist
	tr      *transport
	natKick chan struct{}                    // capacity 1; run → natLoop, when the live set changes
	bcast   *memberlist.TransmitLimitedQueue // leave intents we send or relay
	updates chan []Peer                      // capacity 1; run is the only sender
	kick    chan struct{}                    // capacity 1; callbacks → run
	stop    chan struct{}
	wg      sync.WaitGroup

	selfMu   sync.Mutex
	self     Record
	selfMeta []byte // encoding of self; replaced, never mutated, so NodeMeta can hand it out

	pendingMu sync.Mutex
	pending   map[string]nodeEvent // latest event per node, drained by run
	intents   map[string]time.Time // leave intents received, drained by run
	relayed   map[string]time.Time // when we last relayed each node's intent

	snapMu sync.Mutex
	snap   []Peer // all peers with valid records, live and recently dead, sorted by name

	lifeMu sync.Mutex
	closed bool
	left   atomic.Bool // after Leave, seeds are no longer retried

	numLive atomic.Int32 // live remote peers, for the broadcast retransmit count

	republish atomic.Bool // run publishes the live set even if unchanged (our own record changed)

	// keyring is nil when gossip is not encrypted. memberlist locks it
	// per call; keyMu makes our multi-step changes (SetKeys) atomic
	// against each other.
	keyring *memberlist.Keyring
	keyMu   sync.Mutex

	nRejected, nJoin, nUpdate, nLeave, nPublished, nJoinAttempt, nJoinFail, nReconnect atomic.Uint64

	// Owned by run.
	dir     map[string]*dirEntry
	leaving map[string]time.Time // latest leave intent per node name
	lastLog map[string]time.Time
}

// Join starts gossip on cfg.BindAddr, advertising self as this node's
// metadata, and tries the seeds once. If no seed answers, the failure is
// logged and the seeds are retried in the background: the first node of a
// cluster has no one to join, and seeds may start later.
func Join(cfg Config, self Record) (*Membership, error) {
	cfg = cfg.withDefaults(self)
	if err := cfg.check(self); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if err := self.Validate(); err != nil {
		return nil, fmt.Errorf("join: own %w", err)
	}
	meta, err := self.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}

	m := &Membership{
		log:      cfg.Logger.With("component", "peer"),
		name:     cfg.Name,
		rejoin:   cfg.RejoinInterval,
		recon:    cfg.ReconnectInterval,
		retain:   cfg.DeadRetention,
		updates:  make(chan []Peer, 1),
		kick:     make(chan struct{}, 1),
		natKick:  make(chan struct{}, 1),
		stop:     make(chan struct{}),
		self:     self,
		selfMeta: meta,
		pending:  make(map[string]nodeEvent),
		intents:  make(map[string]time.Time),
		relayed:  make(map[string]time.Time),
		dir:      make(map[string]*dirEntry),
		leaving:  make(map[string]time.Time),
		lastLog:  make(map[string]time.Time),
	}

	mc := cfg.memberlist(self.Public)
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{mc.BindAddr},
		BindPort:  mc.BindPort,
		Logger:    log.New(memberlistLog{cfg.Logger.With("component", "memberlist")}, "", 0),
	})
	if err != nil {
		return nil, fmt.Errorf("join: start gossip on %s: %w", net.JoinHostPort(mc.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	if mc.BindPort == 0 {
		mc.BindPort = nt.GetAutoBindPort()
		mc.AdvertisePort = mc.BindPort
	}
	var alt *memberlist.NetTransport
	if cfg.AltBindAddr.IsValid() {
		// The other family's socket pair, on the port the first got.
		alt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{cfg.AltBindAddr.Unmap().String()},
			BindPort:  mc.BindPort,
			Logger:    log.New(memberlistLog{cfg.Logger.With("component", "memberlist")}, "", 0),
		})
		if err != nil {
			nt.Shutdown()
			return nil, fmt.Errorf("join: start gossip on %s: %w", net.JoinHostPort(cfg.AltBindAddr.Unmap().String(), strconv.Itoa(mc.BindPort)), err)
		}
	}
	m.tr = newTransport(nt, alt, self, netip.AddrPortFrom(cfg.BindAddr.Unmap(), uint16(mc.BindPort)), func() {
		select {
		case m.natKick <- struct{}{}:
		default:
		}
	})
	mc.Transport = m.tr
	if m.keyring, err = newKeyring(cfg); err != nil {
		m.tr.Shutdown()
		return nil, fmt.Errorf("join: %w", err)
	}
	if m.keyring != nil {
		mc.Keyring = m.keyring
		// Both on (memberlist's default, stated because it is the
		// security property): refuse plaintext in, never send it out.
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	m.gossip = mc.GossipInterval
	mc.Logger = log.New(memberlistLog{cfg.Logger.With("component", "memberlist")}, "", 0)
	mc.Delegate = (*delegate)(m)
	mc.Events = (*events)(m)
	m.bcast = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(m.numLive.Load()) + 1 },
		RetransmitMult: mc.RetransmitMult,
	}

	ml, err := memberlist.Create(mc)
	if err != nil {
		m.tr.Shutdown()
		return nil, fmt.Errorf("join: start gossip on %s: %w", net.JoinHostPort(mc.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	m.ml = ml
	own := []netip.AddrPort{m.GossipAddr(), netip.AddrPortFrom(cfg.BindAddr.Unmap(), uint16(mc.BindPort))}
	if cfg.AltBindAddr.IsValid() {
		own = append(own, netip.AddrPortFrom(cfg.AltBindAddr.Unmap(), uint16(mc.BindPort)))
	}
	m.seeds = joinTargets(cfg.Seeds, own...)
	m.log.Info("gossip started", "addr", m.GossipAddr(), "seeds", m.seeds)

	m.wg.Add(1)
	go m.run()
	joined := m.tryJoin()
	if !joined && len(m.seeds) > 0 {
		m.log.Warn("no seed reachable; retrying in the background", "seeds", m.seeds, "interval", m.rejoin)
	}
	m.wg.Add(2)
	go m.rejoinLoop(!joined)
	go m.reconnectLoop()
	if !self.Public.IsValid() {
		m.wg.Add(1)
		go m.natLoop(cfg.NATKeepalive)
	}
	return m, nil
}

// natLoop keeps this node's NAT mappings open and known to the peers of
// other sites (transport.keepalive): every interval, and at once when the
// live set changes (a new peer learns where this node is without waiting).
func (m *Membership) natLoop(interval time.Duration) {
	defer m.wg.Done()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		case <-m.natKick:
		}
		m.tr.keepalive()
		if m.tr.behindNAT.Load() && m.Self().Caps&CapBehindNAT == 0 {
			// Peers learn it with the record: this node's internal
			// address is no use to other sites.
			r := m.Self()
			m.log.Info("behind NAT: public peers see this node's gossip from another address")
			if err := m.UpdateSelf(r, 5*time.Second); err != nil && !errors.Is(err, ErrClosed) {
				m.log.Warn("record with the behind-NAT flag not gossiped", "err", err)
			}
			// The way this node reaches its peers changes too
			// (keepalives, relays): publish the live set again.
			m.republish.Store(true)
			m.kickRun()
		}
	}
}

// BehindNAT reports whether a public peer saw this node's gossip come from
// another address than the one it binds (Record CapBehindNAT).
func (m *Membership) BehindNAT() bool { return m.tr.behindNAT.Load() }

// SeenAt returns where gossip from node name was last seen coming from,
// for a node of another site without a public address (transport.go).
func (m *Membership) SeenAt(name string) (netip.AddrPort, bool) { return m.tr.Seen(name) }

// GossipAddr is the address and port gossip actually bound and advertises.
func (m *Membership) GossipAddr() netip.AddrPort {
	n := m.ml.LocalNode()
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// Self returns the record this node currently gossips.
func (m *Membership) Self() Record {
	m.selfMu.Lock()
	defer m.selfMu.Unlock()
	return m.self
}

// UpdateSelf replaces this node's record and gossips it, waiting up to
// timeout for the change to go out. The generation is raised above the
// current one if the caller did not do so.
func (m *Membership) UpdateSelf(r Record, timeout time.Duration) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if r.Name != m.name {
		return fmt.Errorf("update self: record name %q, node name %q", r.Name, m.name)
	}
	if m.tr.behindNAT.Load() {
		r.Caps |= CapBehindNAT // whoever builds the record, the flag stays
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("update self: %w", err)
	}
	m.selfMu.Lock()
	if r.Generation <= m.self.Generation {
		r.Generation = m.self.Generation + 1
	}
	meta, err := r.MarshalBinary()
	if err == nil {
		m.self, m.selfMeta = r, meta
	}
	m.selfMu.Unlock()
	if err != nil {
		return fmt.Errorf("update self: %w", err)
	}
	if err := m.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("update self: gossip record generation %d: %w", r.Generation, err)
	}
	return nil
}

// Counters returns a copy of the membership counters.
func (m *Membership) Counters() map[string]uint64 {
	return map[string]uint64{
		"records_rejected":    m.nRejected.Load(),
		"peer_joins":          m.nJoin.Load(),
		"peer_updates":        m.nUpdate.Load(),
		"peer_leaves":         m.nLeave.Load(),
		"snapshots_published": m.nPublished.Load(),
		"seed_join_attempts":  m.nJoinAttempt.Load(),
		"seed_join_failures":  m.nJoinFail.Load(),
		"peer_reconnects":     m.nReconnect.Load(),
		// transport.go: tagged packets received, malformed tags dropped,
		// NAT keepalives sent, sends with no path to a node behind NAT.
		"gossip_tagged_packets": m.tr.nTagged.Load(),
		"gossip_bad_tags":       m.tr.nBadTag.Load(),
		"gossip_nat_keepalives": m.tr.nKeepalive.Load(),
		"gossip_no_path":        m.tr.nNoPath.Load(),
	}
}

// Leave tells the cluster this node is going away, waiting up to timeout
// (5 s if not positive) for the message to go out, and stops retrying
// seeds. Gossip keeps running until Close.
func (m *Membership) Leave(timeout time.Duration) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	m.left.Store(true)
	if m.ml.NumMembers() > 1 {
		// Let the intent go out before the dead message, so peers label
		// us "left". Its loss only costs the label, and peers withdraw
		// our routes on the dead message, so wait two gossip rounds at
		// most (the intent usually rides in the same packet anyway):
		// a graceful stop must withdraw within a second.
		done := make(chan struct{})
		m.bcast.QueueBroadcast(leaveIntent{name: m.name, done: done})
		select {
		case <-done:
		case <-time.After(min(timeout/2, 2*m.gossip)):
		}
	}
	if err := m.ml.Leave(timeout); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	return nil
}

// Close stops gossip and joins every goroutine Membership started, then
// closes the Updates channel. Without a prior Leave, peers notice this
// node as failed rather than left. Close is idempotent; it may wait for an
// in-flight seed join to time out (memberlist's 10 s TCP timeout).
func (m *Membership) Close() error {
	m.lifeMu.Lock()
	if m.closed {
		m.lifeMu.Unlock()
		return nil
	}
	m.closed = true
	m.lifeMu.Unlock()

	close(m.stop) // first, so the rejoin loop does not start a join into a dead memberlist
	err := m.ml.Shutdown()
	m.wg.Wait()
	close(m.updates)
	if err != nil {
		return fmt.Errorf("close gossip: %w", err)
	}
	return nil
}
