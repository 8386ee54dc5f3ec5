// Package claim hands out node CIDRs in standalone mode (no Kubernetes to
// set Node.spec.podCIDRs): every node claims a free block of a fixed size
// from the cluster CIDR and announces it in its gossiped record.
//
// There is no coordinator, so the rules make every node reach the same
// verdict from what gossip tells it:
//
//   - A block is held by every node that announces it and is alive, and
//     for Config.Grace after it was last seen alive by a node that died or
//     left: a crashed or restarting node gets its block back, and pods
//     still holding its addresses are not handed to someone else.
//   - Two nodes announcing overlapping blocks: the lower name keeps it.
//     The same rule decides admission (peer.Admit), so routing and claims
//     agree on the winner. The loser picks another block.
//   - A fresh pick starts at a block derived from a hash of the node name
//     and probes upward. Nodes joining at the same moment (they cannot
//     see each other's claims yet) rarely start at the same block, which
//     keeps the conflict-and-retry path rare.
//
// A dual-stack node claims one block per family, each with its own
// Config; blocks of different families never overlap, so the families'
// claims are independent.
//
// The claim is persisted in the state directory (one file per family) and
// offered again after a restart, so a node keeps its block (and its pods their addresses) for as
// long as nobody with a lower name took it during the grace period.
//
// This package is pure logic plus a small file store; weftd drives it
// (cmd/weftd/claim.go), including the settle period that keeps an
// unsettled claim out of the datapath.
package claim

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/ipam/diskfile"
)

// ErrExhausted is returned by Pick when every block is held.
var ErrExhausted = errors.New("no free node CIDR block in the cluster CIDR")

// Config is the claim policy; all nodes of a cluster must agree on it.
type Config struct {
	// Cluster is the range blocks are carved from.
	Cluster netip.Prefix
	// Bits is the prefix length of one node's block (24 → a /24).
	Bits int
	// Grace is how long a dead or departed node's block stays reserved.
	Grace time.Duration
}

// DefaultConfig returns the policy weftd starts from: /24 blocks (254 pods
// per node, Kubernetes' default node CIDR size) and ten minutes of grace,
// long enough to reboot a host, short enough that a dead node's space
// comes back the same hour.
func DefaultConfig(cluster netip.Prefix) Config {
	return Config{Cluster: cluster, Bits: 24, Grace: 10 * time.Minute}
}

// Validate checks that blocks of Bits fit the cluster CIDR.
func (c Config) Validate() error {
	if !c.Cluster.IsValid() || c.Cluster != c.Cluster.Masked() {
		return fmt.Errorf("claim: cluster CIDR %s is not a masked prefix", c.Cluster)
	}
	max := 30
	if c.Cluster.Addr().Is6() {
		max = 126
	}
	if c.Bits < c.Cluster.Bits() || c.Bits > max {
		return fmt.Errorf("claim: block size /%d does not fit cluster CIDR %s (want /%d../%d)", c.Bits, c.Cluster, c.Cluster.Bits(), max)
	}
	if c.Bits-c.Cluster.Bits() > 24 {
		// 16M blocks: probing would be slow and the gossip could not
		// carry that many nodes anyway.
		return fmt.Errorf("claim: /%d blocks in %s are too many (at most 2^24)", c.Bits, c.Cluster)
	}
	if c.Grace < 0 {
		return fmt.Errorf("claim: negative grace %s", c.Grace)
	}
	return nil
}

// Holder is one other node's announced block as gossip reports it.
type Holder struct {
	Name  string
	CIDR  netip.Prefix
	Alive bool
	// Seen is when the holder was last known alive; only used when !Alive.
	Seen time.Time
}

// holds reports whether h still reserves its block at now.
func (c Config) holds(h Holder, now time.Time) bool {
	return h.CIDR.IsValid() && (h.Alive || now.Sub(h.Seen) < c.Grace)
}

// Fits reports whether p is a block this policy could hand out.
func (c Config) Fits(p netip.Prefix) bool {
	return p.IsValid() && p == p.Masked() && p.Bits() == c.Bits && c.Cluster.Contains(p.Addr())
}

