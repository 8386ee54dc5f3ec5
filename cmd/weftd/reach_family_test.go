package main

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/peer"
)

// famRecord is a weft node of site with underlay addresses addrs (the
// first is Record.Underlay, a second of the other family AltUnderlay).
func famRecord(name, site string, addrs ...string) peer.Record {
	r := natRecord(name, site, addrs[0], "", "10.244."+name[len(name)-1:]+".0/24")
	if len(addrs) > 1 {
		r.AltUnderlay = netip.MustParseAddr(addrs[1])
	}
	return r
}

// Nodes of a mixed cluster: IPv4 only, IPv6 only, and both (either first).
var (
	m4  = famRecord("m1", "site1", "192.0.2.11")
	m6  = famRecord("m2", "site1", "2001:db8:1::12")
	m46 = famRecord("m3", "site1", "192.0.2.13", "2001:db8:1::13")
	m64 = famRecord("m4", "site1", "2001:db8:1::14", "192.0.2.14")
	// Across sites: IPv6 only, and an IPv4 public address on an IPv6 node.
	x6   = famRecord("x5", "site2", "2001:db8:2::15")
	x6p4 = func() peer.Record {
		r := famRecord("x6", "site2", "2001:db8:2::16")
		r.Public = netip.MustParseAddr("203.0.113.16")
		return r
	}()
)

func TestReachOfFamilies(t *testing.T) {
	addr := netip.MustParseAddr
	for _, tt := range []struct {
		name    string
		self, r peer.Record
		want    netip.Addr // invalid: unreachable
	}{
		{"v6 to v6", m6, x6, addr("2001:db8:2::15")},
		{"v6 to v6 same site", m6, m64, addr("2001:db8:1::14")},
		{"v4 to both: its IPv4", m4, m46, addr("192.0.2.13")},
		{"v6 to both: its IPv6 (the second address)", m6, m46, addr("2001:db8:1::13")},
		{"v4 to both, IPv6 first: its IPv4 (the second address)", m4, m64, addr("192.0.2.14")},
		{"v6 to both, IPv6 first: its IPv6", m6, m64, addr("2001:db8:1::14")},
		// Both families on both ends: IPv4 from either end, whichever
		// each has first, so that each receiver expects the address the
		// other sends from.
		{"both to both: IPv4", m46, m64, addr("192.0.2.14")},
		{"both (IPv6 first) to both: IPv4", m64, m46, addr("192.0.2.13")},
		{"both to v6", m46, m6, addr("2001:db8:1::12")},
		{"both to v4", m64, m4, addr("192.0.2.11")},
		{"v4 to v6: none", m4, m6, netip.Addr{}},
		{"v6 to v4: none", m6, m4, netip.Addr{}},
		{"v4 to v6 in another site: none", m4, x6, netip.Addr{}},
		// A public address counts only in a family this node has.
		{"v4 to v6 with an IPv4 public address: public", m4, x6p4, addr("203.0.113.16")},
		{"v6 to v6 with an IPv4 public address: internal", m6, x6p4, addr("2001:db8:2::16")},
	} {
		got := reachOf(tt.self, tt.r)
		switch {
		case !tt.want.IsValid():
			if got.why == "" || got.addr.IsValid() || got.relay != "" {
				t.Errorf("%s: reachOf(%s, %s) = %+v, want unreachable with a reason", tt.name, tt.self.Name, tt.r.Name, got)
			}
		case got.addr != tt.want || got.why != "":
			t.Errorf("%s: reachOf(%s, %s) = %+v, want %s", tt.name, tt.self.Name, tt.r.Name, got, tt.want)
		}
	}
	// A node whose public address is of a family the other end lacks:
	// neither end waits for the other, both go through a relay (or none).
	pub6 := famRecord("y7", "site3", "192.0.2.17")
	pub6.Public = netip.MustParseAddr("2001:db8:ff::17")
	nat4 := famRecord("z8", "site4", "198.51.100.18")
	nat4.Caps |= peer.CapBehindNAT
	if ab, ba := reachOf(pub6, nat4), reachOf(nat4, pub6); !ab.noRelay || !ba.noRelay {
		t.Errorf("IPv6-public node and IPv4 node behind NAT: %+v / %+v, want both to need a relay", ab, ba)
	}
	if why := reachOf(m4, m6).why; !strings.Contains(why, "IPv4 only") || !strings.Contains(why, "IPv6 only") {
		t.Errorf("reason %q does not say which family each end has", why)
	}
}

// TestReachFamiliesSymmetric: for every pair of a mixed cluster, both
// ends reach each other in one family, or neither reaches the other.
func TestReachFamiliesSymmetric(t *testing.T) {
	all := []peer.Record{m4, m6, m46, m64, x6}
	for _, a := range all {
		for _, b := range all {
			if a.Name == b.Name {
				continue
			}
			ab, ba := reachOf(a, b), reachOf(b, a)
			if (ab.why == "") != (ba.why == "") {
				t.Errorf("%s→%s %+v but %s→%s %+v", a.Name, b.Name, ab, b.Name, a.Name, ba)
				continue
			}
			if ab.why == "" && ab.addr.Is4() != ba.addr.Is4() {
				t.Errorf("%s→%s over %s but %s→%s over %s: families differ", a.Name, b.Name, ab.addr, b.Name, a.Name, ba.addr)
			}
		}
	}
}

// TestPeerSetFamilies: the router gets each reachable peer at the address
// of the common family (VXLAN underlay and WireGuard endpoint alike) and
// no entry for a peer with no family in common.
func TestPeerSetFamilies(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, policy := range []overlay.Policy{overlay.PolicyVXLAN, overlay.PolicyWireGuard} {
		peers, n := peerSet(nil, alive(m6, m46, m64), alive(m6), m4, newTransportChooser(policy, log))
		got := map[string]overlay.Peer{}
		for _, p := range peers {
			got[p.Name] = p
		}
		if n != 2 || len(peers) != 2 {
			t.Fatalf("%s: %d routed of %d peers (%v), want m3 and m4 only", policy, n, len(peers), peers)
		}
		if _, ok := got["m2"]; ok {
			t.Errorf("%s: IPv6-only m2 in an IPv4-only node's table (or as standby)", policy)
		}
		for name, want := range map[string]string{"m3": "192.0.2.13", "m4": "192.0.2.14"} {
			p := got[name]
			if p.Underlay != netip.AddrPortFrom(netip.MustParseAddr(want), 4789) {
				t.Errorf("%s: %s at %s, want %s:4789", policy, name, p.Underlay, want)
			}
			if policy == overlay.PolicyWireGuard && p.WireGuard.Endpoint != netip.AddrPortFrom(netip.MustParseAddr(want), 51820) {
				t.Errorf("%s: %s WireGuard endpoint %s, want %s:51820", policy, name, p.WireGuard.Endpoint, want)
			}
		}
	}
}

// TestPickRelayFamilies: a relay's public address must be of a family
// both ends have.
func TestPickRelayFamilies(t *testing.T) {
	relay6 := natRecord("r6", "cloud-r", "2001:db8:9::1", "2001:db8:9::1", "10.244.9.0/24")
	if got := pickRelay(p1, b3, alive(relay6)); got != "" {
		t.Errorf("IPv4 pair relayed through %s, whose public address is IPv6", got)
	}
	relay4 := natRecord("r4", "cloud-r", "203.0.113.9", "203.0.113.9", "10.244.9.0/24")
	if got := pickRelay(p1, b3, alive(relay6, relay4)); got != "r4" {
		t.Errorf("relay %q, want r4 (IPv4 public address, like both ends)", got)
	}
}
