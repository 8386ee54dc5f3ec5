package main

// Standalone node-CIDR claims (no --pod-cidr, --node-cidr-size N; with an
// IPv6 --cluster-cidr also an IPv6 block of --node-cidr-size-ipv6, claimed
// in the same rounds).
//
// Order of events, chosen so that the datapath only ever sees a settled
// block:
//
//  1. Join gossip with a record that carries no pod CIDR: peers see the
//     node but route nothing to it. Join returns after a full state
//     exchange with a seed, so the node learns every claim the cluster
//     knows, including departed nodes still inside their grace period.
//  2. Pick a block (the persisted one if it is still ours, else a free
//     one, see ipam/claim) and announce it with UpdateSelf.
//  3. Settle: for --claim-settle the block must stand unchallenged, i.e.
//     no node with a lower name announces an overlapping block. Gossip
//     spreads a record change to every node of a LAN cluster in well
//     under a second, so two nodes that picked the same block at the same
//     moment see each other inside the window; the higher name goes back
//     to step 2.
//  4. Persist the claim, then let run() configure the TUN gateway, the
//     host route and node.json for it, and publish the full record.
//
// After that the claim is only re-checked (plane.admit): losing it to a
// lower name (possible only after a partition heals) makes weftd leave and
// exit, and its restart goes back to step 1.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/weftnet/weft/ipam/claim"
	"github.com/weftnet/weft/peer"
)

// maxClaimRounds bounds step 2–3 retries; each lost round means a lower
// name took our pick, which cannot go on for long in a real cluster.
const maxClaimRounds = 32

// membershipConfig is the gossip configuration for c.
func membershipConfig(c config, keys [][]byte, log *slog.Logger) peer.Config {
	mcfg := peer.DefaultConfig()
	mcfg.Name = c.Name
	mcfg.BindAddr = c.UnderlayAddr
	mcfg.AltBindAddr = c.AltUnderlayAddr
	mcfg.BindPort = c.GossipPort
	mcfg.Seeds = c.Seeds
	mcfg.Keys = keys
	mcfg.Logger = log
	if c.claimMode() && mcfg.DeadRetention < c.ClaimGrace+time.Minute {
		// Departed nodes' claims are only known while their tombstones
		// last; they must outlive the grace period.
		mcfg.DeadRetention = c.ClaimGrace + time.Minute
	}
	return mcfg
}

// claimMAC is the VTEP MAC in claim mode, where the gateway (from which
// --pod-cidr mode derives it) is not known before joining: 0a:59 and the
// underlay IPv4 address, equally stable across restarts and unique. An
// IPv6 underlay address does not fit; its last four bytes alone would
// repeat across subnets (2001:db8:1::11, 2001:db8:2::11), so it is folded
// into four bytes by FNV-1a over all sixteen: stable, and unique but for
// a hash collision.
func claimMAC(underlay netip.Addr) [6]byte {
	underlay = underlay.Unmap()
	if underlay.Is4() {
		b := underlay.As4()
		return [6]byte{0x0a, 0x59, b[0], b[1], b[2], b[3]}
	}
	b := underlay.As16()
	h := fnv.New32a()
	h.Write(b[:])
	v := h.Sum32()
	return [6]byte{0x0a, 0x59, byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// joinAndClaim joins gossip and returns once this node holds a settled
// block of each family of the cluster CIDR (IPv4 first), persisted in
// c.StateDir.
func joinAndClaim(ctx context.Context, c config, keys [][]byte, log *slog.Logger) (*peer.Membership, []netip.Prefix, error) {
	cfgs := c.claimConfigs()
	clog := log.With("component", "claim")
	want := make([]netip.Prefix, len(cfgs))
	for i, cfg := range cfgs {
		switch st, err := claim.Load(c.StateDir, cfg.Cluster); {
		case err == nil && st.Name == c.Name && st.Cluster == cfg.Cluster && cfg.Fits(st.CIDR):
			want[i] = st.CIDR
			clog.Info("offering the persisted claim again", "cidr", want[i], "settled", st.Settled)
		case err == nil:
			clog.Warn("ignoring a persisted claim made for another name, cluster CIDR or size", "name", st.Name, "cluster", st.Cluster, "cidr", st.CIDR)
		case !errors.Is(err, os.ErrNotExist):
			clog.Warn("persisted claim unreadable; claiming afresh", "err", err)
		}
	}

	rec := c.selfRecord(nil) // step 1: no pod CIDR yet, no WireGuard device yet
	m, err := peer.Join(membershipConfig(c, keys, log), rec)
	if err != nil {
		return nil, nil, fmt.Errorf("start gossip: %w", err)
	}
	cidrs, err := settleClaim(ctx, cfgs, c, m, rec, want, clog)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, cidrs, nil
}

// settleClaim runs steps 2 and 3 until a pick of every family survives
// the settle window together. A conflict on one family picks that one
// again and keeps the others' picks.
func settleClaim(ctx context.Context, cfgs []claim.Config, c config, m *peer.Membership, rec peer.Record, want []netip.Prefix, log *slog.Logger) ([]netip.Prefix, error) {
	// Join delivered the seed's view synchronously; give the directory a
	// moment to fold it in (or, for the first node, to find there is none).
	learn := time.Now().Add(c.ClaimSettle / 2)
	for len(m.Peers()) == 0 && time.Now().Before(learn) {
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
	tick := 100 * time.Millisecond
	want = slices.Clone(want)
	for round := 1; round <= maxClaimRounds; round++ {
		picks := make([]netip.Prefix, len(cfgs))
		for i, cfg := range cfgs {
			pick, err := cfg.Pick(c.Name, want[i], holders(m.Peers()), time.Now())
			if err != nil {
				return nil, err
			}
			picks[i] = pick
		}
		rec.PodCIDRs = picks
		if err := m.UpdateSelf(rec, 2*time.Second); err != nil {
			return nil, fmt.Errorf("announce claim %v: %w", picks, err)
		}
		log.Info("claimed node CIDR; settling", "cidrs", picks, "round", round, "settle", c.ClaimSettle)
		settled := time.Now().Add(c.ClaimSettle)
		lost, why := -1, ""
		for lost < 0 && time.Now().Before(settled) {
			if err := sleepCtx(ctx, min(tick, time.Until(settled))); err != nil {
				return nil, err
			}
			for i, cfg := range cfgs {
				if ok, w := cfg.Keep(c.Name, picks[i], holders(m.Peers()), time.Now()); !ok {
					lost, why = i, w
					break
				}
			}
		}
		if lost < 0 {
			for i, cfg := range cfgs {
				if err := claim.Save(c.StateDir, claim.State{Name: c.Name, Cluster: cfg.Cluster, CIDR: picks[i], Settled: time.Now()}); err != nil {
					return nil, err
				}
			}
			log.Info("node CIDR settled", "cidrs", picks)
			return picks, nil
		}
		log.Warn("claim conflict; picking again", "cidr", picks[lost], "why", why)
		copy(want, picks)
		want[lost] = netip.Prefix{}
	}
	return nil, fmt.Errorf("no node CIDR settled after %d rounds", maxClaimRounds)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
