package peer

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestMembershipOverIPv6 runs gossip on an IPv6 underlay: three nodes bound
// to ::1, seeded with a bracketed [::1]:port as an operator writes it, with
// IPv6 underlay addresses in their records. Each must see the others alive
// with the IPv6 underlay they announced, and gossip must be bound to and
// advertise the IPv6 address.
func TestMembershipOverIPv6(t *testing.T) {
	lo6 := netip.IPv6Loopback()
	ln, err := net.ListenUDP("udp6", &net.UDPAddr{IP: lo6.AsSlice()})
	if err != nil {
		t.Fatalf("no IPv6 loopback to test on: %v", err)
	}
	port := ln.LocalAddr().(*net.UDPAddr).Port
	ln.Close()
	seed := net.JoinHostPort(lo6.String(), strconv.Itoa(port)) // "[::1]:port"

	var ms []*Membership
	for i := 1; i <= 3; i++ {
		cfg := fastConfig(t, fmt.Sprintf("n%d", i), seed)
		cfg.BindAddr = lo6
		if i == 1 {
			cfg.BindPort = port
		}
		r := nodeRecord(i)
		r.Underlay = netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%d", 10+i)), 4789)
		m, err := Join(cfg, r)
		if err != nil {
			t.Fatalf("Join n%d on [::1]: %v", i, err)
		}
		t.Cleanup(func() { m.Close() })
		if a := m.GossipAddr(); a.Addr() != lo6 {
			t.Fatalf("n%d gossip bound/advertised at %s, want [::1]", i, a)
		}
		ms = append(ms, m)
	}
	for _, m := range ms {
		snap := waitUpdate(t, m, "both others alive over IPv6", func(ps []Peer) bool {
			alive := 0
			for _, p := range ps {
				if p.State == StateAlive {
					alive++
				}
			}
			return alive == 2 // the snapshot holds the others
		})
		for _, p := range snap {
			want := fmt.Sprintf("[2001:db8:1::%d]:4789", 10+int(p.Record.Name[1]-'0'))
			if got := p.Record.Underlay.String(); got != want {
				t.Errorf("%s sees %s at underlay %s, want %s", m.Self().Name, p.Record.Name, got, want)
			}
			if p.gossipAddr.Addr() != lo6 {
				t.Errorf("%s gossips with %s at %s, want [::1]", m.Self().Name, p.Record.Name, p.gossipAddr)
			}
		}
	}
}

// TestMembershipMixedFamilies is a mixed cluster on loopback: n1 has IPv4
// only (127.0.0.1), n2 IPv6 only (::1), n3 both, gossip bound on both
// families. n1 and n2 share no family; each still sees the other alive,
// with its record, through n3, and each sees n3's second address.
func TestMembershipMixedFamilies(t *testing.T) {
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	port, err := netListenFreePort()
	if err != nil {
		t.Fatal(err)
	}
	join := func(i int, bind, alt netip.Addr, bindPort int, seed string) *Membership {
		cfg := fastConfig(t, fmt.Sprintf("n%d", i), seed)
		cfg.BindAddr, cfg.AltBindAddr, cfg.BindPort = bind, alt, bindPort
		r := nodeRecord(i)
		r.Underlay = netip.AddrPortFrom(bind, 4789)
		r.AltUnderlay = alt
		m, err := Join(cfg, r)
		if err != nil {
			t.Fatalf("Join n%d: %v", i, err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	n3 := join(3, lo4, lo6, port, "")
	n1 := join(1, lo4, netip.Addr{}, 0, net.JoinHostPort(lo4.String(), strconv.Itoa(port)))
	n2 := join(2, lo6, netip.Addr{}, 0, net.JoinHostPort(lo6.String(), strconv.Itoa(port)))
	bothAlive := func(ps []Peer) bool {
		n := 0
		for _, p := range ps {
			if p.State == StateAlive {
				n++
			}
		}
		return n == 2
	}
	for _, m := range []*Membership{n1, n2, n3} {
		snap := waitUpdate(t, m, "both others alive", bothAlive)
		for _, p := range snap {
			if p.Record.Name == "n3" && p.Record.AltUnderlay != lo6 {
				t.Errorf("%s sees n3's second underlay address as %v, want ::1", m.Self().Name, p.Record.AltUnderlay)
			}
		}
	}
	// Stable: no one is declared dead over the next probe rounds, though
	// n1 and n2 cannot probe each other directly.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range []*Membership{n1, n2} {
			for _, p := range m.Peers() {
				if p.State != StateAlive {
					t.Fatalf("%s sees %s %s", m.Self().Name, p.Record.Name, p.State)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTransportResolveFamilies: a node reached at the address memberlist
// has when this node has its family, else at its other family's address on
// the same port, else nowhere.
func TestTransportResolveFamilies(t *testing.T) {
	rec := func(name, underlay, alt string) Record {
		r := Record{Name: name, Site: "s", Underlay: netip.MustParseAddrPort(underlay)}
		if alt != "" {
			r.AltUnderlay = netip.MustParseAddr(alt)
		}
		return r
	}
	self := rec("me", "192.0.2.10:4789", "") // IPv4 only
	tr := newTestTransportAt(t, self, netip.MustParseAddrPort("192.0.2.10:7946"), nil)
	tr.setPeers([]Peer{
		{Record: rec("v4", "192.0.2.11:4789", ""), State: StateAlive},
		{Record: rec("v6", "[2001:db8::12]:4789", ""), State: StateAlive},
		{Record: rec("both6", "[2001:db8::13]:4789", "192.0.2.13"), State: StateAlive},
	})
	for _, tt := range []struct{ name, addr, want string }{
		{"v4", "192.0.2.11:7946", "192.0.2.11:7946"},
		{"v6", "[2001:db8::12]:7946", ""},
		{"both6", "[2001:db8::13]:7946", "192.0.2.13:7946"},
		{"seed", "[2001:db8::99]:7946", "[2001:db8::99]:7946"}, // no record: as given
	} {
		if got, _ := tr.resolve(memberlist.Address{Addr: tt.addr, Name: tt.name}); got != tt.want {
			t.Errorf("resolve %s at %s = %q, want %q", tt.name, tt.addr, got, tt.want)
		}
	}
}
