package overlay

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

func TestFragNeeded(t *testing.T) {
	pkt := ipv4("10.244.1.2", "10.244.2.2", string(make([]byte, 1400)))
	pkt[6] = 0x40 // DF
	buf := make([]byte, 128)
	n := fragNeeded(buf, netip.MustParseAddr("10.244.1.1"), pkt, 1350)
	if n != 20+8+28 {
		t.Fatalf("length %d, want 56", n)
	}
	b := buf[:n]
	if refChecksum(b[:20]) != 0xffff || refChecksum(b[20:]) != 0xffff {
		t.Fatal("bad IP or ICMP checksum")
	}
	if b[9] != 1 || b[20] != 3 || b[21] != 4 || binary.BigEndian.Uint16(b[26:28]) != 1350 {
		t.Fatalf("not ICMP type 3 code 4 with MTU 1350: % x", b[20:28])
	}
	if netip.AddrFrom4([4]byte(b[12:16])).String() != "10.244.1.1" || netip.AddrFrom4([4]byte(b[16:20])).String() != "10.244.1.2" {
		t.Fatalf("addresses % x", b[12:20])
	}
	if string(b[28:56]) != string(pkt[:28]) {
		t.Fatal("quote is not the original header + 8 bytes")
	}
	// No answer without DF, or to an ICMP error.
	pkt[6] = 0
	if fragNeeded(buf, netip.MustParseAddr("10.244.1.1"), pkt, 1350) != 0 {
		t.Fatal("answered a packet without DF")
	}
	icmpErr := ipv4("10.244.1.2", "10.244.2.2", "\x03\x04\x00\x00\x00\x00\x05\x46")
	icmpErr[9], icmpErr[6] = 1, 0x40
	if fragNeeded(buf, netip.MustParseAddr("10.244.1.1"), icmpErr, 1350) != 0 {
		t.Fatal("answered an ICMP error")
	}
}

// TestRouterAnswersTooBig lowers the path MTU toward a peer and checks that
// a packet that no longer fits is not sent but answered with an ICMP
// "fragmentation needed" carrying the inner MTU, while small packets pass.
func TestRouterAnswersTooBig(t *testing.T) {
	n := &memNet{}
	a := &testNode{tun: tuntest.NewChannelTUN(), bind: n.bind("192.0.2.11:4789")}
	a.peer = Peer{Name: "a", Underlay: a.bind.addr, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, VTEPMAC: [6]byte{0x0a, 0x58, 0, 0, 0, 1}}
	pmtu := func(netip.Addr) (int, error) { return 1400, nil }
	a.r = New(Config{VNI: 1, LocalMAC: a.peer.VTEPMAC, PodCIDRs: a.peer.PodCIDRs, PathMTU: pmtu, ICMPSource: netip.MustParseAddr("10.244.1.1")}, a.tun.TUN(), a.bind)
	if err := a.r.Start(4789); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.r.Close() })
	b := newTestNode(t, n, "b", "198.51.100.12:4789", "10.244.2.0/24", 2)
	a.r.SetPeers([]Peer{b.peer})
	b.r.SetPeers([]Peer{a.peer})
	a.r.refreshPathMTUs()

	big := ipv4("10.244.1.2", "10.244.2.2", string(make([]byte, 1400)))
	big[6] = 0x40
	a.tun.Outbound <- big
	select {
	case reply := <-a.tun.Inbound:
		if reply[20] != 3 || reply[21] != 4 || binary.BigEndian.Uint16(reply[26:28]) != 1350 {
			t.Fatalf("reply is not frag-needed with MTU 1350: % x", reply[:28])
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no ICMP frag-needed came back")
	}
	expectNothing(t, b)
	small := ipv4("10.244.1.2", "10.244.2.2", string(make([]byte, 1300)))
	a.tun.Outbound <- small
	if got := recvTUN(t, b); len(got) != len(small) {
		t.Fatalf("small packet: got %d bytes", len(got))
	}
	if a.r.Stats().Drops("drop_too_big") != 1 || a.r.Stats().ICMPFragNeeded.Load() != 1 {
		t.Fatalf("counters: %v", a.r.Stats().Snapshot())
	}
}
