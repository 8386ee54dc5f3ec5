package overlay

import (
	"bytes"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/encap/wireguard"
)

func TestPolicyChoose(t *testing.T) {
	both := func(site string) Capabilities { return Capabilities{Site: site, VXLAN: true, WireGuard: true} }
	vxOnly := func(site string) Capabilities { return Capabilities{Site: site, VXLAN: true} }
	wgOnly := func(site string) Capabilities { return Capabilities{Site: site, WireGuard: true} }
	for _, tc := range []struct {
		policy      Policy
		self, peer  Capabilities
		want        Transport
		fallback    bool
		errExpected bool
	}{
		{PolicyVXLAN, both("a"), both("b"), TransportVXLAN, false, false},
		{PolicyWireGuard, both("a"), both("a"), TransportWireGuard, false, false},
		{PolicyWireGuard, both("a"), vxOnly("a"), TransportVXLAN, true, false},
		{PolicyWireGuardAcrossSites, both("a"), both("a"), TransportVXLAN, false, false},
		{PolicyWireGuardAcrossSites, both("a"), both("b"), TransportWireGuard, false, false},
		{PolicyWireGuardAcrossSites, both("a"), vxOnly("b"), TransportVXLAN, true, false},
		{PolicyVXLAN, both("a"), wgOnly("a"), TransportWireGuard, true, false},
		{PolicyVXLAN, vxOnly("a"), wgOnly("a"), 0, false, true},
	} {
		got, fb, err := tc.policy.Choose(tc.self, tc.peer)
		if tc.errExpected {
			if !errors.Is(err, ErrNoCommonTransport) {
				t.Errorf("%s %+v→%+v: err %v, want ErrNoCommonTransport", tc.policy, tc.self, tc.peer, err)
			}
			continue
		}
		if err != nil || got != tc.want || fb != tc.fallback {
			t.Errorf("%s %+v→%+v = %v fallback=%v err=%v, want %v fallback=%v", tc.policy, tc.self, tc.peer, got, fb, err, tc.want, tc.fallback)
		}
	}
	if _, err := ParsePolicy("ipsec"); err == nil {
		t.Error("ParsePolicy accepted ipsec")
	}
	for _, tc := range []struct {
		p      Policy
		wg, v6 bool
		want   int
	}{
		{PolicyVXLAN, true, false, 1450}, {PolicyWireGuard, true, false, 1440}, {PolicyWireGuardAcrossSites, true, false, 1440}, {PolicyWireGuard, false, false, 1450},
		// Over an IPv6 underlay: 70 bytes for VXLAN, 80 for WireGuard.
		{PolicyVXLAN, true, true, 1430}, {PolicyWireGuard, true, true, 1420}, {PolicyWireGuardAcrossSites, true, true, 1420}, {PolicyWireGuard, false, true, 1430},
	} {
		if got := tc.p.PodMTU(1500, tc.wg, tc.v6); got != tc.want {
			t.Errorf("%s PodMTU(1500, wg=%v, v6=%v) = %d, want %d", tc.p, tc.wg, tc.v6, got, tc.want)
		}
	}
}

// fakeWireGuard records the peer set the router gives the WireGuard
// transport.
type fakeWireGuard struct {
	mu    sync.Mutex
	peers []wireguard.Peer
}

func (f *fakeWireGuard) SetPeers(p []wireguard.Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = append([]wireguard.Peer(nil), p...)
	return nil
}

func TestRouterSendsWireGuardPeersToWireGuard(t *testing.T) {
	n := &memNet{}
	wg := &fakeWireGuard{}
	a := &testNode{tun: tuntest.NewChannelTUN(), bind: n.bind("192.0.2.11:4789")}
	a.peer = Peer{Name: "a", Underlay: a.bind.addr, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, VTEPMAC: [6]byte{0x0a, 0x58, 0, 0, 0, 1}}
	a.r = New(Config{VNI: 1, LocalMAC: a.peer.VTEPMAC, PodCIDRs: a.peer.PodCIDRs, WireGuard: wg}, a.tun.TUN(), a.bind)
	if err := a.r.Start(4789); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.r.Close() })
	b := newTestNode(t, n, "b", "198.51.100.12:4789", "10.244.2.0/24", 2)
	encrypted := b.peer
	encrypted.Transport = TransportWireGuard
	encrypted.WireGuard = wireguard.Peer{Endpoint: netip.MustParseAddrPort("198.51.100.12:51820"), AllowedIPs: encrypted.PodCIDRs}
	if err := a.r.SetPeers([]Peer{encrypted}); err != nil {
		t.Fatal(err)
	}
	wg.mu.Lock()
	if len(wg.peers) != 1 || wg.peers[0].Endpoint.Port() != 51820 {
		t.Fatalf("wireguard peers = %+v", wg.peers)
	}
	wg.mu.Unlock()

	// The device reads the TUN and asks the router's filter what to keep.
	pkt := ipv4("10.244.1.2", "10.244.2.2", "secret")
	bufs, sizes := deviceBatch([][]byte{pkt})
	a.r.Divert()(bufs, sizes, deviceOffset)
	if !bytes.Equal(bufs[0][deviceOffset:deviceOffset+sizes[0]], pkt) {
		t.Fatalf("wireguard keeps % x, want the plain packet", bufs[0][deviceOffset:deviceOffset+sizes[0]])
	}
	waitCounter(t, a.r.Stats().TxPackets.Load, 1)
	expectNothing(t, b) // nothing went out as VXLAN

	// VXLAN claiming to come from a peer we reach over WireGuard is dropped.
	f := vxlan.Frame{VNI: 1, Dst: a.peer.VTEPMAC, EtherType: vxlan.EtherTypeIPv4}
	frame := make([]byte, vxlan.FrameHeaderLen)
	f.Encode(frame)
	a.bind.inject("198.51.100.12:4789", append(frame, ipv4("10.244.2.2", "10.244.1.2", "spoof")...))
	waitCounter(t, func() uint64 { return a.r.Stats().Drops("drop_wrong_transport") }, 1)
	expectNothing(t, a)
}
