package vxlan

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

// TestRCOMatchesLinux: a Linux vxlan device with remcsumtx is the
// reference for the remote checksum offload encoding, over an IPv4 and an
// IPv6 underlay (2001:db8::/32; the meaning of the RCO bits does not
// depend on the outer family), for IPv4 and IPv6 inner packets. Its frames
// (a UDP datagram and a TCP SYN from the device's side, caught by a plain
// UDP socket on the other end of a veth) carry exactly the header that
// Header.Encode writes for the same checksum start and kind, Decode reads
// them back, and the inner checksum field holds the pseudo-header sum.
// Needs root (network namespaces); runs in the netns tier.
func TestRCOMatchesLinux(t *testing.T) {
	prereqtest.Netns(t, "ip")
	for _, u := range []struct {
		name, a, b, plen, csum, network string
	}{
		// Over IPv4 the device sends UDP checksums only when told to
		// (udpcsum), and RCO needs them; over IPv6 it sends them unless
		// told not to (udp6zerocsumtx).
		{"ipv4-underlay", "192.0.2.1", "192.0.2.2", "24", "udpcsum", "udp4"},
		{"ipv6-underlay", "2001:db8::1", "2001:db8::2", "64", "noudp6zerocsumtx", "udp6"},
	} {
		t.Run(u.name, func(t *testing.T) { testRCOMatchesLinux(t, u.a, u.b, u.plen, u.csum, u.network) })
	}
}

func testRCOMatchesLinux(t *testing.T, ua, ub, plen, csumFlag, network string) {
	a := fmt.Sprintf("wrco%05x-a", rand.Uint32()&0xfffff)
	b := a[:len(a)-1] + "b"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", a)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run() })
	run("ip", "netns", "add", b)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", b).Run() })
	run("ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b)
	run("ip", "-n", a, "addr", "add", ua+"/"+plen, "dev", "va", "nodad")
	run("ip", "-n", b, "addr", "add", ub+"/"+plen, "dev", "vb", "nodad")
	run("ip", "-n", a, "link", "set", "va", "up")
	run("ip", "-n", b, "link", "set", "vb", "up")
	run("ip", "-n", a, "link", "add", "vx0", "type", "vxlan", "id", "7", "local", ua,
		"remote", ub, "dstport", "4789", csumFlag, "remcsumtx")
	run("ip", "-n", a, "addr", "add", "10.244.9.1/24", "dev", "vx0")
	run("ip", "-n", a, "addr", "add", "fd00:10:244:9::1/64", "dev", "vx0", "nodad")
	run("ip", "-n", a, "link", "set", "vx0", "up")
	run("ip", "-n", a, "neigh", "add", "10.244.9.2", "lladdr", "02:00:00:00:00:02", "dev", "vx0")
	run("ip", "-n", a, "neigh", "add", "fd00:10:244:9::2", "lladdr", "02:00:00:00:00:02", "dev", "vx0")

	inNetns := func(name string, fn func() error) {
		t.Helper()
		h, err := ns.GetNS("/run/netns/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.Do(func(ns.NetNS) error { return fn() }); err != nil {
			t.Fatal(err)
		}
	}
	var rx *net.UDPConn
	inNetns(b, func() (err error) {
		rx, err = net.ListenUDP(network, &net.UDPAddr{Port: DefaultPort})
		return err
	})
	defer rx.Close()
	inNetns(a, func() error {
		for _, dst := range []string{"10.244.9.2", "fd00:10:244:9::2"} {
			u, err := net.Dial("udp", net.JoinHostPort(dst, "9"))
			if err != nil {
				return err
			}
			_, err = u.Write(make([]byte, 100))
			u.Close()
			if err != nil {
				return err
			}
			// A SYN is enough: it leaves with a partial checksum too.
			c, err := net.DialTimeout("tcp", net.JoinHostPort(dst, "80"), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
		}
		return nil
	})

	// seen is keyed by inner IP version and L4 protocol.
	type kind struct{ v, proto uint8 }
	seen := map[kind]bool{}
	all := []kind{{4, 17}, {4, 6}, {6, 17}, {6, 6}}
	buf := make([]byte, 2048)
	rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	for !seen[all[0]] || !seen[all[1]] || !seen[all[2]] || !seen[all[3]] {
		n, err := rx.Read(buf)
		if err != nil {
			t.Fatalf("reading the kernel's frames (seen %v): %v", seen, err)
		}
		frame := buf[:n]
		var f Frame
		if err := f.Decode(frame); err != nil {
			continue
		}
		inner := frame[FrameHeaderLen:]
		// The inner header's length, protocol, addresses and L4 length.
		var l3Len, l4Len int
		var proto uint8
		var addrs []byte
		switch f.EtherType {
		case EtherTypeIPv4:
			l3Len, proto, addrs = 20, inner[9], inner[12:20]
			l4Len = int(binary.BigEndian.Uint16(inner[2:4])) - 20
		case EtherTypeIPv6:
			l3Len, proto, addrs = 40, inner[6], inner[8:40]
			l4Len = int(binary.BigEndian.Uint16(inner[4:6]))
		}
		if proto != 6 && proto != 17 {
			continue // neighbour discovery and the like
		}
		k := kind{inner[0] >> 4, proto}
		want := make([]byte, HeaderLen)
		Header{VNI: 7, CsumStart: EthernetLen + l3Len, CsumUDP: proto == 17}.Encode(want)
		if string(frame[:HeaderLen]) != string(want) {
			t.Fatalf("%v: kernel header % x, Encode writes % x", k, frame[:HeaderLen], want)
		}
		if f.CsumStart != EthernetLen+l3Len || f.CsumUDP != (proto == 17) || !RCO(frame) {
			t.Fatalf("%v: decoded %+v", k, f)
		}
		at := l3Len + 16
		if proto == 17 {
			at = l3Len + 6
		}
		sum := uint32(proto) + uint32(l4Len)
		for i := 0; i < len(addrs); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(addrs[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if got := binary.BigEndian.Uint16(inner[at:]); got != uint16(sum) {
			t.Fatalf("%v: inner checksum field %#04x, want the pseudo-header sum %#04x", k, got, sum)
		}
		seen[k] = true
	}
}
