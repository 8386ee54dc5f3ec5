package netpol

// The controller: whenever the cluster's state changes (a kick from the
// source, coalesced) and every Resync, it compiles the whole State and
// applies the Ruleset. It never applies before the source has synced, so
// a starting weftd leaves the previous weftd's table in force until it has
// its own complete view (fail closed across restarts and hand-offs: the
// table outlives the process, see README: NetworkPolicy).

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"sync"
	"time"
)

// Source supplies whole States. Changes delivers a value (coalesced:
// capacity one) whenever State might answer differently.
type Source interface {
	WaitSynced(ctx context.Context) error
	State() State
	Changes() <-chan struct{}
}

// Enforcer is the kernel side: Table on Linux, a recording fake in tests.
type Enforcer interface {
	Apply(*Ruleset) error
	Counters() (map[string]Drops, error)
}

// Drops are the packets dropped for one policy, by direction.
type Drops struct{ Ingress, Egress uint64 }

// SpoofedCounter names the drops of packets from a pod with a source
// address that is not its own (the table's spoofed-source rule), beside
// the policies' in Counters, as egress.
const SpoofedCounter = "spoofed-source"

// Config is the controller's configuration.
type Config struct {
	Node string // this node's name (spec.nodeName of its pods)
	// Resync is how often the Ruleset is applied again with no change,
	// repairing what others did to the table. DefaultConfig: 30 s.
	Resync time.Duration
	Log    *slog.Logger
}

// DefaultConfig returns a Config for node with the default resync.
func DefaultConfig(node string) Config {
	return Config{Node: node, Resync: 30 * time.Second, Log: slog.Default()}
}

// Controller keeps an Enforcer applied to a Source's State.
type Controller struct {
	cfg Config
	src Source
	enf Enforcer

	last *Ruleset // what the last successful apply wrote; Run's goroutine only

	mu     sync.Mutex
	status Status
}

// Status is what the controller last did, for weftctl status and metrics.
type Status struct {
	Synced    bool      // the first apply has happened
	Policies  int       // policies compiled
	Selecting int       // of them, those selecting a pod on this node
	Rules     int       // nftables rules in force
	Pods      int       // pods in the State
	Applies   uint64    // successful applies
	Failures  uint64    // failed applies
	Invalid   int       // policies left out by Compile (errors)
	LastApply time.Time // when the last successful apply finished
	LastTook  time.Duration
	LastError string
	// PolicyIDs maps each compiled policy's namespace/name to its ID.
	PolicyIDs map[string]string
}

// NewController returns a controller; Run starts it.
func NewController(cfg Config, src Source, enf Enforcer) *Controller {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultConfig(cfg.Node).Resync
	}
	return &Controller{cfg: cfg, src: src, enf: enf}
}

// Run waits for the source to sync, then applies on every change and
// every Resync until ctx ends. It returns nil when ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if err := c.src.WaitSynced(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	t := time.NewTicker(c.cfg.Resync)
	defer t.Stop()
	force := true
	for {
		c.sync(force)
		select {
		case <-ctx.Done():
			return nil
		case <-c.src.Changes():
			force = false
		case <-t.C:
			force = true
		}
	}
}

// sync applies the State's Ruleset; unless force, only when it differs
// from the last one applied (most Pod updates change nothing a policy
// reads). The resync forces: it is what repairs drift.
func (c *Controller) sync(force bool) error {
	start := time.Now()
	st := c.src.State()
	rs, errs := Compile(c.cfg.Node, st)
	if !force && c.last != nil && reflect.DeepEqual(rs, c.last) {
		return nil
	}
	for _, err := range errs {
		c.cfg.Log.Warn("NetworkPolicy not enforced", "err", err)
	}
	err := c.enf.Apply(rs)
	if err == nil {
		c.last = rs
	} else {
		c.last = nil
	}
	took := time.Since(start)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.status.Failures++
		c.status.LastError = err.Error()
		c.cfg.Log.Warn("NetworkPolicy not applied", "err", err)
		return err
	}
	ids := make(map[string]string, len(rs.Policies))
	sel := 0
	for _, p := range rs.Policies {
		ids[p.Key] = p.ID
		if p.Selected != "" {
			sel++
		}
	}
	c.status = Status{
		Synced: true, Policies: len(rs.Policies), Selecting: sel, Rules: rs.Rules(), Pods: len(st.Pods),
		Applies: c.status.Applies + 1, Failures: c.status.Failures, Invalid: len(errs),
		LastApply: time.Now(), LastTook: took, PolicyIDs: ids,
	}
	if len(errs) > 0 {
		c.status.LastError = errors.Join(errs...).Error()
	}
	c.cfg.Log.Debug("NetworkPolicy applied", "policies", len(rs.Policies), "rules", c.status.Rules, "took", took)
	return nil
}

// Status returns the last sync's status.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Counters reads the enforcer's drop counters, by policy namespace/name.
func (c *Controller) Counters() (map[string]Drops, error) {
	byID, err := c.enf.Counters()
	if err != nil {
		return nil, err
	}
	st := c.Status()
	out := make(map[string]Drops, len(st.PolicyIDs))
	for key, id := range st.PolicyIDs {
		out[key] = byID[id]
	}
	if d, ok := byID[SpoofedCounter]; ok {
		out[SpoofedCounter] = d
	}
	return out, nil
}
