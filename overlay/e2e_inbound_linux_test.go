package overlay_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/overlay"
)

// tcpTransfer sends size random bytes over TCP from inside netns from to
// addr:5201, where a listener inside netns to takes them, and checks they
// arrive whole.
func tcpTransfer(t *testing.T, from, to, addr string, size int) {
	t.Helper()
	var ln net.Listener
	if err := ns.WithNetNSPath("/run/netns/"+to, func(ns.NetNS) (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(addr, "5201"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan [sha256.Size]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		h := sha256.New()
		io.Copy(h, c)
		got <- [sha256.Size]byte(h.Sum(nil))
	}()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	var c net.Conn
	if err := ns.WithNetNSPath("/run/netns/"+from, func(ns.NetNS) (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(addr, "5201"), 10*time.Second)
		return err
	}); err != nil {
		t.Fatalf("tcp %s → %s: %v", from, addr, err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(c, bytes.NewReader(data)); err != nil {
		t.Fatalf("tcp %s → %s: %v", from, addr, err)
	}
	c.Close()
	if sum, ok := <-got; !ok || sum != sha256.Sum256(data) {
		t.Fatalf("tcp %s → %s: %d bytes did not arrive whole", from, addr, size)
	}
}

// TestNetnsKernelVXLANSameSegment puts a flannel-style Linux vxlan node on
// the same site bridge as a weft node, offloads left at their defaults (so
// its TCP segments reach weftd with partial checksums), and checks ping
// and TCP both ways.
func TestNetnsKernelVXLANSameSegment(t *testing.T) {
	needNetns(t, "bridge", "ethtool", "nstat")
	const (
		kernelMAC  = "0e:00:00:00:02:00"
		kernelAddr = "10.244.2.0"
		port       = "8472"
	)
	// One site: n2 is node 2 on site 1's bridge, beside n1.
	l := startLab(t, lab.Config{
		Nodes: 2, Sites: 1, PodsPerNode: 1, External: []string{"n2"},
		WeftdArgs: []string{"--vxlan-port", port, "--static-peer", "name=n2,addr=192.0.2.12:" + port + ",cidr=10.244.2.0/24,mac=" + kernelMAC},
	})
	n1, n2 := l.Node("n1"), l.Node("n2")
	if n2.UnderlayAddr != "192.0.2.12" || n2.PodCIDR != "10.244.2.0/24" || n1.Site != n2.Site {
		t.Fatalf("lab plan changed: n2 is %s with %s on %s", n2.UnderlayAddr, n2.PodCIDR, n2.Site)
	}
	kernelVXLAN(t, l, n1, n2, kernelMAC, kernelAddr, port)
	out, err := l.Exec(context.Background(), n2.Netns, "ethtool", "-k", n2.UnderlayIf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "tx-checksumming: on") || !strings.Contains(string(out), "tcp-segmentation-offload: on") {
		t.Fatalf("the kernel node's veth has transmit checksums off:\n%s", out)
	}
	defer func() {
		if t.Failed() {
			t.Logf("n1 counters: %v", status(t, n1).Counters)
			out, _ := l.Exec(context.Background(), n1.Netns, "ip", "-s", "link", "show", "weft0")
			t.Logf("n1 weft0: %s", out)
			out, _ = l.Exec(context.Background(), n1.Netns, "nstat", "-az", "TcpInCsumErrors", "UdpInCsumErrors", "IpInHdrErrors")
			t.Logf("n1 nstat: %s", out)
		}
	}()
	p1 := l.PodsOn("n1")[0]
	ping(t, l, p1.Netns, kernelAddr)
	ping(t, l, n2.Netns, p1.Address)
	// The kernel device's TSO packets cross the veth whole and reach
	// weftd as one frame around a super-packet (tunnelSuper).
	tcpTransfer(t, n2.Netns, p1.Netns, p1.Address, 4<<20) // kernel → weft
	tcpTransfer(t, p1.Netns, n2.Netns, kernelAddr, 4<<20) // weft → kernel
	if c := status(t, n1).Counters; c["drop_bad_checksum"] != 0 || c["rx_packets"] == 0 {
		t.Fatalf("n1 counters: %v", c)
	}
}

// weft0Received is how many packets weftd has written into weft0 on node
// n (the TUN's receive counter: what the kernel got from weftd).
func weft0Received(t *testing.T, l *lab.Lab, n *lab.Node) uint64 {
	t.Helper()
	out, err := l.Exec(context.Background(), n.Netns, "cat", "/sys/class/net/weft0/statistics/rx_packets")
	if err != nil {
		t.Fatalf("weft0 counters on %s: %v %s", n.Name, err, out)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestNetnsMalformedAndMisdirectedDropped sends, from a real peer's
// address, VXLAN frames whose inner packets are malformed or addressed
// outside n1's pod CIDRs (n1's own underlay address, another node's pod,
// the Internet) and checks that none reaches weft0 and each is counted
// under its reason.
func TestNetnsMalformedAndMisdirectedDropped(t *testing.T) {
	needNetns(t)
	l := startLab(t, lab.Config{Nodes: 3, Sites: 2, PodsPerNode: 1})
	waitConverged(t, l)
	n1, n2 := l.Node("n1"), l.Node("n2")
	p1 := l.PodsOn("n1")[0]
	mac1, _ := net.ParseMAC(status(t, n1).Self.VTEPMAC)
	src := l.PodsOn("n2")[0].Address
	frames, counters := overlay.MalformedFrames(src, p1.Address, n1.UnderlayAddr, l.PodsOn("n3")[0].Address, [6]byte(mac1))
	want := map[string]uint64{}
	for _, c := range counters {
		want[c]++
	}
	before, rxBefore := status(t, n1).Counters, weft0Received(t, l, n1)
	dst := net.JoinHostPort(n1.UnderlayAddr, "4789")
	for _, f := range frames {
		sendUDP(t, n2.Netns, dst, f)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := status(t, n1).Counters
		var missing []string
		for name, n := range want {
			if after[name]-before[name] != n {
				missing = append(missing, name+"="+strconv.FormatUint(after[name]-before[name], 10)+"/"+strconv.FormatUint(n, 10))
			}
		}
		if len(missing) == 0 {
			if after["rx_packets"] != before["rx_packets"] {
				t.Fatalf("bad frames were delivered: rx_packets %d → %d", before["rx_packets"], after["rx_packets"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters not as expected: %v", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rx := weft0Received(t, l, n1); rx != rxBefore {
		t.Fatalf("weft0 on n1 received %d packets from weftd", rx-rxBefore)
	}
	// weftd is still healthy after all of it.
	ping(t, l, l.PodsOn("n2")[0].Netns, p1.Address)
	ping(t, l, l.PodsOn("n3")[0].Netns, p1.Address)
}
