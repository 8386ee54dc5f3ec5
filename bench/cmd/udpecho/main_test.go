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
	addr := l.LocalAddr().String()
	l.Close()
	go serve(addr)
	var s stats
	for try := 0; try < 50; try++ { // until the server is listening
		if s, err = measure(addr, 20, time.Millisecond, 100*time.Millisecond); err == nil {
			break
		}
	}
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
