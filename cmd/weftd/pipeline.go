package main

// The peer pipeline: how a gossiped record reaches the router's peer
// table, in the order each snapshot takes.
//
//  1. Membership publishes a whole snapshot of the live peers whose
//     records decode and validate (peer.Membership.Updates); in
//     Kubernetes mode kubeMode.peerUpdates keeps only peers whose Node
//     exists (kube.go).
//  2. Admission (plane.admit, gossip.go) refuses records that conflict
//     or leave the cluster CIDR, and checks that our own claim still
//     stands.
//  3. The transport policy picks VXLAN or WireGuard for each peer
//     (transportChooser); a peer with no common transport is skipped.
//  4. The static peers join the set (in front: see route).
//  5. Router.SetPeers swaps in a new immutable peer table.

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/encap/wireguard"
	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

// pipeline runs the steps above for each snapshot. It is used by run's
// loop only, so it needs no lock.
type pipeline struct {
	c       config
	log     *slog.Logger
	members *peer.Membership
	plane   *plane
	chooser *transportChooser
	router  *overlay.Router
	// last is the admitted peer set in force, which a hand-off passes on.
	last []peer.Peer
	// nodes keeps the peers whose Node exists (Kubernetes mode).
	nodes func([]peer.Peer) []peer.Peer
}

func newPipeline(c config, log *slog.Logger, members *peer.Membership, plane *plane, router *overlay.Router, nodes func([]peer.Peer) []peer.Peer) *pipeline {
	return &pipeline{c: c, log: log, members: members, plane: plane, chooser: newTransportChooser(c.Policy, log), router: router, nodes: nodes}
}

// route takes one membership snapshot to the router. An error is fatal
// (our claim was lost); peers that cannot be routed are logged and
// skipped.
func (p *pipeline) route(snap []peer.Peer) error {
	admitted, err := p.plane.admit(snap)
	if err != nil {
		return err
	}
	p.last = admitted
	n := setPeers(p.router, p.c.StaticPeers, admitted, p.standby(admitted), p.members.Self(), p.chooser, p.log)
	p.log.Info("peer set changed", "peers", n)
	if err := saveWarm(p.c, admitted, time.Now()); err != nil {
		p.log.Warn("warm-start snapshot not saved", "err", err)
	}
	return nil
}

// standby is the WireGuard peers gossip declared dead within
// --warm-start-max-age (and whose Node exists, in Kubernetes mode): not
// routed, but kept on the WireGuard device as they are, so that a peer
// restarted after a long stop gets its handshake answered at once instead
// of after gossip brings it back (wireguard.Peer.Standby). A peer that
// left, or whose Node was deleted, goes at once.
func (p *pipeline) standby(admitted []peer.Peer) []peer.Peer {
	if !p.c.WireGuard || p.c.WarmMaxAge <= 0 {
		return nil
	}
	live := make(map[string]bool, len(admitted))
	for _, a := range admitted {
		live[a.Record.Name] = true
	}
	var dead []peer.Peer
	for _, q := range p.members.Peers() {
		if q.State == peer.StateDead && !live[q.Record.Name] && time.Since(q.LastSeen) <= p.c.WarmMaxAge {
			dead = append(dead, q)
		}
	}
	if len(dead) == 0 || p.nodes == nil {
		return dead
	}
	return p.nodes(dead)
}

// setPeers gives the router the static peers and the admitted ones, each
// with its transport, and the standby ones, and returns how many it
// routes. Static peers go in front, as always: the table keeps the last
// entry for a pod CIDR, so on a conflict the gossiped record wins.
func setPeers(r *overlay.Router, static []overlay.Peer, admitted, standby []peer.Peer, self peer.Record, tc *transportChooser, log *slog.Logger) int {
	peers, routed := peerSet(static, admitted, standby, self, tc)
	if err := r.SetPeers(peers); err != nil {
		log.Warn("some peers skipped", "err", err)
	}
	return routed
}

