package peer

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestParseTag(t *testing.T) {
	b := append(appendTag(nil, "onprem-1"), 1, 2, 3)
	name, rest, err := parseTag(b)
	if err != nil || name != "onprem-1" || !bytes.Equal(rest, []byte{1, 2, 3}) {
		t.Fatalf("parseTag = %q %x %v", name, rest, err)
	}
	if name, rest, err := parseTag(appendTag(nil, "n")); err != nil || name != "n" || len(rest) != 0 {
		t.Fatalf("keepalive: %q %x %v", name, rest, err)
	}
	for what, in := range map[string][]byte{
		"empty":         nil,
		"marker only":   {tagMsg},
		"zero length":   {tagMsg, 0, 'a'},
		"past end":      {tagMsg, 5, 'a', 'b'},
		"too long":      append([]byte{tagMsg, MaxNameLen + 1}, strings.Repeat("a", MaxNameLen+1)...),
		"control char":  {tagMsg, 2, 'a', '\n'},
		"not utf8":      {tagMsg, 1, 0xff},
		"other message": {byte(4), 1, 'a'},
	} {
		if _, _, err := parseTag(in); err == nil {
			t.Errorf("%s: parseTag(%x) accepted", what, in)
		}
	}
}

func TestParseSeen(t *testing.T) {
	for _, a := range []netip.AddrPort{netip.MustParseAddrPort("203.0.113.4:40123"), netip.MustParseAddrPort("[2001:db8::4]:7946")} {
		got, err := parseSeen(appendSeen(nil, a))
		if err != nil || got != a {
			t.Errorf("round trip %s: %s %v", a, got, err)
		}
	}
	for what, in := range map[string][]byte{
		"empty":      nil,
		"marker":     {seenMsg},
		"family 5":   {seenMsg, 5, 1, 2, 3, 4, 0, 1},
		"short v4":   {seenMsg, 4, 1, 2, 3},
		"long v4":    {seenMsg, 4, 1, 2, 3, 4, 0, 1, 9},
		"v6 as v4":   append([]byte{seenMsg, 4}, make([]byte, 18)...),
		"other type": {tagMsg, 4, 1, 2, 3, 4, 0, 1},
	} {
		if _, err := parseSeen(in); err == nil {
			t.Errorf("%s: parseSeen(%x) accepted", what, in)
		}
	}
}

func FuzzParseSeen(f *testing.F) {
	f.Add(appendSeen(nil, netip.MustParseAddrPort("203.0.113.4:40123")))
	f.Add(appendSeen(nil, netip.MustParseAddrPort("[2001:db8::4]:7946")))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := parseSeen(in)
		if err != nil {
			return
		}
		if got := appendSeen(nil, a); !bytes.Equal(got, in) {
			t.Fatalf("re-encoded %x, want %x", got, in)
		}
	})
}

func FuzzParseTag(f *testing.F) {
	f.Add(appendTag(nil, "n1"))
	f.Add(append(appendTag(nil, "onprem-1"), 0, 1))
	f.Add([]byte{tagMsg, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		name, rest, err := parseTag(in)
		if err != nil {
			return
		}
		if got := append(appendTag(nil, name), rest...); !bytes.Equal(got, in) {
			t.Fatalf("re-encoded %x, want %x", got, in)
		}
	})
}

// newTestTransport is a transport on a loopback port with self as its
// record.
func newTestTransport(t *testing.T, self Record) *transport {
	return newTestTransportAt(t, self, netip.AddrPort{}, nil)
}

// newTestTransportAt is newTestTransport with the bound address it
// believes it has (invalid: the real one) and an onNAT callback.
func newTestTransportAt(t *testing.T, self Record, local netip.AddrPort, onNAT func()) *transport {
	t.Helper()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, BindPort: 0})
	if err != nil {
		t.Fatal(err)
	}
	if !local.IsValid() {
		local = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(nt.GetAutoBindPort()))
	}
	tr := newTransport(nt, nil, self, local, onNAT)
	t.Cleanup(func() { tr.Shutdown() })
	return tr
}

