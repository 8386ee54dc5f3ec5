package peer

// The directory: run, the one goroutine that owns it, folds the events the
// delegates queued (delegate.go) into it, validates records, and publishes
// whole snapshots (see the design note in membership.go).

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// rejectLogInterval bounds log lines about one node's bad record: a
// misbehaving node re-gossips the same junk on every push/pull.
const rejectLogInterval = 30 * time.Second

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

type dirEntry struct {
	meta    []byte // last metadata seen; decoding is redone only when it changes
	rec     Record
	valid   bool
	alive   bool
	at      time.Time // last change of state or record
	aliveAt time.Time // last alive event, to tell a stale leave intent from a fresh one
	addr    netip.AddrPort
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
		m.tr.setPeers(all)
		m.numLive.Store(int32(len(live)))
		if first || !samePeers(last, live) || m.republish.Swap(false) {
			m.publish(live)
			last, first = live, false
			select {
			case m.natKick <- struct{}{}:
			default:
			}
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