// peerSet is setPeers' peer list, and how many of its peers are routed
// (the rest are standby): each peer at the address that works from here,
// relayed peers' pod CIDRs on their relays (reach.go).
func peerSet(static []overlay.Peer, admitted, standby []peer.Peer, self peer.Record, tc *transportChooser) ([]overlay.Peer, int) {
	peers := append(make([]overlay.Peer, 0, len(static)+len(admitted)+len(standby)), static...)
	plan := planReach(self, admitted)
	at := make(map[string]int, len(admitted)) // index in peers, by name
	for _, a := range admitted {
		rc := plan[a.Record.Name]
		if rc.relay != "" {
			continue // carried by its relay, below
		}
		if rc.why != "" {
			tc.unreachable(a.Record.Name, rc.why)
			continue
		}
		if rc.noRelay {
			tc.unreachable(a.Record.Name, "both behind NAT in different sites, and no relay: no peer with a public address in a third site")
			continue
		}
		op, err := tc.peer(self, a.Record, rc)
		if err != nil {
			tc.unreachable(a.Record.Name, err.Error())
			continue
		}
		at[a.Record.Name] = len(peers)
		peers = append(peers, op)
	}
	for _, a := range admitted {
		rc := plan[a.Record.Name]
		if rc.relay == "" {
			continue
		}
		i, ok := at[rc.relay]
		if !ok || peers[i].Transport != overlay.TransportWireGuard {
			tc.unreachable(a.Record.Name, "its relay "+rc.relay+" is not reached over WireGuard")
			continue
		}
		tc.relayed(a.Record.Name, rc.relay)
		rp := &peers[i]
		// Copies: PodCIDRs share the records' backing arrays.
		rp.PodCIDRs = append(slices.Clip(rp.PodCIDRs), a.Record.PodCIDRs...)
		rp.WireGuard.AllowedIPs = append(slices.Clip(rp.WireGuard.AllowedIPs), a.Record.PodCIDRs...)
		rp.Relayed = append(rp.Relayed, a.Record.Name)
	}
	routed := len(peers)
	for _, s := range standby {
		rc := reachOf(self, s.Record)
		if rc.why != "" {
			continue
		}
		if op, err := tc.peer(self, s.Record, rc); err == nil && op.Transport == overlay.TransportWireGuard {
			op.Standby = true
			peers = append(peers, op)
		}
	}
	return peers, routed
}

// start is how this process starts forwarding, before gossip has joined:
// cold (gossip alone fills the peer table), warm (from the snapshot a
// previous weftd left, warm.go; --warm-start-max-age 0 turns it off) or
// from a hand-off (the donor's live table, handoff.go).
type start struct {
	kind  string // "cold", "warm" or "handoff"
	from  int    // the donor's pid
	peers []peer.Peer
}

// startOf decides the start: a hand-off's table, else a usable warm
// snapshot, else cold.
func startOf(c config, log *slog.Logger, tk *takeover) start {
	if tk != nil {
		return start{kind: "handoff", from: tk.t.State.PID, peers: tk.peers}
	}
	if c.WarmMaxAge <= 0 {
		return start{kind: "cold"}
	}
	snap, err := loadWarm(c, c.WarmMaxAge, time.Now())
	if err != nil {
		log.Warn("cold start: warm-start snapshot not used", "err", err)
		return start{kind: "cold"}
	}
	if len(snap) == 0 {
		return start{kind: "cold"}
	}
	return start{kind: "warm", peers: snap}
}

// resuming reports whether the first peer table comes from a previous
// weftd of this node: its WireGuard peers then know this node already
// (wireguard.Config.Resuming).
func (s start) resuming() bool { return s.kind != "cold" }

// apply gives the router its first table: the static peers and the
// start's peers, admitted against self as gossiped records are. It returns
// the process as status reports it and the admitted peers (the table a
// hand-off passes on until gossip replaces it).
func (s start) apply(c config, log *slog.Logger, r *overlay.Router, self peer.Record) (control.Process, []peer.Peer) {
	p := control.Process{PID: os.Getpid(), Generation: self.Generation, Started: time.Now().UTC(), Start: "cold", HandOffFrom: s.from}
	if s.kind == "cold" {
		if err := r.SetPeers(c.StaticPeers); err != nil {
			log.Warn("some static peers skipped", "err", err)
		}
		return p, nil
	}
	admitted, refused := peer.Admit(s.peers, self, c.clusterCIDRs())
	if len(refused) > 0 {
		log.Warn(s.kind+" start: records refused", "refused", len(refused))
	}
	setPeers(r, c.StaticPeers, admitted, nil, self, newTransportChooser(c.Policy, log), log)
	log.Info(s.kind+" start: forwarding from the last peer table until gossip replaces it", "peers", len(admitted))
	p.Start, p.WarmPeers = s.kind, len(admitted)
	return p, admitted
}