func TestTransportResolve(t *testing.T) {
	rec := func(name, site, underlay, public string, caps uint32) Record {
		r := Record{Name: name, Site: site, Underlay: netip.MustParseAddrPort(underlay), Caps: caps}
		if public != "" {
			r.Public = netip.MustParseAddr(public)
		}
		return r
	}
	self := rec("a1", "cloud-a", "192.0.2.11:4789", "203.0.113.11", CapGossipTag)
	tr := newTestTransport(t, self)
	tr.setPeers([]Peer{
		{Record: rec("a2", "cloud-a", "192.0.2.12:4789", "203.0.113.12", CapGossipTag), State: StateAlive},
		{Record: rec("b1", "cloud-b", "192.0.2.11:4789", "203.0.113.21", CapGossipTag), State: StateAlive},
		{Record: rec("p1", "onprem", "198.51.100.11:4789", "", CapGossipTag|CapBehindNAT), State: StateAlive},
		{Record: rec("old", "onprem", "198.51.100.12:4789", "", CapBehindNAT), State: StateAlive},
		{Record: rec("r1", "routed", "198.51.100.41:4789", "", CapGossipTag), State: StateAlive},
	})
	tr.note("p1", &net.UDPAddr{IP: net.ParseIP("203.0.113.31"), Port: 40123}, time.Now())

	for _, tt := range []struct {
		a      memberlist.Address
		want   string
		tagged bool
	}{
		// Same site: the internal address instead of the advertised public one.
		{memberlist.Address{Addr: "203.0.113.12:7946", Name: "a2"}, "192.0.2.12:7946", true},
		// Another site, public: as advertised (the overlapping private
		// 192.0.2.11 is never used across sites).
		{memberlist.Address{Addr: "203.0.113.21:7946", Name: "b1"}, "203.0.113.21:7946", true},
		// Another site, no public address: where its packets come from.
		{memberlist.Address{Addr: "198.51.100.11:7946", Name: "p1"}, "203.0.113.31:40123", true},
		// Behind NAT, not seen yet: nowhere (its address is private to its site).
		{memberlist.Address{Addr: "198.51.100.12:7946", Name: "old"}, "", false},
		// Another site, no public address, not behind NAT: routed, as advertised.
		{memberlist.Address{Addr: "198.51.100.41:7946", Name: "r1"}, "198.51.100.41:7946", true},
		// A seed (no name) or a node we have no record of.
		{memberlist.Address{Addr: "203.0.113.99:7946"}, "203.0.113.99:7946", false},
		{memberlist.Address{Addr: "203.0.113.98:7946", Name: "new"}, "203.0.113.98:7946", false},
	} {
		got, tagged := tr.resolve(tt.a)
		if got != tt.want || tagged != tt.tagged {
			t.Errorf("resolve(%v) = %s tagged=%v, want %s tagged=%v", tt.a, got, tagged, tt.want, tt.tagged)
		}
	}
	// A learned address expires.
	tr.note("p1", &net.UDPAddr{IP: net.ParseIP("203.0.113.31"), Port: 40123}, time.Now().Add(-seenTTL-time.Second))
	if got, _ := tr.resolve(memberlist.Address{Addr: "198.51.100.11:7946", Name: "p1"}); got != "" {
		t.Errorf("stale learned address still used: %s", got)
	}
	if _, err := tr.WriteToAddress([]byte("x"), memberlist.Address{Addr: "198.51.100.11:7946", Name: "p1"}); !errors.Is(err, errNoPath) || tr.nNoPath.Load() != 1 {
		t.Errorf("send to a node with no path: %v (counted %d), want errNoPath", err, tr.nNoPath.Load())
	}
}

// TestTransportTagsAndKeepalive runs two transports on loopback: packets
// to a peer that takes tags arrive untagged at memberlist's side, the
// receiver learns the sender's address, and a node without a public
// address sends keepalives only to peers of other sites that have one.
func TestTransportTagsAndKeepalive(t *testing.T) {
	natted := newTestTransport(t, Record{Name: "p1", Site: "onprem", Underlay: netip.MustParseAddrPort("127.0.0.1:4789"), Caps: CapGossipTag})
	public := newTestTransport(t, Record{Name: "a1", Site: "cloud-a", Underlay: netip.MustParseAddrPort("127.0.0.1:4789"), Public: netip.MustParseAddr("127.0.0.1"), Caps: CapGossipTag})
	port := uint16(public.GetAutoBindPort())
	natted.setPeers([]Peer{
		{Record: public.self, State: StateAlive, gossipAddr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)},
		// Same site, and another site without a public address: no keepalive.
		{Record: Record{Name: "p2", Site: "onprem", Underlay: netip.MustParseAddrPort("127.0.0.1:4789"), Caps: CapGossipTag}, State: StateAlive, gossipAddr: netip.MustParseAddrPort("127.0.0.1:9")},
		{Record: Record{Name: "b3", Site: "cloud-b", Underlay: netip.MustParseAddrPort("127.0.0.1:4789"), Caps: CapGossipTag}, State: StateAlive, gossipAddr: netip.MustParseAddrPort("127.0.0.1:9")},
	})

	natted.keepalive()
	if n := natted.nKeepalive.Load(); n != 1 {
		t.Fatalf("%d keepalives sent, want 1 (to a1 only)", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if a, ok := public.Seen("p1"); ok {
			if a.Port() != uint16(natted.GetAutoBindPort()) {
				t.Fatalf("a1 sees p1 at %s, want port %d", a, natted.GetAutoBindPort())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a1 never learned p1's address from its keepalive")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The keepalive's answer says where it came from: here the bound
	// address itself, so no NAT.
	waitFor := func(what string, f func() bool) {
		for !f() {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(200 * time.Millisecond) // the answer to the keepalive above
	if natted.behindNAT.Load() {
		t.Fatal("behind NAT, though the public peer saw the bound address")
	}
	// Bound elsewhere than seen: a NAT between.
	kicked := make(chan struct{}, 1)
	nat2 := newTestTransportAt(t, Record{Name: "p3", Site: "onprem", Underlay: netip.MustParseAddrPort("192.0.2.13:4789"), Caps: CapGossipTag},
		netip.MustParseAddrPort("192.0.2.13:7946"), func() { kicked <- struct{}{} })
	nat2.setPeers([]Peer{{Record: public.self, State: StateAlive, gossipAddr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}})
	nat2.keepalive()
	waitFor("the answer to a keepalive from behind NAT did not set BehindNAT", nat2.behindNAT.Load)
	select {
	case <-kicked:
	case <-time.After(5 * time.Second):
		t.Fatal("onNAT not called")
	}

	// A memberlist packet to a tagging peer arrives without the tag.
	if _, err := natted.WriteToAddress([]byte("payload"), memberlist.Address{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))), Name: "a1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-public.PacketCh():
		if string(p.Buf) != "payload" {
			t.Fatalf("memberlist got %q, want the untagged payload", p.Buf)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no packet delivered")
	}
	// A malformed tag is counted and dropped.
	if _, err := natted.NetTransport.WriteTo([]byte{tagMsg, 9, 'x'}, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))); err != nil {
		t.Fatal(err)
	}
	for public.nBadTag.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("bad tag not counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
