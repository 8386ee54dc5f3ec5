package overlay_test

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/lab"
)

// seenFrom listens on TCP inside the namespace at netnsPath on addr (of
// either family), lets one connection in from the namespace fromPath, and
// returns the source address the listener saw (or the dial's error).
func seenFrom(t *testing.T, netnsPath, addr, fromPath string) (netip.Addr, error) {
	t.Helper()
	var ln net.Listener
	if err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan netip.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		got <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		c.Close()
	}()
	var c net.Conn
	err := ns.WithNetNSPath(fromPath, func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second)
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	select {
	case a := <-got:
		return a, nil
	case <-time.After(5 * time.Second):
		t.Fatal("connected, but the listener saw no connection")
		return netip.Addr{}, nil
	}
}

// TestNetnsEgressMasquerade: with an "internet" namespace behind the
// router that has no route to the pod CIDRs, a pod reaches it (TCP and
// ping) with its node's address as the source, while pod→pod keeps the
// pod's address and node→pod the node's gateway; the masquerade table
// comes back after it is deleted (drift repair), and --masquerade=false
// removes it, after which the pod no longer gets out.
//
// Over 80 lines: one scenario, its steps in order, each needing the last.
func TestNetnsEgressMasquerade(t *testing.T) {
	needNetns(t, "nft")
	l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, Internet: true, WeftdArgs: []string{"--masquerade-resync", "200ms"}})
	waitConverged(t, l)
	n1 := l.Node("n1")
	p1, p2 := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	inet := filepath.Join("/run/netns", l.Internet.Netns)
	n1Path := filepath.Join("/run/netns", n1.Netns)
	ctx := context.Background()

	src, err := seenFrom(t, inet, lab.InternetAddr, p1.NetnsPath)
	if err != nil || src.String() != n1.UnderlayAddr {
		t.Fatalf("pod → internet: source %v (%v), want the node's %s", src, err, n1.UnderlayAddr)
	}
	ping(t, l, p1.Netns, lab.InternetAddr)
	if src, err := seenFrom(t, p2.NetnsPath, p2.Address, p1.NetnsPath); err != nil || src.String() != p1.Address {
		t.Fatalf("pod → pod: source %v (%v), want the pod's %s", src, err, p1.Address)
	}
	if src, err := seenFrom(t, p2.NetnsPath, p2.Address, n1Path); err != nil || !netip.MustParsePrefix(lab.ClusterCIDR).Contains(src) {
		t.Fatalf("node → pod: source %v (%v), want n1's gateway inside the cluster CIDR", src, err)
	}

	// Drift: the table deleted by someone else is back within a resync.
	if out, err := l.Exec(ctx, n1.Netns, "nft", "delete", "table", "ip", "weft"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := l.Exec(ctx, n1.Netns, "nft", "list", "table", "ip", "weft"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the masquerade table did not come back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if src, err := seenFrom(t, inet, lab.InternetAddr, p1.NetnsPath); err != nil || src.String() != n1.UnderlayAddr {
		t.Fatalf("after the repair, pod → internet: source %v (%v)", src, err)
	}

	// Off: the table goes, and the pod's packets reach the internet with
	// an address it cannot answer.
	if err := l.StopWeftd("n1", syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.StartWeftd(ctx, "n1", "--masquerade=false"); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Exec(ctx, n1.Netns, "nft", "list", "table", "ip", "weft"); err == nil {
		t.Fatalf("--masquerade=false left the table:\n%s", out)
	}
	if src, err := seenFrom(t, inet, lab.InternetAddr, p1.NetnsPath); err == nil {
		t.Fatalf("without masquerade the pod still got out (source %v)", src)
	}
}
