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

func TestParseFlags(t *testing.T) {
	base := []string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--pod-cidr", "10.244.1.0/24"}
	c, err := parseFlags(base)
	if err != nil {
		t.Fatal(err)
	}
	if c.VNI != 1 || c.VXLANPort != 4789 || c.GossipPort != 7946 || c.ClusterCIDR != netip.MustParsePrefix("10.244.0.0/16") {
		t.Fatalf("defaults: %+v", c)
	}
	if !c.Masquerade || len(c.MasqExcept) != 0 || c.MasqResync <= 0 {
		t.Fatalf("masquerade defaults: %v %v %v", c.Masquerade, c.MasqExcept, c.MasqResync)
	}
	if c2, err := parseFlags(append(base, "--masquerade-except", "172.16.0.1/12, 192.168.0.0/16")); err != nil || len(c2.MasqExcept) != 2 || c2.MasqExcept[0] != netip.MustParsePrefix("172.16.0.0/12") {
		t.Fatalf("--masquerade-except: %v %v", c2.MasqExcept, err)
	}
	if c.VTEPMAC != [6]byte{0x0a, 0x58, 10, 244, 1, 1} {
		t.Fatalf("derived VTEP MAC = % x", c.VTEPMAC)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--name", "n1", "--underlay-addr", "192.0.2.11"}, "--pod-cidr is required"},
		{append(base, "--pod-cidr", "10.244.1.7/24"), "masked IPv4 prefix"},
		{append(base, "--pod-cidr", "10.245.1.0/24"), "not inside --cluster-cidr"},
		{append(base, "--pod-cidr", "nonsense"), "--pod-cidr"},
		{append(base, "--vni", "0"), "--vni 0 out of range"},
		{append(base, "--vni", "16777216"), "out of range"},
		{append(base, "--vxlan-port", "70000"), "--vxlan-port 70000 out of range"},
		{append(base, "--underlay-mtu", "200"), "--underlay-mtu 200 out of range"},
		{append(base, "--underlay-addr", "not-an-ip"), "--underlay-addr"},
		{append(base, "--vtep-mac", "zz"), "--vtep-mac"},
		{append(base, "--log-level", "loud"), "--log-level"},
		{append(base, "extra"), "unexpected arguments"},
		{append(base, "--procs", "-1"), "--procs -1 out of range"},
		{append(base, "--tun-queue-len", "0"), "--tun-queue-len 0 out of range"},
		{append(base, "--masquerade-except", "10.0.0.0/8,bogus"), `--masquerade-except "bogus"`},
		{append(base, "--masquerade-except", "2001:db8::/32"), "needs an IPv6 --cluster-cidr"},
		{append(base, "--masquerade-resync", "0s"), "--masquerade-resync 0s"},
		{append(base, "--static-peer", "name=kv,addr=192.0.2.12"), "all required"},
		{append(base, "--static-peer", "name=kv,bogus=1"), "unknown key"},
		{append(base, "--static-peer", "name=kv,addr=192.0.2.12,cidr=10.244.2.0/24,mac=01:02"), "mac"},
	} {
		_, err := parseFlags(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) error = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestProcs(t *testing.T) {
	for _, tc := range []struct {
		flag  int
		env   string
		avail int
		want  int
	}{
		{0, "", 2, 1},  // this machine: one of two CPUs
		{0, "", 1, 1},  // never zero
		{0, "", 16, 8}, // half
		{0, "", 7, 3},
		{0, "2", 2, 2}, // $GOMAXPROCS as the runtime applied it
		{3, "2", 2, 3}, // the flag wins
		{4, "", 2, 4},  // even above the CPU count, as GOMAXPROCS allows
	} {
		if got := procs(tc.flag, tc.env, tc.avail); got != tc.want {
			t.Errorf("procs(%d, %q, %d) = %d, want %d", tc.flag, tc.env, tc.avail, got, tc.want)
		}
	}
}

func TestParseStaticPeer(t *testing.T) {
	p, err := parseStaticPeer("name=kv,addr=198.51.100.12:8472,cidr=10.244.2.0/24,mac=0e:00:00:00:02:00")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "kv" || p.Underlay != netip.MustParseAddrPort("198.51.100.12:8472") ||
		len(p.PodCIDRs) != 1 || p.PodCIDRs[0] != netip.MustParsePrefix("10.244.2.0/24") || p.VTEPMAC != [6]byte{0x0e, 0, 0, 0, 2, 0} {
		t.Fatalf("parsed %+v", p)
	}
	p, err = parseStaticPeer("name=kv,addr=198.51.100.12,cidr=10.244.2.0/24,mac=0e:00:00:00:02:00")
	if err != nil || p.Underlay.Port() != 4789 {
		t.Fatalf("default port: %+v, %v", p, err)
	}
}

// Remote checksum offload is used toward a peer only when both ends
// announce it; every gossiped peer is a weft node (outer checksums).
func TestPeerRemoteChecksum(t *testing.T) {
	tc := newTransportChooser(overlay.PolicyVXLAN, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rec := func(name string, caps uint32) peer.Record {
		return peer.Record{Name: name, Underlay: netip.MustParseAddrPort("192.0.2.12:4789"),
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}, VTEPMAC: [6]byte{2, 0, 0, 0, 0, 2}, Caps: caps}
	}
	for _, c := range []struct {
		self, other uint32
		want        bool
	}{
		{peer.CapVXLAN | peer.CapRemoteChecksum, peer.CapVXLAN | peer.CapRemoteChecksum, true},
		{peer.CapVXLAN | peer.CapRemoteChecksum, peer.CapVXLAN, false}, // an older peer
		{peer.CapVXLAN, peer.CapVXLAN | peer.CapRemoteChecksum, false}, // --remote-checksum=false here
	} {
		p, err := tc.peer(rec("self", c.self), rec("other", c.other), reach{addr: netip.MustParseAddr("192.0.2.12")})
		if err != nil {
			t.Fatal(err)
		}
		if p.RemoteChecksum != c.want || !p.OuterChecksum {
			t.Errorf("caps %b/%b: RemoteChecksum %v OuterChecksum %v, want %v true", c.self, c.other, p.RemoteChecksum, p.OuterChecksum, c.want)
		}
	}
	on, err := parseFlags([]string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--pod-cidr", "10.244.1.0/24"})
	if err != nil || on.vxlanCaps()&peer.CapRemoteChecksum == 0 {
		t.Fatalf("default caps %b (%v): want CapRemoteChecksum", on.vxlanCaps(), err)
	}
	off, err := parseFlags([]string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--pod-cidr", "10.244.1.0/24", "--remote-checksum=false"})
	if err != nil || off.vxlanCaps() != peer.CapVXLAN {
		t.Fatalf("--remote-checksum=false caps %b (%v): want VXLAN only", off.vxlanCaps(), err)
	}
}

// TestParseFlagsDualStack: --pod-cidr once per family (repeated or
// comma-separated) and --cluster-cidr with both families; the record, the
// router's pod CIDRs and admission take both.
func TestParseFlagsDualStack(t *testing.T) {
	base := []string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56"}
	for _, args := range [][]string{
		append(base, "--pod-cidr", "10.244.1.0/24", "--pod-cidr", "fd00:10:244:1::/64"),
		append(base, "--pod-cidr", "fd00:10:244:1::/64,10.244.1.0/24"),
	} {
		c, err := parseFlags(args)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if c.PodCIDR.String() != "10.244.1.0/24" || c.PodCIDR6.String() != "fd00:10:244:1::/64" || c.ClusterCIDR6.String() != "fd00:10:244::/56" {
			t.Fatalf("%q: %v %v %v", args, c.PodCIDR, c.PodCIDR6, c.ClusterCIDR6)
		}
		if got := c.podCIDRs(); len(got) != 2 || got[0] != c.PodCIDR || got[1] != c.PodCIDR6 {
			t.Fatalf("podCIDRs = %v", got)
		}
		if got := c.selfRecord(nil).PodCIDRs; len(got) != 2 || got[1] != c.PodCIDR6 {
			t.Fatalf("record pod CIDRs = %v", got)
		}
		if got := c.clusterCIDRs(); len(got) != 2 {
			t.Fatalf("clusterCIDRs = %v", got)
		}
		if c.VTEPMAC != [6]byte{0x0a, 0x58, 10, 244, 1, 1} {
			t.Fatalf("VTEP MAC % x: still from the IPv4 gateway", c.VTEPMAC)
		}
	}
	// Claims: a block of each family, /64 by default for IPv6.
	c, err := parseFlags(append(base, "--node-cidr-size", "24"))
	if err != nil {
		t.Fatal(err)
	}
	if cfgs := c.claimConfigs(); !c.claimMode() || len(cfgs) != 2 || cfgs[0].Bits != 24 || cfgs[1].Bits != 64 || cfgs[1].Cluster != c.ClusterCIDR6 {
		t.Fatalf("dual-stack claim policies %+v (claim mode %v)", cfgs, c.claimMode())
	}
	dual, err := parseFlags(append(base, "--pod-cidr", "10.244.1.0/24,fd00:10:244:1::/64", "--masquerade-except", "172.16.0.0/12,2001:db8:5::/48"))
	if err != nil || len(dual.MasqExcept) != 2 || dual.MasqExcept[1] != netip.MustParsePrefix("2001:db8:5::/48") {
		t.Fatalf("dual-stack --masquerade-except: %v %v", dual.MasqExcept, err)
	}
	quiet := slog.New(slog.DiscardHandler)
	if m := masqueradeOf(dual, quiet); m.PodCIDR6 != dual.PodCIDR6 || m.ClusterCIDR6 != dual.ClusterCIDR6 || len(m.Except) != 2 {
		t.Fatalf("dual-stack masquerade %+v", m)
	}
	// The same cluster-wide flags on a node without an IPv6 pod CIDR:
	// the IPv6 exception is left out, not an error that stops weftd.
	v4node := dual
	v4node.PodCIDR6 = netip.Prefix{}
	if m := masqueradeOf(v4node, quiet); m.PodCIDR6.IsValid() || len(m.Except) != 1 || m.Except[0] != netip.MustParsePrefix("172.16.0.0/12") {
		t.Fatalf("masquerade of a node without IPv6 pods %+v", m)
	}
	v4node.Masquerade = false
	if m := masqueradeOf(v4node, quiet); m != nil {
		t.Fatalf("--masquerade=false: %+v", m)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(base, "--pod-cidr", "fd00:10:244:1::/64"), "an IPv4 pod CIDR is required"},
		{append(base, "--pod-cidr", "10.244.1.0/24,fd00:10:244:1::/64,fd00:10:244:2::/64"), "two IPv6 prefixes"},
		{append(base, "--pod-cidr", "10.244.1.0/24,fd00:10:244:1::1/64"), "masked IPv6 prefix"},
		{append(base, "--pod-cidr", "10.244.1.0/24,fd00:10:244:1::/124"), "masked IPv6 prefix"},
		{append(base, "--pod-cidr", "10.244.1.0/24,fd00:99::/64"), "not inside --cluster-cidr"},
		{[]string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--pod-cidr", "10.244.1.0/24,fd00:10:244:1::/64"}, "not inside --cluster-cidr"},
		{[]string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--cluster-cidr", "fd00:10:244::/56", "--pod-cidr", "fd00:10:244:1::/64"}, "an IPv4 prefix is required"},
		{[]string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--cluster-cidr", "10.244.0.0/16,10.245.0.0/16", "--pod-cidr", "10.244.1.0/24"}, "two prefixes of one family"},
		{append(base, "--node-cidr-size", "24", "--node-cidr-size-ipv6", "48"), "--node-cidr-size-ipv6"},
		{append(base, "--node-cidr-size", "24", "--node-cidr-size-ipv6", "127"), "--node-cidr-size-ipv6"},
	} {
		_, err := parseFlags(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) error = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}
