package main

// The control-plane half of weftd: gossip flags, this node's record, gossip
// keys (file, watcher, control endpoints), node-CIDR claims (claim.go), and
// admission of peer records before they reach the router (the pipeline's
// step 2, pipeline.go). main.go only calls into here, so the datapath
// wiring and this file can change independently.

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/weftnet/weft/encap/wireguard"
	"github.com/weftnet/weft/ipam/claim"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

// controlPlane is the part of weftd's config this file owns; embedded in
// config.
type controlPlane struct {
	Seeds      []string
	GossipPort int
	seeds      string // --seeds, comma-separated

	GossipKeyFile  string
	InsecureGossip bool
	// KeyPoll is how often the key file is checked for changes.
	KeyPoll time.Duration
	// NodeCIDRBits > 0 turns on standalone CIDR claims (no --pod-cidr);
	// with an IPv6 cluster CIDR a node also claims an IPv6 block of
	// NodeCIDRBits6.
	NodeCIDRBits, NodeCIDRBits6 int
	ClaimGrace                  time.Duration
	ClaimSettle                 time.Duration
	// LeaveOnExit leaves gossip on SIGTERM/SIGINT, so peers withdraw the
	// node at once; off, a stop looks like a restart (README: Restarts).
	LeaveOnExit bool
	// WarmMaxAge bounds the age of the peer snapshot a start forwards
	// from before gossip has joined (warm.go).
	WarmMaxAge time.Duration
}

// registerFlags adds this file's flags to fs.
func (cp *controlPlane) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&cp.seeds, "seeds", "", "comma-separated gossip seeds, host or host:port; one live node is enough")
	fs.IntVar(&cp.GossipPort, "gossip-port", peer.DefaultGossipPort, "memberlist TCP and UDP port")
	fs.StringVar(&cp.GossipKeyFile, "gossip-key-file", "", "file with base64 gossip keys, one per line, the first one primary; watched for changes (rotation). Required unless --insecure-gossip")
	fs.BoolVar(&cp.InsecureGossip, "insecure-gossip", false, "run gossip unencrypted and unauthenticated (tests only)")
	fs.DurationVar(&cp.KeyPoll, "gossip-key-poll", time.Second, "how often the gossip key file is checked for changes")
	fs.IntVar(&cp.NodeCIDRBits, "node-cidr-size", 0, "without --pod-cidr: claim a block of this prefix length (e.g. 24) from --cluster-cidr over gossip")
	fs.IntVar(&cp.NodeCIDRBits6, "node-cidr-size-ipv6", 64, "with --node-cidr-size and an IPv6 --cluster-cidr: the prefix length of the IPv6 block claimed beside the IPv4 one")
	fs.DurationVar(&cp.ClaimGrace, "claim-grace", 10*time.Minute, "how long a dead or departed node's claimed block stays reserved")
	fs.DurationVar(&cp.ClaimSettle, "claim-settle", 2*time.Second, "how long a new claim must stand unchallenged before the datapath uses it")
	fs.DurationVar(&cp.WarmMaxAge, "warm-start-max-age", 5*time.Minute, "a starting weftd forwards from the peer table its predecessor left in --run-dir if it is at most this old, until gossip replaces it; 0 always starts cold")
	fs.BoolVar(&cp.LeaveOnExit, "leave-on-exit", false, "leave gossip on SIGTERM/SIGINT, so peers withdraw this node's routes at once (for removing a node); by default a stop is a restart: peers keep the routes and the device keeps the traffic until a new weftd takes over")
}

// claimMode reports whether the pod CIDR comes from a gossip claim.
func (c config) claimMode() bool { return !c.PodCIDR.IsValid() && c.NodeCIDRBits > 0 }

// claimConfigs is the claim policy per family of the cluster CIDR, IPv4
// first: a dual-stack node claims a block of each.
func (c config) claimConfigs() []claim.Config {
	out := []claim.Config{{Cluster: c.ClusterCIDR, Bits: c.NodeCIDRBits, Grace: c.ClaimGrace}}
	if c.ClusterCIDR6.IsValid() {
		out = append(out, claim.Config{Cluster: c.ClusterCIDR6, Bits: c.NodeCIDRBits6, Grace: c.ClaimGrace})
	}
	return out
}

