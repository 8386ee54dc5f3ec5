package vxlan

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSenderSegmentsAndHashesFlows sends batches of frames through a real
// loopback socket pair, over IPv4 and over IPv6 from the same kind of
// dual-stack sender: a GSO batch arrives as the original datagrams, in
// order, and each flow always leaves from the same source port.
func TestSenderSegmentsAndHashesFlows(t *testing.T) {
	for _, c := range []struct {
		network string
		ip      net.IP
	}{{"udp4", net.IPv4(127, 0, 0, 1)}, {"udp6", net.IPv6loopback}} {
		t.Run(c.network, func(t *testing.T) { testSenderSegmentsAndHashesFlows(t, c.network, c.ip) })
	}
}

func testSenderSegmentsAndHashesFlows(t *testing.T, network string, ip net.IP) {
	// The receiver is a plain socket of the one family, without GRO:
	// every datagram is read on its own.
	rx, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	s, err := NewSender(4)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Reaches(netip.MustParseAddr("::1")) || !s.Reaches(netip.MustParseAddr("127.0.0.1")) {
		t.Fatal("the sender does not reach both families on a host with IPv6")
	}
	dst := netip.MustParseAddrPort(rx.LocalAddr().String())

	frames := make([][]byte, 10)
	for i := range frames {
		n := 1472
		if i == len(frames)-1 {
			n = 700 // a short tail ends the GSO send
		}
		frames[i] = make([]byte, n)
		frames[i][0] = byte(i)
	}
	portOf := map[uint32]int{}
	buf := make([]byte, 65536)
	for _, flow := range []uint32{1, 2, 3, 1, 2, 3, 7} {
		if err := s.Send(frames, dst, flow); err != nil {
			t.Fatal(err)
		}
		for i := range frames {
			rx.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, from, err := rx.ReadFromUDP(buf)
			if err != nil {
				t.Fatalf("flow %d datagram %d: %v", flow, i, err)
			}
			if n != len(frames[i]) || buf[0] != byte(i) {
				t.Fatalf("flow %d datagram %d: %d bytes starting %d, want %d starting %d", flow, i, n, buf[0], len(frames[i]), i)
			}
			if p, ok := portOf[flow]; ok && p != from.Port {
				t.Fatalf("flow %d moved from port %d to %d", flow, p, from.Port)
			}
			portOf[flow] = from.Port
		}
	}
	if portOf[1] == portOf[2] && portOf[2] == portOf[3] {
		t.Fatalf("three flows in four buckets all used port %d", portOf[1])
	}
	if got := s.Ports()[1]; got != uint16(portOf[1]) {
		t.Fatalf("Ports()[1] = %d, flow 1 used %d", got, portOf[1])
	}
}

// TestSenderSockaddr: dual-stack sockets address IPv4 destinations as
// IPv4-mapped sockaddr_in6; IPv4 sockets refuse an IPv6 destination
// rather than send it anywhere.
func TestSenderSockaddr(t *testing.T) {
	s := &Sender{v6: true}
	if _, n, err := s.sockaddr(netip.MustParseAddrPort("192.0.2.1:4789")); err != nil || n != unix.SizeofSockaddrInet6 ||
		s.sa6.Addr != netip.MustParseAddr("::ffff:192.0.2.1").As16() || s.sa6.Port != 4789>>8|(4789&0xff)<<8 {
		t.Fatalf("dual-stack, IPv4 destination: %v %d %+v", err, n, s.sa6)
	}
	if _, _, err := s.sockaddr(netip.AddrPort{}); err == nil {
		t.Fatal("no destination accepted")
	}
	s = &Sender{}
	if _, n, err := s.sockaddr(netip.MustParseAddrPort("[::ffff:192.0.2.1]:4789")); err != nil || n != unix.SizeofSockaddrInet4 || s.sa4.Addr != [4]byte{192, 0, 2, 1} {
		t.Fatalf("IPv4 sockets, mapped destination: %v %d %+v", err, n, s.sa4)
	}
	if _, _, err := s.sockaddr(netip.MustParseAddrPort("[2001:db8::1]:4789")); err == nil || s.Reaches(netip.MustParseAddr("2001:db8::1")) {
		t.Fatal("IPv4 sockets accepted an IPv6 destination")
	}
}
