package peer

// Seeds and reconnects. memberlist joins through seeds once, when asked,
// and never probes a node it declared dead; the two loops here add what a
// long-lived cluster needs on top: retry the seeds while alone, and
// contact failed peers again so a healed partition merges.

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// joinTargets turns seed entries into host:port strings for memberlist,
// dropping our own addresses (the advertised one first, whose port a seed
// without one gets, and the bound one). Hostnames are kept as given; memberlist
// resolves them on every attempt, so DNS seeds may appear later.
func joinTargets(seeds []string, self ...netip.AddrPort) []string {
	var out []string
	for _, s := range seeds {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		host, port := s, strconv.Itoa(int(self[0].Port()))
		if h, p, err := net.SplitHostPort(s); err == nil {
			host, port = h, p
		} else {
			host = strings.Trim(s, "[]") // a bare IPv6 address, possibly bracketed
		}
		hp := net.JoinHostPort(host, port)
		if a, err := netip.ParseAddr(host); err == nil && slices.ContainsFunc(self, func(me netip.AddrPort) bool {
			return a.Unmap() == me.Addr().Unmap() && port == strconv.Itoa(int(me.Port()))
		}) {
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
