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

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultGossipPort is memberlist's customary port, used by Serf and Consul too.
const DefaultGossipPort = 7946

// rejectLogInterval bounds log lines about one node's bad record: a
// misbehaving node re-gossips the same junk on every push/pull.
const rejectLogInterval = 30 * time.Second

// ErrClosed is returned by Leave and UpdateSelf after Close.
var ErrClosed = errors.New("membership closed")

// Config configures Join. Zero tuning fields mean memberlist's
// DefaultLANConfig value.
type Config struct {
	// Name is the memberlist node name; it must equal the record's Name.
	// Empty means the record's Name.
	Name string
	// BindAddr is the underlay address gossip binds to and advertises.
	// Binding to one address (not 0.0.0.0) keeps gossip off pod and
	// management interfaces and makes the advertised address predictable.
	BindAddr netip.Addr
	// BindPort is the TCP and UDP gossip port. 0 lets the kernel pick one
	// (tests); GossipAddr reports the result.
	BindPort int
	// Seeds are host or host:port entries to join through; a missing port
	// means BindPort. An entry equal to our own BindAddr:BindPort is
	// skipped, so every node can be given the same seed list.
	Seeds []string
	// RejoinInterval is how often seeds are tried again while this node
	// knows no other live member (the first node of a cluster, or one
	// that lost everyone). 0 means the DefaultConfig value.
	RejoinInterval time.Duration
	// ReconnectInterval is how often a failed (not departed) peer is
	// contacted again. memberlist never probes a node it declared dead,
	// so without this two sides of a healed partition would stay apart
	// until something else joins them. 0 means the DefaultConfig value.
	ReconnectInterval time.Duration
	// DeadRetention is how long dead and left peers stay visible in
	// Peers for status. 0 means the DefaultConfig value.
	DeadRetention time.Duration

	// memberlist tuning; zero means DefaultLANConfig's value (given in
	// DefaultConfig's comments).
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration

	// Keys, when not empty, turn on memberlist's AES-GCM gossip
	// encryption: Keys[0] encrypts what this node sends, every key is
	// tried on receive (16, 24 or 32 bytes each). Packets that are not
	// encrypted under an installed key are dropped, so a node without
	// the key can neither join nor inject a record. Rotate with SetKeys
	// or AddKey/UseKey/RemoveKey (see keyring.go).
	Keys [][]byte
	// SecretKey is a single-key shorthand for Keys, used when Keys is
	// empty.
	SecretKey []byte

	// Logger receives membership events; memberlist's own chatter goes to
	// it at debug level. Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the configuration weftd starts from.
func DefaultConfig() Config {
	lan := memberlist.DefaultLANConfig()
	return Config{
		BindPort: DefaultGossipPort,
		// Retrying a seed every few seconds costs one TCP connect and
		// bounds how long a node started before its seeds stays alone.
		RejoinInterval: 5 * time.Second,
		// A push/pull to one random failed peer every 2 s: one TCP
		// connect, cheap, and it bounds reconvergence after a partition
		// heals to a few seconds (a connect started during the partition
		// keeps retrying its SYN for TCPTimeout and succeeds once it
		// heals).
		ReconnectInterval: 2 * time.Second,
		// Long enough for an operator to see a node that just went away
		// in status output; short enough that churn does not pile up.
		DeadRetention: 10 * time.Minute,
		// memberlist's LAN values: a probe every second with a 500 ms
		// ack timeout, suspicion for 4*log(N+1) probe intervals before a
		// node is declared dead, and gossip to 3 nodes every 200 ms.
		ProbeInterval:  lan.ProbeInterval,
		ProbeTimeout:   lan.ProbeTimeout,
		SuspicionMult:  lan.SuspicionMult,
		GossipInterval: lan.GossipInterval,
	}
}

// Peer is one remote node as seen through gossip.
type Peer struct {
	Record Record
	// State is StateAlive, StateDead or StateLeft.
	State State
	// LastSeen is when this node last observed a change of the peer's
	// state or record (join, update, death, leave).
	LastSeen time.Time

	gossipAddr netip.AddrPort // where to reconnect to a dead peer
}

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

// nodeEvent is what a callback copies out of a memberlist.Node.
type nodeEvent struct {
	meta  []byte
	alive bool // NotifyJoin or NotifyUpdate; false for NotifyLeave
	at    time.Time
	addr  netip.AddrPort // gossip address, for reconnecting after a partition
}

type dirEntry struct {
	meta    []byte // last metadata seen; decoding is redone only when it changes
	rec     Record
	valid   bool
	alive   bool
	at      time.Time // last change of state or record
	aliveAt time.Time // last alive event, to tell a stale leave intent from a fresh one
	addr    netip.AddrPort
}

// Join starts gossip on cfg.BindAddr, advertising self as this node's
// metadata, and tries the seeds once. If no seed answers, the failure is
// logged and the seeds are retried in the background: the first node of a
// cluster has no one to join, and seeds may start later.
func Join(cfg Config, self Record) (*Membership, error) {
	def := DefaultConfig()
	if cfg.Name == "" {
		cfg.Name = self.Name
	}
	if cfg.Name != self.Name {
		return nil, fmt.Errorf("join: config name %q differs from record name %q", cfg.Name, self.Name)
	}
	if err := self.Validate(); err != nil {
		return nil, fmt.Errorf("join: own %w", err)
	}
	meta, err := self.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if !cfg.BindAddr.IsValid() {
		return nil, errors.New("join: no bind address")
	}
	if cfg.BindPort < 0 || cfg.BindPort > 65535 {
		return nil, fmt.Errorf("join: bad bind port %d", cfg.BindPort)
	}
	if cfg.RejoinInterval <= 0 {
		cfg.RejoinInterval = def.RejoinInterval
	}
	if cfg.DeadRetention <= 0 {
		cfg.DeadRetention = def.DeadRetention
	}
	if cfg.ReconnectInterval <= 0 {
		cfg.ReconnectInterval = def.ReconnectInterval
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}

	m := &Membership{
		log:      logger.With("component", "peer"),
		name:     cfg.Name,
		rejoin:   cfg.RejoinInterval,
		recon:    cfg.ReconnectInterval,
		retain:   cfg.DeadRetention,
		updates:  make(chan []Peer, 1),
		kick:     make(chan struct{}, 1),
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

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.BindAddr.Unmap().String()
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = mc.BindAddr
	mc.AdvertisePort = cfg.BindPort
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
	}
	if cfg.ProbeTimeout > 0 {
		mc.ProbeTimeout = cfg.ProbeTimeout
	}
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.GossipInterval > 0 {
		mc.GossipInterval = cfg.GossipInterval
	}
	if m.keyring, err = newKeyring(cfg); err != nil {
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
	mc.Logger = log.New(memberlistLog{logger.With("component", "memberlist")}, "", 0)
	mc.Delegate = (*delegate)(m)
	mc.Events = (*events)(m)
	m.bcast = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(m.numLive.Load()) + 1 },
		RetransmitMult: mc.RetransmitMult,
	}

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("join: start gossip on %s: %w", net.JoinHostPort(mc.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	m.ml = ml
	m.seeds = joinTargets(cfg.Seeds, m.GossipAddr())
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
	return m, nil
}

// joinTargets turns seed entries into host:port strings for memberlist,
// dropping our own address. Hostnames are kept as given; memberlist
// resolves them on every attempt, so DNS seeds may appear later.
func joinTargets(seeds []string, self netip.AddrPort) []string {
	var out []string
	for _, s := range seeds {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		host, port := s, strconv.Itoa(int(self.Port()))
		if h, p, err := net.SplitHostPort(s); err == nil {
			host, port = h, p
		} else {
			host = strings.Trim(s, "[]") // a bare IPv6 address, possibly bracketed
		}
		hp := net.JoinHostPort(host, port)
		if a, err := netip.ParseAddr(host); err == nil && a.Unmap() == self.Addr().Unmap() && port == strconv.Itoa(int(self.Port())) {
			continue
		}
		if !slices.Contains(out, hp) {
			out = append(out, hp)
		}
	}
	return out
}

// tryJoin makes one attempt at the seeds and reports whether one answered.
func (m *Membership) tryJoin() bool {
	if len(m.seeds) == 0 {
		return true
	}
	m.nJoinAttempt.Add(1)
	n, err := m.ml.Join(m.seeds)
	if n == 0 {
		m.nJoinFail.Add(1)
		m.log.Debug("join seeds failed", "seeds", m.seeds, "err", err)
		return false
	}
	m.log.Info("joined cluster", "seeds_reached", n, "members", m.ml.NumMembers())
	return true
}

// rejoinLoop retries the seeds while this node knows no other live member.
// Memberlist never rejoins by itself, so a node that outlived all its
// peers (or started first) would otherwise stay alone forever.
func (m *Membership) rejoinLoop(failing bool) {
	defer m.wg.Done()
	if len(m.seeds) == 0 {
		return
	}
	t := time.NewTicker(m.rejoin)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		if m.left.Load() || m.ml.NumMembers() > 1 {
			continue
		}
		ok := m.tryJoin()
		switch {
		case ok && failing:
			m.log.Info("seed reachable again", "seeds", m.seeds)
		case !ok && !failing:
			m.log.Warn("alone in the cluster and no seed reachable; retrying", "seeds", m.seeds, "interval", m.rejoin)
		}
		failing = !ok
	}
}

// reconnectLoop contacts failed peers again (Serf's reconnect): each tick,
// one push/pull with one randomly chosen dead peer, unless the previous
// attempt is still in flight. One per tick, not all: after a healed
// partition a single exchange carries the whole other side's state, while
// chasing every dead peer from every node would be a push/pull storm in a
// large cluster that is flapping under load. Departed ("left") peers are
// not chased: they said goodbye.
func (m *Membership) reconnectLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.recon)
	defer t.Stop()
	var busy atomic.Bool
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		if m.left.Load() || busy.Load() {
			continue
		}
		var dead []Peer
		for _, p := range m.Peers() {
			if p.State == StateDead && p.gossipAddr.IsValid() {
				dead = append(dead, p)
			}
		}
		if len(dead) == 0 {
			continue
		}
		p := dead[rand.IntN(len(dead))]
		busy.Store(true)
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer busy.Store(false)
			if n, _ := m.ml.Join([]string{p.gossipAddr.String()}); n > 0 {
				m.nReconnect.Add(1)
				m.log.Info("reconnected to failed peer", "peer", p.Record.Name, "addr", p.gossipAddr)
			}
		}()
	}
}

