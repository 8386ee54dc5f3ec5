package peer

import (
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
		got.GossipInterval != def.GossipInterval {
		t.Fatalf("filled %+v, want DefaultConfig's %+v", got, def)
	}
	mc := got.memberlist()
	if mc.ProbeInterval != def.ProbeInterval || mc.GossipInterval != def.GossipInterval || mc.SuspicionMult != def.SuspicionMult {
		t.Fatalf("memberlist config does not carry the defaults: %v %v %v", mc.ProbeInterval, mc.GossipInterval, mc.SuspicionMult)
	}
	// A set field is kept.
	if c := (Config{ProbeInterval: time.Millisecond}).withDefaults(self); c.ProbeInterval != time.Millisecond {
		t.Fatalf("ProbeInterval %v, want the given 1ms", c.ProbeInterval)
	}
}
