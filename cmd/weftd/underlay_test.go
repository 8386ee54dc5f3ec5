package main

import (
	"net/netip"
	"strings"
	"testing"
)

// TestUnderlayFlag covers --underlay-addr in either family: an IPv6
// address is taken as given (bracketed or not), and addresses peers could
// not reach are refused with the flag named.
func TestUnderlayFlag(t *testing.T) {
	base := []string{"--name", "n1", "--pod-cidr", "10.244.1.0/24"}
	for _, tc := range []struct {
		addr, want string
	}{
		{"192.0.2.11", "192.0.2.11"},
		{"2001:db8:1::11", "2001:db8:1::11"},
		{"[2001:db8:1::11]", "2001:db8:1::11"},
		{"::ffff:192.0.2.11", "192.0.2.11"},
		{"::1", "::1"},
	} {
		c, err := parseFlags(append(base, "--underlay-addr", tc.addr))
		if err != nil {
			t.Errorf("--underlay-addr %s: %v", tc.addr, err)
			continue
		}
		if c.UnderlayAddr != netip.MustParseAddr(tc.want) {
			t.Errorf("--underlay-addr %s: got %s, want %s", tc.addr, c.UnderlayAddr, tc.want)
		}
	}
	for _, tc := range []struct {
		addr, want string
	}{
		{"fe80::1", "link-local"},
		{"fe80::1%eth0", "zone"},
		{"::", "not a unicast"},
		{"0.0.0.0", "not a unicast"},
		{"ff02::1", "not a unicast"},
		{"224.0.0.1", "not a unicast"},
		{"169.254.1.1", "link-local"},
		{"2001:db8::zz", "--underlay-addr"},
	} {
		_, err := parseFlags(append(base, "--underlay-addr", tc.addr))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--underlay-addr") {
			t.Errorf("--underlay-addr %s: error %v, want one naming the flag and %q", tc.addr, err, tc.want)
		}
	}
}

// TestPodMTUByUnderlayFamily: the pod MTU follows the node's underlay
// family (VXLAN 50/70, WireGuard 60/80 over IPv4/IPv6).
func TestPodMTUByUnderlayFamily(t *testing.T) {
	for _, tc := range []struct {
		addr, policy string
		want         int
	}{
		{"192.0.2.11", "vxlan", 1450},
		{"192.0.2.11", "wireguard", 1440},
		{"2001:db8:1::11", "vxlan", 1430},
		{"2001:db8:1::11", "wireguard", 1420},
		{"2001:db8:1::11", "wireguard-across-sites", 1420},
	} {
		c, err := parseFlags([]string{"--name", "n1", "--pod-cidr", "10.244.1.0/24", "--underlay-addr", tc.addr, "--transport-policy", tc.policy})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.podMTU(); got != tc.want {
			t.Errorf("%s over %s: pod MTU %d, want %d", tc.policy, tc.addr, got, tc.want)
		}
	}
}

// TestUnderlayFlagTwoFamilies: --underlay-addr takes one address per
// family; the second goes into the record and bind config, and the pod MTU
// then has IPv6's headroom.
func TestUnderlayFlagTwoFamilies(t *testing.T) {
	base := []string{"--name", "n1", "--pod-cidr", "10.244.1.0/24"}
	c, err := parseFlags(append(base, "--underlay-addr", "192.0.2.11,[2001:db8:1::11]"))
	if err != nil {
		t.Fatal(err)
	}
	if c.UnderlayAddr != netip.MustParseAddr("192.0.2.11") || c.AltUnderlayAddr != netip.MustParseAddr("2001:db8:1::11") {
		t.Fatalf("addresses %s, %s", c.UnderlayAddr, c.AltUnderlayAddr)
	}
	if r := c.selfRecord(nil); r.AltUnderlay != c.AltUnderlayAddr || r.Validate() != nil {
		t.Fatalf("record %+v: %v", r, r.Validate())
	}
	if got := c.podMTU(); got != 1430 {
		t.Errorf("pod MTU %d with an IPv6 address beside the IPv4 one, want 1430", got)
	}
	for _, tc := range []struct{ addrs, want string }{
		{"192.0.2.11,192.0.2.12", "different families"},
		{"2001:db8::1,2001:db8::2", "different families"},
		{"192.0.2.11,2001:db8::1,198.51.100.1", "at most two"},
		{"192.0.2.11,fe80::1", "link-local"},
		{"192.0.2.11,", "--underlay-addr"},
	} {
		_, err := parseFlags(append(base, "--underlay-addr", tc.addrs))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--underlay-addr") {
			t.Errorf("--underlay-addr %s: error %v, want one naming the flag and %q", tc.addrs, err, tc.want)
		}
	}
}

// TestStatusUnreachableWhy: a live peer with no underlay family in common
// is shown with that reason.
func TestStatusUnreachableWhy(t *testing.T) {
	if why := unreachableWhy(m4, m6); !strings.Contains(why, "no common underlay family") {
		t.Errorf("IPv4-only to IPv6-only: %q", why)
	}
	if why := unreachableWhy(m4, m46); why != "" {
		t.Errorf("IPv4-only to both: %q, want reachable", why)
	}
}

// TestClaimMACIPv6: claim mode's VTEP MAC keeps the IPv4 address as
// before, and tells IPv6 underlay addresses apart that end alike.
func TestClaimMACIPv6(t *testing.T) {
	if got := claimMAC(netip.MustParseAddr("192.0.2.11")); got != [6]byte{0x0a, 0x59, 192, 0, 2, 11} {
		t.Errorf("IPv4: % x", got)
	}
	a, b := claimMAC(netip.MustParseAddr("2001:db8:1::11")), claimMAC(netip.MustParseAddr("2001:db8:2::11"))
	if a == b || a[0] != 0x0a || a[1] != 0x59 || a != claimMAC(netip.MustParseAddr("2001:db8:1::11")) {
		t.Errorf("IPv6: % x and % x", a, b)
	}
}
