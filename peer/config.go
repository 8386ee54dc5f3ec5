package peer

// Configuration of Join. DefaultConfig is the one source of default
// values: a zero field of a Config given to Join means DefaultConfig's
// value (withDefaults), and the memberlist configuration is built only
// from the filled Config.

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultGossipPort is memberlist's customary port, used by Serf and Consul too.
const DefaultGossipPort = 7946

// Config configures Join. Zero durations and counts mean DefaultConfig's
// value.
type Config struct {
	// Name is the memberlist node name; it must equal the record's Name.
	// Empty means the record's Name.
	Name string
	// BindAddr is the underlay address gossip binds to and advertises.
	// Binding to one address (not 0.0.0.0) keeps gossip off pod and
	// management interfaces and makes the advertised address predictable.
	BindAddr netip.Addr
	// AltBindAddr is the node's underlay address of the other family, if
	// it has one (Record.AltUnderlay): gossip binds it too, on the same
	// port, and peers that have only that family reach this node there
	// (transport.go). Invalid means none.
	AltBindAddr netip.Addr
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
	// NATKeepalive is how often a node without a public address (the
	// record's Public) tags every peer of another site that has one, to
	// keep its NAT's mappings open and tell them where it is seen
	// (transport.go). 0 means the DefaultConfig value.
	NATKeepalive time.Duration

	// memberlist tuning; zero means DefaultConfig's value (memberlist's
	// DefaultLANConfig, explained there).
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
		// A third of the 30 s a Linux conntrack UDP mapping lives
		// without replies (nf_conntrack_udp_timeout), so one lost
		// keepalive does not close it; also the bound on how long a
		// peer sends to a mapping the NAT forgot.
		NATKeepalive: 10 * time.Second,
		// memberlist's LAN values: a probe every second with a 500 ms
		// ack timeout, suspicion for 4*log(N+1) probe intervals before a
		// node is declared dead, and gossip to 3 nodes every 200 ms.
		ProbeInterval:  lan.ProbeInterval,
		ProbeTimeout:   lan.ProbeTimeout,
		SuspicionMult:  lan.SuspicionMult,
		GossipInterval: lan.GossipInterval,
	}
}

// withDefaults returns cfg with its zero fields filled: the durations and
// counts from DefaultConfig, Name from self, Logger from slog.Default.
// BindPort is left alone: 0 asks the kernel for a port.
func (cfg Config) withDefaults(self Record) Config {
	def := DefaultConfig()
	fill := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	fill(&cfg.RejoinInterval, def.RejoinInterval)
	fill(&cfg.ReconnectInterval, def.ReconnectInterval)
	fill(&cfg.DeadRetention, def.DeadRetention)
	fill(&cfg.NATKeepalive, def.NATKeepalive)
	fill(&cfg.ProbeInterval, def.ProbeInterval)
	fill(&cfg.ProbeTimeout, def.ProbeTimeout)
	fill(&cfg.GossipInterval, def.GossipInterval)
	if cfg.SuspicionMult <= 0 {
		cfg.SuspicionMult = def.SuspicionMult
	}
	if cfg.Name == "" {
		cfg.Name = self.Name
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// check validates a filled cfg against this node's record.
func (cfg Config) check(self Record) error {
	if cfg.Name != self.Name {
		return fmt.Errorf("config name %q differs from record name %q", cfg.Name, self.Name)
	}
	if !cfg.BindAddr.IsValid() {
		return errors.New("no bind address")
	}
	if a := cfg.AltBindAddr; a.IsValid() && a.Unmap().Is4() == cfg.BindAddr.Unmap().Is4() {
		return fmt.Errorf("second bind address %s is of the same family as %s", a, cfg.BindAddr)
	}
	if a := cfg.AltBindAddr; a.IsValid() && a.Unmap() != self.AltUnderlay {
		return fmt.Errorf("second bind address %s differs from the record's second underlay address %s", a, self.AltUnderlay)
	}
	if cfg.BindPort < 0 || cfg.BindPort > 65535 {
		return fmt.Errorf("bad bind port %d", cfg.BindPort)
	}
	return nil
}

// memberlist is the memberlist configuration for a filled cfg: the LAN
// profile with our name, address and tuning. It advertises the public
// address when the node has one (what most peers can reach; peers of its
// own site use the internal one, transport.go). Join adds the transport,
// the keyring, the logger and the delegates.
func (cfg Config) memberlist(public netip.Addr) *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.BindAddr.Unmap().String()
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = mc.BindAddr
	if public.IsValid() {
		mc.AdvertiseAddr = public.Unmap().String()
	}
	mc.AdvertisePort = cfg.BindPort
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.GossipInterval = cfg.GossipInterval
	return mc
}
