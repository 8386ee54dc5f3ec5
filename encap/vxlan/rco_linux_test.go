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
// reference for the remote checksum offload encoding. Its frames (a UDP
// datagram and a TCP SYN from the device's side, caught by a plain UDP
// socket on the other end of a veth) carry exactly the header that
// Header.Encode writes for the same checksum start and kind, Decode reads
// them back, and the inner checksum field holds the pseudo-header sum.
// Needs root (network namespaces); runs in the netns tier.
func TestRCOMatchesLinux(t *testing.T) {
	prereqtest.Netns(t, "ip")
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
	run("ip", "-n", a, "addr", "add", "192.0.2.1/24", "dev", "va")
	run("ip", "-n", b, "addr", "add", "192.0.2.2/24", "dev", "vb")
	run("ip", "-n", a, "link", "set", "va", "up")
	run("ip", "-n", b, "link", "set", "vb", "up")
	run("ip", "-n", a, "link", "add", "vx0", "type", "vxlan", "id", "7", "local", "192.0.2.1",
		"remote", "192.0.2.2", "dstport", "4789", "udpcsum", "remcsumtx")
	run("ip", "-n", a, "addr", "add", "10.244.9.1/24", "dev", "vx0")
	run("ip", "-n", a, "link", "set", "vx0", "up")
	run("ip", "-n", a, "neigh", "add", "10.244.9.2", "lladdr", "02:00:00:00:00:02", "dev", "vx0")

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
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{Port: DefaultPort})
		return err
	})
	defer rx.Close()
	inNetns(a, func() error {
		u, err := net.Dial("udp4", "10.244.9.2:9")
		if err != nil {
			return err
		}
		defer u.Close()
		if _, err := u.Write(make([]byte, 100)); err != nil {
			return err
		}
		// A SYN is enough: it leaves with a partial checksum too.
		c, err := net.DialTimeout("tcp4", "10.244.9.2:80", 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	})

	seen := map[uint8]bool{}
	buf := make([]byte, 2048)
	rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	for !seen[17] || !seen[6] {
		n, err := rx.Read(buf)
		if err != nil {
			t.Fatalf("reading the kernel's frames (UDP seen %v, TCP seen %v): %v", seen[17], seen[6], err)
		}
		frame := buf[:n]
		var f Frame
		if err := f.Decode(frame); err != nil || f.EtherType != EtherTypeIPv4 {
			continue // neighbour discovery and the like
		}
		inner := frame[FrameHeaderLen:]
		proto := inner[9]
		if proto != 6 && proto != 17 {
			continue
		}
		want := make([]byte, HeaderLen)
		Header{VNI: 7, CsumStart: EthernetLen + 20, CsumUDP: proto == 17}.Encode(want)
		if string(frame[:HeaderLen]) != string(want) {
			t.Fatalf("proto %d: kernel header % x, Encode writes % x", proto, frame[:HeaderLen], want)
		}
		if f.CsumStart != EthernetLen+20 || f.CsumUDP != (proto == 17) || !RCO(frame) {
			t.Fatalf("proto %d: decoded %+v", proto, f)
		}
		l4Len := int(binary.BigEndian.Uint16(inner[2:4])) - 20
		at := 20 + 16
		if proto == 17 {
			at = 20 + 6
		}
		sum := uint32(proto) + uint32(l4Len)
		for i := 12; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(inner[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if got := binary.BigEndian.Uint16(inner[at:]); got != uint16(sum) {
			t.Fatalf("proto %d: inner checksum field %#04x, want the pseudo-header sum %#04x", proto, got, sum)
		}
		seen[proto] = true
	}
}
