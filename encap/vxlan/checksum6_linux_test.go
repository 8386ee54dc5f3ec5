package vxlan

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

// TestReceiverIPv6ZeroChecksum: over an IPv6 underlay the Receiver takes
// what a Linux vxlan device sends with its defaults (UDP checksums on) and
// never sees what one configured with udp6zerocsumtx sends: the kernel
// drops a zero IPv6 UDP checksum (Udp6InCsumErrors) before weft, as a Linux
// vxlan device without udp6zerocsumrx does. Both devices share the
// underlay addresses and port, on VNIs 7 (checksums) and 8 (zero).
// Needs root (network namespaces); runs in the netns tier.
func TestReceiverIPv6ZeroChecksum(t *testing.T) {
	prereqtest.Netns(t, "ip")
	a := fmt.Sprintf("wcs6%05x-a", rand.Uint32()&0xfffff)
	b := a[:len(a)-1] + "b"
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("ip", "netns", "add", a)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run() })
	run("ip", "netns", "add", b)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", b).Run() })
	run("ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b)
	run("ip", "-n", a, "addr", "add", "2001:db8::1/64", "dev", "va", "nodad")
	run("ip", "-n", b, "addr", "add", "2001:db8::2/64", "dev", "vb", "nodad")
	run("ip", "-n", a, "link", "set", "va", "up")
	run("ip", "-n", b, "link", "set", "vb", "up")
	for _, d := range []struct{ name, vni, flag, net string }{
		{"vx7", "7", "noudp6zerocsumtx", "10.244.7"},
		{"vx8", "8", "udp6zerocsumtx", "10.244.8"},
	} {
		run("ip", "-n", a, "link", "add", d.name, "type", "vxlan", "id", d.vni, "local", "2001:db8::1",
			"remote", "2001:db8::2", "dstport", strconv.Itoa(DefaultPort), d.flag)
		run("ip", "-n", a, "addr", "add", d.net+".1/24", "dev", d.name)
		run("ip", "-n", a, "link", "set", d.name, "up")
		run("ip", "-n", a, "neigh", "add", d.net+".2", "lladdr", "02:00:00:00:00:02", "dev", d.name)
	}
	csumErrors := func() int {
		t.Helper()
		for _, line := range strings.Split(run("ip", "netns", "exec", b, "cat", "/proc/net/snmp6"), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "Udp6InCsumErrors" {
				n, _ := strconv.Atoi(f[1])
				return n
			}
		}
		t.Fatal("no Udp6InCsumErrors in /proc/net/snmp6")
		return 0
	}

	h, err := ns.GetNS("/run/netns/" + b)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var rcv *Receiver
	if err := h.Do(func(ns.NetNS) (err error) { rcv, err = ListenReceiver(DefaultPort, 4); return err }); err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	ha, err := ns.GetNS("/run/netns/" + a)
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	// The underlay first: until the veth is up and the peer's address
	// resolved, the devices' datagrams may be lost.
	for i := 0; ; i++ {
		if exec.Command("ip", "netns", "exec", a, "ping", "-6", "-c", "1", "-W", "1", "2001:db8::2").Run() == nil {
			break
		}
		if i == 5 {
			t.Fatal("2001:db8::2 does not answer from the other namespace")
		}
	}
	before := csumErrors()
	const sends = 3
	if err := ha.Do(func(ns.NetNS) error {
		for i := 0; i < sends; i++ {
			for _, dst := range []string{"10.244.7.2:9", "10.244.8.2:9"} {
				u, err := net.Dial("udp4", dst)
				if err != nil {
					return err
				}
				_, err = u.Write(make([]byte, 100))
				u.Close()
				if err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	bufs := [][]byte{make([]byte, 65536), make([]byte, 65536), make([]byte, 65536), make([]byte, 65536)}
	sizes, segs, from := make([]int, 4), make([]int, 4), make([]netip.Addr, 4)
	got := map[uint32]int{}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		rcv.SetReadDeadline(deadline)
		n, err := rcv.Read(bufs, sizes, segs, from)
		if err != nil {
			break // the deadline: nothing more is coming
		}
		for i := 0; i < n; i++ {
			var f Frame
			if f.Decode(bufs[i][:sizes[i]]) != nil || from[i] != netip.MustParseAddr("2001:db8::1") {
				continue
			}
			if inner := bufs[i][FrameHeaderLen:sizes[i]]; f.EtherType == EtherTypeIPv4 && inner[9] == 17 {
				got[f.VNI]++
			}
		}
	}
	if got[7] != sends || got[8] != 0 {
		t.Fatalf("received %d datagrams on VNI 7 (checksums), %d on VNI 8 (zero checksums); want %d and 0", got[7], got[8], sends)
	}
	if d := csumErrors() - before; d < sends {
		t.Fatalf("Udp6InCsumErrors rose by %d, want at least %d (the zero-checksum datagrams)", d, sends)
	}
}
