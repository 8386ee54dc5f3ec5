package main

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/peer"
	peerkube "github.com/weftnet/weft/peer/kube"
)

// natRecord is a WireGuard- and VXLAN-capable weft node of site with
// internal address internal, public address public ("" for none) and pod
// CIDR cidr.
func natRecord(name, site, internal, public, cidr string) peer.Record {
	r := peer.Record{
		Name: name, Site: site, Underlay: netip.AddrPortFrom(netip.MustParseAddr(internal), 4789),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}, VTEPMAC: [6]byte{2, 0, 0, 0, 0, byte(len(name))},
		WGPublicKey: [32]byte{byte(len(name)), name[len(name)-1]}, WGPort: 51820,
		Caps: peer.CapVXLAN | peer.CapWireGuard | peer.CapRelay | peer.CapGossipTag,
	}
	if public != "" {
		r.Public = netip.MustParseAddr(public)
	}
	return r
}

// The NAT lab's nodes: two clouds on the same private /24, each node with
// a 1:1 public address except b3, and an on-premises site with no public
// addresses at all.
var (
	a1 = natRecord("a1", "cloud-a", "192.0.2.11", "203.0.113.11", "10.244.1.0/24")
	a2 = natRecord("a2", "cloud-a", "192.0.2.12", "203.0.113.12", "10.244.2.0/24")
	b1 = natRecord("b1", "cloud-b", "192.0.2.11", "203.0.113.21", "10.244.3.0/24")
	b3 = natted(natRecord("b3", "cloud-b", "192.0.2.13", "", "10.244.5.0/24"))
	p1 = natted(natRecord("p1", "onprem", "198.51.100.11", "", "10.244.6.0/24"))
	p2 = natted(natRecord("p2", "onprem", "198.51.100.12", "", "10.244.7.0/24"))
	// A node of a routed site: no public address, and no NAT either.
	r1 = natRecord("r1", "routed", "203.0.113.41", "", "10.244.8.0/24")
)

func natted(r peer.Record) peer.Record { r.Caps |= peer.CapBehindNAT; return r }

func alive(rs ...peer.Record) []peer.Peer {
	var out []peer.Peer
	for _, r := range rs {
		out = append(out, peer.Peer{Record: r, State: peer.StateAlive})
	}
	return out
}

func TestReachOf(t *testing.T) {
	for _, tt := range []struct {
		name    string
		self, r peer.Record
		want    reach
	}{
		{"same site, both public: internal", a1, a2, reach{addr: a2.Underlay.Addr()}},
		{"same site, no public: internal", p1, p2, reach{addr: p2.Underlay.Addr()}},
		{"across, public to public: public, no keepalive", a1, b1, reach{addr: b1.Public}},
		{"across, behind NAT to public: public, keepalive", p1, a1, reach{addr: a1.Public, keepalive: true}},
		{"across, public to behind NAT: learned", a1, p1, reach{passive: true}},
		{"across, both behind NAT: relay", p1, b3, reach{noRelay: true}},
		{"across, routed, no public address: internal", a1, r1, reach{addr: r1.Underlay.Addr()}},
		{"across, behind NAT to routed: internal", p1, r1, reach{addr: r1.Underlay.Addr()}},
		{"across, routed to public: public, no keepalive", r1, a1, reach{addr: a1.Public}},
	} {
		if got := reachOf(tt.self, tt.r); got != tt.want {
			t.Errorf("%s: reachOf(%s, %s) = %+v, want %+v", tt.name, tt.self.Name, tt.r.Name, got, tt.want)
		}
	}
}

// TestPlanReachRelay: two nodes behind NAT in different sites agree on
// one relay, in a third site, with a public address; nobody else needs
// one; without a candidate the pair is unreachable.
func TestPlanReachRelay(t *testing.T) {
	all := []peer.Record{a1, a2, b1, b3, p1, p2}
	without := func(name string) []peer.Peer {
		var out []peer.Record
		for _, r := range all {
			if r.Name != name {
				out = append(out, r)
			}
		}
		return alive(out...)
	}
	fromP1, fromB3 := planReach(p1, without("p1")), planReach(b3, without("b3"))
	relay := fromP1["b3"].relay
	if relay != "a1" && relay != "a2" {
		t.Fatalf("p1 → b3 relay %q, want a cloud-a node (b1 is b3's site-mate)", relay)
	}
	if fromB3["p1"].relay != relay {
		t.Fatalf("b3 → p1 relay %q, p1 → b3 %q: the ends disagree", fromB3["p1"].relay, relay)
	}
	for name, rc := range fromP1 {
		if name != "b3" && rc.relay != "" {
			t.Errorf("p1 → %s relayed through %s, want direct", name, rc.relay)
		}
	}
	// Only nodes that relay, run WireGuard and have a public address qualify.
	noRelay := []peer.Record{b3}
	for _, r := range []peer.Record{a1, a2} {
		r.Caps &^= peer.CapRelay
		noRelay = append(noRelay, r)
	}
	if rc := planReach(p1, alive(noRelay...))["b3"]; rc.relay != "" || !rc.noRelay {
		t.Fatalf("without relay-capable candidates: %+v, want unreachable", rc)
	}
}

