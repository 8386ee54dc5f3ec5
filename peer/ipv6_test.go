package peer

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
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