// Keep reports whether name may keep (or take back) block want: it fits
// the policy and no holder with a lower name reserves an overlapping
// block. Holders with a higher name overlapping want lose to us; they
// move on their own.
func (c Config) Keep(name string, want netip.Prefix, holders []Holder, now time.Time) (bool, string) {
	if !c.Fits(want) {
		return false, fmt.Sprintf("%s does not fit /%d blocks of %s", want, c.Bits, c.Cluster)
	}
	for _, h := range holders {
		if h.Name != name && h.Name < name && c.holds(h, now) && h.CIDR.Overlaps(want) {
			return false, fmt.Sprintf("%s is held by %s", want, h.Name)
		}
	}
	return true, ""
}

// Lost reports whether a live holder with a lower name announces a block
// overlapping have: the one test a settled node keeps running. Dead
// holders are ignored here; a settled block is not given up for a node
// that is gone.
func (c Config) Lost(name string, have netip.Prefix, holders []Holder) (bool, string) {
	for _, h := range holders {
		if h.Alive && h.Name != name && h.Name < name && h.CIDR.IsValid() && h.CIDR.Overlaps(have) {
			return true, h.Name
		}
	}
	return false, ""
}

// Pick returns the block name should announce: want if Keep allows it,
// else the first block, probing upward from a hash of name, that no
// holder reserves. want may be the zero Prefix.
func (c Config) Pick(name string, want netip.Prefix, holders []Holder, now time.Time) (netip.Prefix, error) {
	if err := c.Validate(); err != nil {
		return netip.Prefix{}, err
	}
	if want.IsValid() {
		if ok, _ := c.Keep(name, want, holders, now); ok {
			return want, nil
		}
	}
	var held []netip.Prefix
	for _, h := range holders {
		if h.Name != name && c.holds(h, now) {
			held = append(held, h.CIDR)
		}
	}
	n := uint64(1) << (c.Bits - c.Cluster.Bits())
	f := fnv.New64a()
	f.Write([]byte(name))
	start := f.Sum64() % n
	for i := uint64(0); i < n; i++ {
		p := c.block((start + i) % n)
		free := true
		for _, h := range held {
			if h.Overlaps(p) {
				free = false
				break
			}
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("claim for %s: %w (%s, /%d blocks, %d held)", name, ErrExhausted, c.Cluster, c.Bits, len(held))
}

// block returns the i-th block of the cluster CIDR.
func (c Config) block(i uint64) netip.Prefix {
	base := new(big.Int).SetBytes(c.Cluster.Addr().AsSlice())
	off := new(big.Int).Lsh(new(big.Int).SetUint64(i), uint(c.Cluster.Addr().BitLen()-c.Bits))
	v := base.Add(base, off).Bytes()
	buf := make([]byte, c.Cluster.Addr().BitLen()/8)
	copy(buf[len(buf)-len(v):], v)
	a, _ := netip.AddrFromSlice(buf)
	return netip.PrefixFrom(a, c.Bits)
}

// State is a node's persisted claim.
type State struct {
	Version int          `json:"version"`
	Name    string       `json:"name"`
	Cluster netip.Prefix `json:"clusterCIDR"`
	CIDR    netip.Prefix `json:"cidr"`
	// Settled is when weftd configured its datapath for CIDR.
	Settled time.Time `json:"settled"`
}

// FileName is the IPv4 claim file inside weftd's state directory,
// FileName6 the IPv6 one.
const (
	FileName  = "node-cidr.json"
	FileName6 = "node-cidr6.json"
)

// fileFor is the claim file of the family of cluster.
func fileFor(cluster netip.Prefix) string {
	if cluster.Addr().Is6() {
		return FileName6
	}
	return FileName
}

const stateVersion = 1

// Load reads the claim persisted in dir for the family of cluster. A
// missing file yields an error wrapping os.ErrNotExist.
func Load(dir string, cluster netip.Prefix) (State, error) {
	path := filepath.Join(dir, fileFor(cluster))
	b, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("load claim: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("load claim %s: %w", path, err)
	}
	if s.Version != stateVersion {
		return State{}, fmt.Errorf("load claim %s: version %d, want %d", path, s.Version, stateVersion)
	}
	return s, nil
}

// Save persists s in dir, in the file of s.Cluster's family, crash-safely
// (diskfile.Write), so a crash leaves the old claim or the new one, never
// half of either.
func Save(dir string, s State) error {
	s.Version = stateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("save claim: %w", err)
	}
	// 0600: only weftd reads its claim.
	if err := diskfile.Write(filepath.Join(dir, fileFor(s.Cluster)), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save claim: %w", err)
	}
	return nil
}