// transportChooser turns gossiped records into router peers under the
// cluster's transport policy, and logs each peer's transport when it is
// first chosen or changes.
type transportChooser struct {
	policy overlay.Policy
	log    *slog.Logger
	last   map[string]overlay.Transport
	// why is the last reason logged per peer not routed or relayed, so
	// each change is logged once.
	why map[string]string
}

func newTransportChooser(p overlay.Policy, log *slog.Logger) *transportChooser {
	return &transportChooser{policy: p, log: log, last: make(map[string]overlay.Transport), why: make(map[string]string)}
}

// unreachable logs, once per reason, that peer is not routed.
func (tc *transportChooser) unreachable(name, why string) {
	if tc.why[name] != why {
		tc.why[name] = why
		tc.log.Warn("peer unreachable", "peer", name, "err", why)
	}
}

// relayed logs, once per relay, that peer is reached through relay.
func (tc *transportChooser) relayed(name, relay string) {
	if why := "relay " + relay; tc.why[name] != why {
		tc.why[name] = why
		tc.log.Info("peer reached through a relay", "peer", name, "relay", relay)
	}
}

func capabilities(r peer.Record) overlay.Capabilities {
	return overlay.Capabilities{
		Site:      r.Site,
		VXLAN:     r.Caps&peer.CapVXLAN != 0,
		WireGuard: r.Caps&peer.CapWireGuard != 0 && r.HasWGKey() && r.WGPort != 0,
	}
}

func (tc *transportChooser) peer(self, r peer.Record, rc reach) (overlay.Peer, error) {
	t, fallback, err := tc.policy.Choose(capabilities(self), capabilities(r))
	if err != nil {
		return overlay.Peer{}, fmt.Errorf("no common transport: %w", err)
	}
	if rc.passive && t != overlay.TransportWireGuard {
		return overlay.Peer{}, fmt.Errorf("in another site without a public address: reachable over WireGuard only (transport policy %s chose %s)", tc.policy, t)
	}
	delete(tc.why, r.Name)
	// A peer reached only where its packets come from is listed at its
	// internal address, which this node never sends to.
	addr := rc.addr
	if !addr.IsValid() {
		addr = r.Underlay.Addr()
	}
	if old, ok := tc.last[r.Name]; !ok || old != t {
		tc.last[r.Name] = t
		if fallback {
			tc.log.Warn("transport policy not met for peer: falling back to what both support", "peer", r.Name, "policy", tc.policy, "transport", t)
		} else {
			tc.log.Info("peer transport", "peer", r.Name, "site", r.Site, "transport", t)
		}
	}
	p := overlay.Peer{Name: r.Name, Underlay: netip.AddrPortFrom(addr, r.Underlay.Port()), PodCIDRs: r.PodCIDRs, VTEPMAC: r.VTEPMAC, Transport: t,
		OuterChecksum:  true, // weft's sender always checksums
		RemoteChecksum: self.Caps&r.Caps&peer.CapRemoteChecksum != 0}
	if t == overlay.TransportWireGuard {
		p.WireGuard = wireguard.Peer{
			PublicKey:  wgtypes.Key(r.WGPublicKey),
			AllowedIPs: r.PodCIDRs,
			// A gossiped weft node: its device is up, so start a handshake
			// at once, unless it is reached only where its packets come
			// from (it starts them).
			Keepalive:           !rc.passive,
			PersistentKeepalive: rc.keepalive,
		}
		if !rc.passive {
			p.WireGuard.Endpoint = netip.AddrPortFrom(addr, r.WGPort)
		}
	}
	return p, nil
}