// checkControlPlane validates the control-plane flags against the rest;
// called by parseFlags after checkNode (it needs the cluster CIDR).
func (c *config) checkControlPlane() error {
	if c.GossipPort < 1 || c.GossipPort > 65535 {
		return fmt.Errorf("--gossip-port %d out of range", c.GossipPort)
	}
	if c.seeds != "" {
		c.Seeds = strings.Split(c.seeds, ",")
	}
	if c.KeyPoll <= 0 {
		return fmt.Errorf("--gossip-key-poll %s: want > 0", c.KeyPoll)
	}
	if c.NodeCIDRBits != 0 {
		if len(c.podCIDRFlags) > 0 {
			return errors.New("--node-cidr-size and --pod-cidr exclude each other")
		}
		cfgs := c.claimConfigs()
		if err := cfgs[0].Validate(); err != nil {
			return fmt.Errorf("--node-cidr-size: %w", err)
		}
		if len(cfgs) > 1 {
			if err := cfgs[1].Validate(); err != nil {
				return fmt.Errorf("--node-cidr-size-ipv6: %w", err)
			}
		}
	}
	if c.ClaimSettle < 0 {
		return fmt.Errorf("--claim-settle %s: want >= 0", c.ClaimSettle)
	}
	return nil
}

// selfRecord is the node record this node gossips for c, with the
// WireGuard identity of wg (nil: none yet, or no WireGuard). In claim mode
// before the claim settles, c.PodCIDR is not set and the record carries
// no pod CIDR: peers see the node but route nothing to it.
func (c config) selfRecord(wg *wireguard.Device) peer.Record {
	r := peer.Record{
		Name:        c.Name,
		Underlay:    netip.AddrPortFrom(c.UnderlayAddr, uint16(c.VXLANPort)),
		VTEPMAC:     c.VTEPMAC,
		Site:        c.Site,
		Public:      c.PublicAddr,
		AltUnderlay: c.AltUnderlayAddr,
		Caps:        c.vxlanCaps() | peer.CapRelay | peer.CapGossipTag,
		Generation:  uint64(time.Now().UnixNano()),
	}
	if c.PodCIDR.IsValid() {
		r.PodCIDRs = c.podCIDRs()
	}
	if wg != nil {
		r.Caps |= peer.CapWireGuard
		r.WGPublicKey = wg.PublicKey()
		r.WGPort = uint16(c.WGPort)
	}
	return r
}

// gossipKeys returns the keys weftd starts with. Encryption is on by
// default: without a key file weftd refuses to run unless told, loudly,
// that plaintext gossip is wanted.
func gossipKeys(c config, log *slog.Logger) ([][]byte, error) {
	if c.GossipKeyFile == "" {
		if !c.InsecureGossip {
			return nil, errors.New("gossip encryption is on by default: give --gossip-key-file (make one with `weftctl gossip-key generate > FILE`) or --insecure-gossip")
		}
		log.Warn("gossip is NOT encrypted (--insecure-gossip): anyone who can reach the gossip port can join and inject routes")
		return nil, nil
	}
	b, err := os.ReadFile(c.GossipKeyFile)
	if err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	keys, err := peer.ParseKeyFile(b)
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: %w", c.GossipKeyFile, err)
	}
	return keys, nil
}

// watchKeyFile applies changes of the key file to the live keyring until
// ctx ends. It compares content, not mtime: a rewrite within the same
// second (or a Kubernetes Secret's symlink swap) must not be missed. A
// file that does not parse is logged and ignored; the keyring in force
// stays.
func watchKeyFile(ctx context.Context, path string, every time.Duration, m *peer.Membership, log *slog.Logger) {
	log = log.With("component", "gossip-keys", "file", path)
	var last [sha256.Size]byte
	if b, err := os.ReadFile(path); err == nil {
		last = sha256.Sum256(b)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b, err := os.ReadFile(path)
		if err == nil {
			if sum := sha256.Sum256(b); sum == last {
				continue
			} else {
				last = sum
			}
		}
		var keys [][]byte
		if err == nil {
			keys, err = peer.ParseKeyFile(b)
		}
		if err == nil {
			var changed bool
			changed, err = m.SetKeys(keys)
			if changed {
				log.Info("gossip keyring updated from file", "keys", len(keys), "primary", peer.KeyID(keys[0]))
			}
		}
		if err != nil {
			if err.Error() != lastErr {
				log.Warn("gossip key file not applied; keeping the keyring in force", "err", err)
			}
			lastErr = err.Error()
			// Try again on the next tick even if the bytes stay the same:
			// a read error may clear.
			last = [sha256.Size]byte{}
			continue
		}
		lastErr = ""
	}
}

// plane is the running control plane: membership, admission and claim
// state, shared by the snapshot loop and the status endpoint.
type plane struct {
	c       config
	log     *slog.Logger
	members *peer.Membership
	gate    *peer.Gate
	claims  []claim.Config // claimConfigs, in claim mode
}

func newPlane(c config, log *slog.Logger, members *peer.Membership) *plane {
	return &plane{
		c: c, log: log, members: members,
		gate:   peer.NewGate(c.clusterCIDRs(), log),
		claims: c.claimConfigs(),
	}
}