// GossipAddr is the address and port gossip actually bound and advertises.
func (m *Membership) GossipAddr() netip.AddrPort {
	n := m.ml.LocalNode()
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// Updates delivers whole snapshots of the live remote peers whose records
// are valid, sorted by name, each time that set changes (the first one
// right after Join). The channel holds one snapshot; a newer one replaces
// an unread one, so a slow reader only ever sees the latest. The receiver
// owns the outer slice; records are shared read-only. The channel is
// closed by Close.
func (m *Membership) Updates() <-chan []Peer { return m.updates }

// Peers returns the current view for status: live peers plus dead and
// left ones seen within Config.DeadRetention, sorted by name. Peers whose
// record was rejected are not included.
func (m *Membership) Peers() []Peer {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	return slices.Clone(m.snap)
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

// run owns the directory: it folds pending events in and publishes.
func (m *Membership) run() {
	defer m.wg.Done()
	// Tombstones expire without any event, so look again now and then.
	prune := time.NewTicker(min(m.retain/4, time.Minute))
	defer prune.Stop()
	var last []Peer
	first := true
	for {
		now := time.Now()
		all, live := m.apply(now)
		m.snapMu.Lock()
		m.snap = all
		m.snapMu.Unlock()
		m.numLive.Store(int32(len(live)))
		if first || !samePeers(last, live) {
			m.publish(live)
			last, first = live, false
		}
		select {
		case <-m.stop:
			return
		case <-m.kick:
		case <-prune.C:
		}
	}
}

// apply drains pending events into the directory and returns the status
// view and the live view.
func (m *Membership) apply(now time.Time) (all, live []Peer) {
	m.pendingMu.Lock()
	pending, intents := m.pending, m.intents
	m.pending = make(map[string]nodeEvent, len(pending))
	m.intents = make(map[string]time.Time)
	m.pendingMu.Unlock()

	for name, at := range intents {
		m.leaving[name] = at
	}
	for name, ev := range pending {
		e := m.dir[name]
		if e == nil {
			e = &dirEntry{}
			m.dir[name] = e
		} else if e.alive == ev.alive && bytes.Equal(e.meta, ev.meta) {
			continue
		}
		if !ev.at.Before(e.at) {
			e.at = ev.at
		}
		if ev.addr.IsValid() {
			e.addr = ev.addr
		}
		e.alive = ev.alive
		if ev.alive {
			e.aliveAt = ev.at
		}
		if e.meta != nil && bytes.Equal(e.meta, ev.meta) {
			continue
		}
		e.meta = ev.meta
		// A bad update does not erase a good record: the last good state
		// stays in force (and keeps routing) until the peer fixes its
		// record or goes away.
		var r Record
		err := r.UnmarshalBinary(ev.meta)
		if err == nil {
			err = r.Validate()
		}
		if err == nil && r.Name != name {
			err = fmt.Errorf("record names %q", r.Name)
		}
		if err != nil {
			m.nRejected.Add(1)
			if t, ok := m.lastLog[name]; !ok || now.Sub(t) >= rejectLogInterval {
				m.lastLog[name] = now
				m.log.Warn("rejected peer record", "peer", name, "err", err, "meta_len", len(ev.meta), "keeping_last_good", e.valid)
			}
			continue
		}
		e.rec, e.valid = r, true
	}

	for name, at := range m.leaving {
		if now.Sub(at) > m.retain {
			delete(m.leaving, name)
		}
	}
	for name, e := range m.dir {
		if !e.alive && now.Sub(e.at) > m.retain {
			delete(m.dir, name)
			delete(m.lastLog, name)
			continue
		}
		if !e.valid {
			continue
		}
		p := Peer{Record: e.rec, State: StateAlive, LastSeen: e.at, gossipAddr: e.addr}
		if !e.alive {
			p.State = StateDead
			if at, ok := m.leaving[name]; ok && at.After(e.aliveAt) {
				p.State = StateLeft
			}
		}
		all = append(all, p)
		if e.alive {
			live = append(live, p)
		}
	}
	byName := func(a, b Peer) int { return strings.Compare(a.Record.Name, b.Record.Name) }
	slices.SortFunc(all, byName)
	slices.SortFunc(live, byName)
	return all, live
}

// publish offers snap on the one-slot channel, replacing an unread older
// snapshot. run is the only sender, so after the drain the send succeeds.
func (m *Membership) publish(snap []Peer) {
	if snap == nil {
		snap = []Peer{}
	}
	m.nPublished.Add(1)
	select {
	case m.updates <- snap:
		return
	default:
	}
	select {
	case <-m.updates:
	default:
	}
	select {
	case m.updates <- snap:
	default:
	}
}

func samePeers(a, b []Peer) bool {
	return slices.EqualFunc(a, b, func(x, y Peer) bool { return x.State == y.State && x.Record.Equal(y.Record) })
}

// observe is called from memberlist callbacks, under memberlist's node
// lock: copy, enqueue, return.
func (m *Membership) observe(n *memberlist.Node, alive bool) {
	if n.Name == m.name {
		return
	}
	ev := nodeEvent{meta: bytes.Clone(n.Meta), alive: alive, at: time.Now()}
	if a, ok := netip.AddrFromSlice(n.Addr); ok {
		ev.addr = netip.AddrPortFrom(a.Unmap(), n.Port)
	}
	if ev.meta == nil {
		ev.meta = []byte{}
	}
	m.pendingMu.Lock()
	m.pending[n.Name] = ev
	m.pendingMu.Unlock()
	m.kickRun()
}

func (m *Membership) kickRun() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// msgLeaveIntent starts a leave intent user message: the byte, then the
// leaving node's name.
const msgLeaveIntent = 'L'

// relayWindow suppresses relaying the same intent again: every receiver
// relays once, and the copies coming back must not circulate forever.
const relayWindow = time.Minute

// leaveIntent is a memberlist broadcast announcing that name is leaving.
// Named, so the queue keeps one intent per node.
type leaveIntent struct {
	name string
	done chan struct{} // closed when the queue is done with it; may be nil
}

func (l leaveIntent) Name() string                          { return "leave/" + l.name }
func (l leaveIntent) Invalidates(memberlist.Broadcast) bool { return false }
func (l leaveIntent) Message() []byte                       { return append([]byte{msgLeaveIntent}, l.name...) }
func (l leaveIntent) Finished() {
	if l.done != nil {
		close(l.done)
	}
}

// events is Membership's memberlist.EventDelegate.
type events Membership

func (e *events) NotifyJoin(n *memberlist.Node) {
	if n.Name != e.name {
		e.nJoin.Add(1)
	}
	(*Membership)(e).observe(n, true)
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	if n.Name != e.name {
		e.nLeave.Add(1)
	}
	(*Membership)(e).observe(n, false)
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	if n.Name != e.name {
		e.nUpdate.Add(1)
	}
	(*Membership)(e).observe(n, true)
}

// delegate is Membership's memberlist.Delegate: our record as node
// metadata, and leave intents as user broadcasts.
type delegate Membership

func (d *delegate) NodeMeta(limit int) []byte {
	d.selfMu.Lock()
	defer d.selfMu.Unlock()
	if len(d.selfMeta) > limit {
		// Unreachable with the codec's bounds (274 bytes worst case), but
		// memberlist panics on oversized metadata, so never hand it over.
		return nil
	}
	return d.selfMeta
}

// NotifyMsg receives leave intents. The first copy is relayed once, as
// the sender only gossips to a few random nodes.
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) < 2 || b[0] != msgLeaveIntent || len(b) > 1+MaxNameLen {
		return
	}
	name := string(b[1:])
	if name == d.name {
		return
	}
	now := time.Now()
	d.pendingMu.Lock()
	d.intents[name] = now
	last, dup := d.relayed[name]
	dup = dup && now.Sub(last) < relayWindow
	if !dup {
		if len(d.relayed) > 1024 {
			clear(d.relayed) // bound memory against a flood of fake names
		}
		d.relayed[name] = now
	}
	d.pendingMu.Unlock()
	if !dup {
		d.bcast.QueueBroadcast(leaveIntent{name: name})
	}
	(*Membership)(d).kickRun()
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.bcast.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

// memberlistLog routes memberlist's log.Logger output into slog at debug
// level: memberlist is chatty about every probe hiccup, and weftd reports
// what matters (peers joining, leaving, rejected) itself. memberlist's own
// level tag is kept as an attribute.
type memberlistLog struct{ log *slog.Logger }

func (w memberlistLog) Write(p []byte) (int, error) {
	if !w.log.Enabled(context.Background(), slog.LevelDebug) {
		return len(p), nil
	}
	msg := strings.TrimSpace(string(p))
	level := ""
	if strings.HasPrefix(msg, "[") {
		if i := strings.IndexByte(msg, ']'); i > 0 {
			level, msg = msg[1:i], strings.TrimSpace(msg[i+1:])
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.log.Debug(msg, "ml_level", level)
	return len(p), nil
}
