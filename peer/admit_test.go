package peer

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var cluster = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}

func admitPeer(name, underlay string, cidrs ...string) Peer {
	r := Record{Name: name, Underlay: netip.MustParseAddrPort(underlay + ":4789"), Caps: CapVXLAN, VTEPMAC: [6]byte{2, 0, 0, 0, 0, 1}}
	for _, c := range cidrs {
		r.PodCIDRs = append(r.PodCIDRs, netip.MustParsePrefix(c))
	}
	return Peer{Record: r, State: StateAlive}
}

// sited puts p in site, with public address public ("" for none).
func sited(p Peer, site, public string) Peer {
	p.Record.Site = site
	if public != "" {
		p.Record.Public = netip.MustParseAddr(public)
	}
	return p
}

func TestAdmit(t *testing.T) {
	self := admitPeer("n1", "192.0.2.11", "10.244.1.0/24").Record
	self.Public = netip.MustParseAddr("203.0.113.11")
	for _, tc := range []struct {
		name   string
		snap   []Peer
		accept []string
		reason map[string]string // peer → part of its refusal reason
	}{
		{"good", []Peer{admitPeer("n2", "192.0.2.12", "10.244.2.0/24"), admitPeer("n3", "198.51.100.13", "10.244.3.0/24")}, []string{"n2", "n3"}, nil},
		{"no CIDR yet", []Peer{admitPeer("n2", "192.0.2.12")}, []string{"n2"}, nil},
		{"outside cluster", []Peer{admitPeer("n2", "192.0.2.12", "10.245.2.0/24")}, nil, map[string]string{"n2": "outside the cluster"}},
		{"wider than cluster", []Peer{admitPeer("n2", "192.0.2.12", "10.0.0.0/8")}, nil, map[string]string{"n2": "outside the cluster"}},
		{"too narrow", []Peer{admitPeer("n2", "192.0.2.12", "10.244.2.4/31")}, nil, map[string]string{"n2": "narrower"}},
		{"v6 without v6 cluster", []Peer{admitPeer("n2", "192.0.2.12", "fd00::/64")}, nil, map[string]string{"n2": "outside the cluster"}},
		{"overlaps self", []Peer{admitPeer("n0", "192.0.2.10", "10.244.1.128/25")}, nil, map[string]string{"n0": "this node's"}},
		{"loopback underlay", []Peer{admitPeer("n2", "127.0.0.1", "10.244.2.0/24")}, nil, map[string]string{"n2": "unusable"}},
		{"multicast underlay", []Peer{admitPeer("n2", "239.1.1.1", "10.244.2.0/24")}, nil, map[string]string{"n2": "unusable"}},
		{"unspecified underlay", []Peer{admitPeer("n2", "0.0.0.0", "10.244.2.0/24")}, nil, map[string]string{"n2": "unusable"}},
		{"link-local underlay", []Peer{admitPeer("n2", "169.254.1.1", "10.244.2.0/24")}, nil, map[string]string{"n2": "unusable"}},
		{"our underlay", []Peer{admitPeer("n2", "192.0.2.11", "10.244.2.0/24")}, nil, map[string]string{"n2": "this node's"}},
		{"our name", []Peer{admitPeer("n1", "192.0.2.99", "10.244.9.0/24")}, nil, map[string]string{"n1": "this node's name"}},
		// Another site may use our private range: only a site-mate's
		// address must differ, and nobody may claim our public one.
		{"our underlay, other site", []Peer{sited(admitPeer("n2", "192.0.2.11", "10.244.2.0/24"), "cloud-b", "")}, []string{"n2"}, nil},
		{"our public address", []Peer{sited(admitPeer("n2", "192.0.2.12", "10.244.2.0/24"), "cloud-b", "203.0.113.11")}, nil, map[string]string{"n2": "public address 203.0.113.11 is this node's"}},
		// Lower name wins, whatever the snapshot order.
		{"conflict", []Peer{admitPeer("n3", "192.0.2.13", "10.244.2.0/24"), admitPeer("n2", "192.0.2.12", "10.244.2.0/24")}, []string{"n2"}, map[string]string{"n3": "overlaps 10.244.2.0/24 of n2"}},
		// A refused peer does not block others: n3 loses to self, so n4 keeps 10.244.4.0/24.
		{"chain", []Peer{admitPeer("n3", "192.0.2.13", "10.244.1.0/24", "10.244.4.0/24"), admitPeer("n4", "192.0.2.14", "10.244.4.0/24")}, []string{"n4"}, map[string]string{"n3": "this node's"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.snap)
			acc, rej := Admit(tc.snap, self, cluster)
			var got []string
			for _, p := range acc {
				got = append(got, p.Record.Name)
			}
			if !slices.Equal(got, tc.accept) {
				t.Errorf("accepted %v, want %v", got, tc.accept)
			}
			if len(rej) != len(tc.reason) {
				t.Errorf("rejected %v, want %d", rej, len(tc.reason))
			}
			for _, r := range rej {
				if want, ok := tc.reason[r.Peer.Record.Name]; !ok || !strings.Contains(r.Reason, want) {
					t.Errorf("rejection of %s: %q, want it to mention %q", r.Peer.Record.Name, r.Reason, want)
				}
			}
			if !slices.EqualFunc(in, tc.snap, func(a, b Peer) bool { return a.Record.Equal(b.Record) }) {
				t.Error("Admit modified its input")
			}
		})
	}
}