// errClaimLost ends weftd when a settled claim loses a conflict (a lower
// name announces the same block, e.g. after a partition heals). Moving a
// live node to a new block would strand its pods, so weftd leaves, and its
// supervisor restarts it; the restart picks a free block.
var errClaimLost = errors.New("node CIDR claim lost")

// admit runs a membership snapshot through admission. In claim mode it
// also checks that our blocks (one per family) are still ours.
func (p *plane) admit(snap []peer.Peer) ([]peer.Peer, error) {
	self := p.members.Self()
	if p.c.claimMode() {
		for _, have := range self.PodCIDRs {
			for _, cfg := range p.claims {
				if cfg.Cluster.Addr().Is4() != have.Addr().Is4() {
					continue
				}
				if lost, by := cfg.Lost(self.Name, have, holders(snap)); lost {
					return nil, fmt.Errorf("%w: %s also announces %s and wins (lower name); restart to claim another block", errClaimLost, by, have)
				}
			}
		}
	}
	return p.gate.Apply(snap, self), nil
}

// annotate adds control-plane facts to a status answer.
func (p *plane) annotate(st *control.Status) {
	if st.Counters == nil {
		st.Counters = map[string]uint64{}
	}
	st.Counters["records_refused_admission"] = p.gate.Rejected()
	st.Counters["records_refused_now"] = uint64(len(p.gate.Current()))
	if keys, err := p.members.Keys(); err == nil {
		st.Counters["gossip_encrypted"] = 1
		st.Counters["gossip_keys"] = uint64(len(keys))
	} else {
		st.Counters["gossip_encrypted"] = 0
	}
	for _, r := range p.gate.Current() {
		for i := range st.Peers {
			if st.Peers[i].Name == r.Peer.Record.Name {
				st.Peers[i].State = peer.StateRefused
			}
		}
	}
}

// keyring adapts Membership to the control API's Keyring.
type keyring struct{ m *peer.Membership }

func (k keyring) List() ([]control.Key, error) {
	keys, err := k.m.Keys()
	if err != nil {
		return nil, err
	}
	out := make([]control.Key, len(keys))
	for i, key := range keys {
		out[i] = control.Key{ID: peer.KeyID(key), Primary: i == 0}
	}
	return out, nil
}

// resolve accepts a base64 key or, for keys already installed, its ID.
func (k keyring) resolve(s string) ([]byte, error) {
	if key, err := peer.DecodeKey(s); err == nil {
		return key, nil
	}
	keys, err := k.m.Keys()
	if err != nil {
		return nil, err
	}
	for _, key := range keys {
		if peer.KeyID(key) == s {
			return key, nil
		}
	}
	return nil, fmt.Errorf("%q is neither a base64 gossip key nor the ID of an installed one", s)
}

func (k keyring) Apply(op, s string) error {
	var key []byte
	var err error
	if op == "add" {
		key, err = peer.DecodeKey(s)
	} else {
		key, err = k.resolve(s)
	}
	if err != nil {
		return err
	}
	switch op {
	case "add":
		return k.m.AddKey(key)
	case "use":
		return k.m.UseKey(key)
	case "remove":
		return k.m.RemoveKey(key)
	}
	return fmt.Errorf("unknown key operation %q", op)
}

// holders converts live peers to claim holders.
func holders(ps []peer.Peer) []claim.Holder {
	var out []claim.Holder
	for _, p := range ps {
		for _, c := range p.Record.PodCIDRs {
			out = append(out, claim.Holder{Name: p.Record.Name, CIDR: c, Alive: p.State == peer.StateAlive, Seen: p.LastSeen})
		}
	}
	return out
}

// start runs the key file watcher, if there is a key file; the returned
// function stops it and waits for it.
func (p *plane) start(ctx context.Context) (stop func()) {
	if p.c.GossipKeyFile == "" || !p.members.Encrypted() {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchKeyFile(ctx, p.c.GossipKeyFile, p.c.KeyPoll, p.members, p.log)
	}()
	return func() { cancel(); <-done }
}

// withKeyActions adds the gossip key actions to a control API action map.
func (p *plane) withKeyActions(actions map[string]func(map[string]string) (any, error)) map[string]func(map[string]string) (any, error) {
	control.AddKeyActions(actions, keyring{p.members})
	return actions
}

// giveUp leaves the cluster after a fatal control-plane error, so peers
// withdraw this node's routes at once instead of after failure detection.
func (p *plane) giveUp(err error) error {
	p.log.Error("leaving the cluster", "err", err)
	if lerr := p.members.Leave(2 * time.Second); lerr != nil {
		p.log.Warn("graceful leave failed", "err", lerr)
	}
	return err
}