// TestSetPeersAcrossNAT: the router gets the address that works from
// here for each peer, the keepalive only where this node is behind NAT,
// no endpoint for a peer behind NAT, and a relayed peer's CIDR on its
// relay (routes and WireGuard allowed IPs), without touching the records.
func TestSetPeersAcrossNAT(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tc := newTransportChooser(overlay.PolicyWireGuardAcrossSites, log)
	admitted := alive(a1, a2, b1, b3, p2)
	before := slices.Clone(a1.PodCIDRs)
	peers, n := peerSet(nil, admitted, nil, p1, tc)
	if n != 4 || len(peers) != 4 {
		t.Fatalf("routed %d of %d peers, want 4 (b3 through its relay)", n, len(peers))
	}
	got := map[string]overlay.Peer{}
	for _, p := range peers {
		got[p.Name] = p
	}
	if p := got["p2"]; p.Transport != overlay.TransportVXLAN || p.Underlay.Addr() != p2.Underlay.Addr() {
		t.Errorf("site-mate p2: %v at %s, want VXLAN at its internal address", p.Transport, p.Underlay)
	}
	if p := got["b1"]; p.Transport != overlay.TransportWireGuard || p.WireGuard.Endpoint != netip.AddrPortFrom(b1.Public, 51820) || !p.WireGuard.PersistentKeepalive {
		t.Errorf("b1 from behind NAT: %+v, want WireGuard to its public address with a persistent keepalive", p.WireGuard)
	}
	relay := planReach(p1, admitted)["b3"].relay
	rp := got[relay]
	if !slices.Contains(rp.PodCIDRs, b3.PodCIDRs[0]) || !slices.Contains(rp.WireGuard.AllowedIPs, b3.PodCIDRs[0]) || !slices.Equal(rp.Relayed, []string{"b3"}) {
		t.Errorf("relay %s: CIDRs %v allowed %v relayed %v, want b3's CIDR on it", relay, rp.PodCIDRs, rp.WireGuard.AllowedIPs, rp.Relayed)
	}
	if _, ok := got["b3"]; ok {
		t.Error("b3 routed directly as well as through its relay")
	}
	if !slices.Equal(a1.PodCIDRs, before) || len(a1.PodCIDRs) != 1 {
		t.Errorf("a record's CIDRs changed: %v", a1.PodCIDRs)
	}

	// From a public node: a node behind NAT has no endpoint and no keepalive.
	fromPublic, _ := peerSet(nil, alive(p1, b1), nil, a1, newTransportChooser(overlay.PolicyWireGuardAcrossSites, log))
	for _, p := range fromPublic {
		switch p.Name {
		case "p1":
			if p.WireGuard.Endpoint.IsValid() || p.WireGuard.PersistentKeepalive || p.WireGuard.Keepalive {
				t.Errorf("p1 from a public node: %+v, want no endpoint and no keepalive of either kind", p.WireGuard)
			}
		case "b1":
			if p.WireGuard.PersistentKeepalive {
				t.Error("public to public: persistent keepalive on")
			}
		}
	}
}

// TestPublicOf: the order of a node's public address in Kubernetes mode:
// the annotation ("none" too), then --public-addr, then the ExternalIP.
func TestPublicOf(t *testing.T) {
	flag, ext := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.6")
	for _, tt := range []struct {
		name    string
		flag    netip.Addr
		self    peerkube.Self
		want    netip.Addr
		wantErr bool
	}{
		{"annotation over all", flag, peerkube.Self{PublicOverride: "203.0.113.7", ExternalIP: ext}, netip.MustParseAddr("203.0.113.7"), false},
		{"annotation none", flag, peerkube.Self{PublicOverride: "none", ExternalIP: ext}, netip.Addr{}, false},
		{"flag over ExternalIP", flag, peerkube.Self{ExternalIP: ext}, flag, false},
		{"ExternalIP", netip.Addr{}, peerkube.Self{ExternalIP: ext}, ext, false},
		{"none", netip.Addr{}, peerkube.Self{}, netip.Addr{}, false},
		{"bad annotation", flag, peerkube.Self{PublicOverride: "127.0.0.1"}, netip.Addr{}, true},
		{"garbage annotation", flag, peerkube.Self{PublicOverride: "not-an-ip"}, netip.Addr{}, true},
	} {
		c := config{}
		c.Name, c.PublicAddr = "n1", tt.flag
		got, err := publicOf(c, tt.self)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("%s: publicOf = %v, %v; want %v (error %v)", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}