func TestGateKeepsLastGood(t *testing.T) {
	self := admitPeer("n1", "192.0.2.11", "10.244.1.0/24").Record
	g := NewGate(cluster, testLogger(t))
	good := admitPeer("n2", "192.0.2.12", "10.244.2.0/24")
	if acc := g.Apply([]Peer{good}, self); len(acc) != 1 {
		t.Fatalf("accepted %v", acc)
	}
	// n2 now announces our block: refused, and its last good record stays.
	bad := admitPeer("n2", "192.0.2.12", "10.244.1.0/24")
	bad.Record.Generation = 2
	for range 3 {
		acc := g.Apply([]Peer{bad}, self)
		if len(acc) != 1 || acc[0].Record.PodCIDRs[0] != good.Record.PodCIDRs[0] {
			t.Fatalf("after a bad update: accepted %v, want the last good record", acc)
		}
	}
	if g.Rejected() != 1 || len(g.Current()) != 1 {
		t.Fatalf("rejected %d (want 1, counted once), current %v", g.Rejected(), g.Current())
	}
	// n2 goes away: its routes go, and a fresh bad record is not rescued.
	if acc := g.Apply(nil, self); len(acc) != 0 {
		t.Fatalf("after departure: %v", acc)
	}
	if acc := g.Apply([]Peer{bad}, self); len(acc) != 0 {
		t.Fatalf("a peer with no last good record was admitted: %v", acc)
	}
	if g.Rejected() != 2 {
		t.Fatalf("rejected %d, want 2", g.Rejected())
	}
	// Fixed record: admitted, nothing refused any more.
	if acc := g.Apply([]Peer{good}, self); len(acc) != 1 || len(g.Current()) != 0 {
		t.Fatalf("after the fix: %v, current %v", acc, g.Current())
	}
}

func FuzzAdmit(f *testing.F) {
	f.Add([]byte{10, 244, 2, 0, 24, 10, 244, 2, 0, 24})
	f.Fuzz(func(t *testing.T, b []byte) {
		self := admitPeer("m", "192.0.2.1", "10.244.1.0/24").Record
		var snap []Peer
		for i := 0; i+5 <= len(b) && i < 100; i += 5 {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte(b[i:i+4])), int(b[i+4]%33)).Masked()
			r := admitPeer(string(rune('a'+i/5%26))+string(rune('a'+i/130)), "192.0.2.2", "10.244.2.0/24").Record
			r.Underlay = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i/5)}), 4789)
			r.PodCIDRs = []netip.Prefix{p}
			snap = append(snap, Peer{Record: r})
		}
		acc, rej := Admit(snap, self, cluster)
		if len(acc)+len(rej) != len(snap) {
			t.Fatalf("%d accepted + %d rejected != %d", len(acc), len(rej), len(snap))
		}
		// The invariant the datapath relies on: no two admitted CIDRs
		// overlap, none overlaps ours, all are inside the cluster.
		for i, a := range acc {
			for _, c := range a.Record.PodCIDRs {
				if c.Overlaps(self.PodCIDRs[0]) || !cluster[0].Contains(c.Addr()) || c.Bits() < 16 {
					t.Fatalf("admitted %s", c)
				}
				for _, o := range acc[i+1:] {
					for _, d := range o.Record.PodCIDRs {
						if c.Overlaps(d) {
							t.Fatalf("admitted overlapping %s (%s) and %s (%s)", c, a.Record.Name, d, o.Record.Name)
						}
					}
				}
			}
		}
	})
}
