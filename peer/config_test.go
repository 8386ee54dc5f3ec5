package peer

import (
	"net/netip"
	"testing"
	"time"
)

// A zero Config given to Join runs with DefaultConfig's numbers: one
// source of defaults. BindPort stays 0 (the kernel picks one).
func TestConfigDefaults(t *testing.T) {
	self := Record{Name: "n1"}
	got := Config{}.withDefaults(self)
	def := DefaultConfig()
	if got.Name != "n1" || got.Logger == nil || got.BindPort != 0 {
		t.Fatalf("name %q logger %v port %d", got.Name, got.Logger, got.BindPort)
	}
	if got.RejoinInterval != def.RejoinInterval || got.ReconnectInterval != def.ReconnectInterval ||
		got.DeadRetention != def.DeadRetention || got.ProbeInterval != def.ProbeInterval ||
		got.ProbeTimeout != def.ProbeTimeout || got.SuspicionMult != def.SuspicionMult ||
		got.GossipInterval != def.GossipInterval || got.NATKeepalive != def.NATKeepalive {
		t.Fatalf("filled %+v, want DefaultConfig's %+v", got, def)
	}
	mc := got.memberlist(netip.Addr{})
	if mc.ProbeInterval != def.ProbeInterval || mc.GossipInterval != def.GossipInterval || mc.SuspicionMult != def.SuspicionMult {
		t.Fatalf("memberlist config does not carry the defaults: %v %v %v", mc.ProbeInterval, mc.GossipInterval, mc.SuspicionMult)
	}
	if mc.AdvertiseAddr != mc.BindAddr {
		t.Fatalf("without a public address memberlist advertises %s, want the bound %s", mc.AdvertiseAddr, mc.BindAddr)
	}
	if mc := got.memberlist(netip.MustParseAddr("203.0.113.7")); mc.AdvertiseAddr != "203.0.113.7" || mc.BindAddr == "203.0.113.7" {
		t.Fatalf("with a public address memberlist binds %s and advertises %s; want the public one advertised only", mc.BindAddr, mc.AdvertiseAddr)
	}
	// A set field is kept.
	if c := (Config{ProbeInterval: time.Millisecond}).withDefaults(self); c.ProbeInterval != time.Millisecond {
		t.Fatalf("ProbeInterval %v, want the given 1ms", c.ProbeInterval)
	}
}
