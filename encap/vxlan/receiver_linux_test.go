package vxlan

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestReceiverFamilies: ListenReceiver is dual-stack on a host with IPv6;
// FileReceiver takes a passed IPv4, IPv6-only or dual-stack UDP socket and
// says which families it receives, and refuses what is not a UDP socket.
func TestReceiverFamilies(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	rcv, err := ListenReceiver(0, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	if !rcv.Receives(v4) || !rcv.Receives(v6) || !rcv.Receives(netip.MustParseAddr("::ffff:192.0.2.1")) {
		t.Fatalf("ListenReceiver: receives IPv4 %v, IPv6 %v; want both", rcv.v4, rcv.v6)
	}

	for _, c := range []struct {
		network, addr string
		want4, want6  bool
	}{
		{"udp4", "127.0.0.1:0", true, false},
		{"udp6", "[::1]:0", false, true}, // bound to an IPv6 address: Go sets IPV6_V6ONLY
		{"udp", ":0", true, true},
	} {
		pc, err := net.ListenPacket(c.network, c.addr)
		if err != nil {
			t.Fatal(err)
		}
		f, err := pc.(*net.UDPConn).File()
		pc.Close()
		if err != nil {
			t.Fatal(err)
		}
		r, err := FileReceiver(f, 4)
		f.Close()
		if err != nil {
			t.Fatalf("%s %s: %v", c.network, c.addr, err)
		}
		if r.Receives(v4) != c.want4 || r.Receives(v6) != c.want6 {
			t.Errorf("%s %s: receives IPv4 %v, IPv6 %v; want %v, %v", c.network, c.addr, r.Receives(v4), r.Receives(v6), c.want4, c.want6)
		}
		r.Close()
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tf, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	if r, err := FileReceiver(tf, 4); err == nil {
		r.Close()
		t.Fatal("FileReceiver took a TCP socket")
	}
	df, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	if r, err := FileReceiver(df, 4); err == nil {
		r.Close()
		t.Fatal("FileReceiver took /dev/null")
	}
}

// TestSourceAddr: recvmmsg's sockaddr of either family becomes the plain
// address; an IPv4-mapped one is reported as IPv4; an unknown family or a
// short name is invalid.
func TestSourceAddr(t *testing.T) {
	var sa unix.RawSockaddrInet6
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
	sa4.Family, sa4.Addr = unix.AF_INET, [4]byte{192, 0, 2, 7}
	if got := sourceAddr(&sa, unix.SizeofSockaddrInet4); got != netip.MustParseAddr("192.0.2.7") {
		t.Errorf("sockaddr_in: %s", got)
	}
	sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: netip.MustParseAddr("2001:db8::7").As16()}
	if got := sourceAddr(&sa, unix.SizeofSockaddrInet6); got != netip.MustParseAddr("2001:db8::7") {
		t.Errorf("sockaddr_in6: %s", got)
	}
	if got := sourceAddr(&sa, unix.SizeofSockaddrInet4); got.IsValid() {
		t.Errorf("short sockaddr_in6: %s", got)
	}
	sa.Addr = netip.MustParseAddr("::ffff:198.51.100.7").As16()
	if got := sourceAddr(&sa, unix.SizeofSockaddrInet6); got != netip.MustParseAddr("198.51.100.7") {
		t.Errorf("IPv4-mapped: %s", got)
	}
	sa.Family = unix.AF_UNIX
	if got := sourceAddr(&sa, unix.SizeofSockaddrInet6); got.IsValid() {
		t.Errorf("AF_UNIX: %s", got)
	}
}

// TestReceiverIPv6Datagrams: a plain IPv6 socket's datagrams, a short one
// among them, reach a dual-stack Receiver whole, each with its size and
// the sender's address; the short one is the caller's to drop.
func TestReceiverIPv6Datagrams(t *testing.T) {
	rcv, err := ListenReceiver(0, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	c, err := net.DialUDP("udp6", nil, &net.UDPAddr{IP: net.IPv6loopback, Port: int(rcv.Port())})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := [][]byte{{0x08, 0, 0}, make([]byte, 1400)}
	for _, b := range sent {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	bufs := [][]byte{make([]byte, 65536), make([]byte, 65536)}
	sizes, segs, from := make([]int, 2), make([]int, 2), make([]netip.Addr, 2)
	var got []int
	for len(got) < len(sent) {
		rcv.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := rcv.Read(bufs, sizes, segs, from)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		for i := 0; i < n; i++ {
			if from[i] != netip.IPv6Loopback() {
				t.Fatalf("from %s", from[i])
			}
			got = append(got, sizes[i])
		}
	}
	if got[0] != 3 || got[1] != 1400 {
		t.Fatalf("sizes %v, want [3 1400]", got)
	}
}
