package peer

// memberlist's callbacks. They run under memberlist's node lock, so each
// copies what it needs, queues it for run (directory.go) and returns.

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// nodeEvent is what a callback copies out of a memberlist.Node.
type nodeEvent struct {
	meta  []byte
	alive bool // NotifyJoin or NotifyUpdate; false for NotifyLeave
	at    time.Time
	addr  netip.AddrPort // gossip address, for reconnecting after a partition
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
