package main

import (
	"net"
	"testing"
	"time"
)

// An echo server and a measuring client over loopback: every round trip
// comes back and the figures are ordered.
func TestMeasureLoopback(t *testing.T) {
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	addr := l.LocalAddr().String()
	s, err := measure(addr, 20, time.Millisecond, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.n != 20 || s.min <= 0 || s.min > s.p50 || s.p50 > s.p90 {
		t.Fatalf("stats %+v", s)
	}
	if _, err := measure(addr, 0, 0, time.Second); err == nil {
		t.Fatal("-n 0 accepted")
	}
}
