package vxlan

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestSenderSegmentsAndHashesFlows sends batches of frames through a real
// loopback socket pair: a GSO batch arrives as the original datagrams, in
// order, and each flow always leaves from the same source port.
func TestSenderSegmentsAndHashesFlows(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	s, err := NewSender(4)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
