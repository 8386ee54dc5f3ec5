package wireguard

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wireguard.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode(), err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || k1 != k2 {
		t.Fatalf("second load gave a different key (%v)", err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Fatal("a world-readable key was accepted")
	}
	os.WriteFile(path, []byte("not a key"), 0o600)
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Fatal("a garbage key was accepted")
	}
}

func ipv4(src, dst, payload string) []byte {
	p := make([]byte, 20+len(payload))
	p[0], p[2], p[3], p[8], p[9] = 0x45, byte(len(p)>>8), byte(len(p)), 64, 17
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	copy(p[20:], payload)
	return p
}

type node struct {
	dev  *Device
	tun  *tuntest.ChannelTUN
	port uint16
	cidr netip.Prefix
	key  wgtypes.Key

	diverted atomic.Int32
}

func newNode(t *testing.T, cidr string) *node {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{tun: tuntest.NewChannelTUN(), port: uint16(20000 + rand.IntN(20000)), cidr: netip.MustParsePrefix(cidr), key: k}
	n.dev, err = New(Config{Name: fmt.Sprintf("wtest%05d", rand.IntN(100000)), PrivateKey: k, ListenPort: n.port, TUN: n.tun.TUN()})
	if err != nil {
		t.Fatal(err)
	}
	// The router's part, played here: packets carrying "divert" are taken
	// out of the batch and must never reach the peer.
	n.dev.SetDivert(func(bufs [][]byte, sizes []int, offset int) {
		for i := range bufs {
			if bytes.Contains(bufs[i][offset:offset+sizes[i]], []byte("divert")) {
				sizes[i] = 0
				n.diverted.Add(1)
			}
		}
	})
	t.Cleanup(func() { n.dev.Close() })
	return n
}

func (n *node) asPeer() Peer {
	return Peer{PublicKey: n.dev.PublicKey(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.port), AllowedIPs: []netip.Prefix{n.cidr}}
}

func receive(t *testing.T, n *node) []byte {
	t.Helper()
	select {
	case p := <-n.tun.Inbound:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("nothing decrypted")
		return nil
	}
}

// TestDevicesExchangePackets runs two real wireguard-go devices over
// loopback UDP: plaintext handed to one comes out of the other's TUN, and
// a peer removed by SetPeers no longer gets anything.
func TestDevicesExchangePackets(t *testing.T) {
	prereqtest.Root(t) // the UAPI socket lives in /var/run/wireguard
	a, b := newNode(t, "10.244.1.0/24"), newNode(t, "10.244.2.0/24")
	if err := a.dev.SetPeers([]Peer{b.asPeer()}); err != nil {
		t.Fatal(err)
	}
	if err := b.dev.SetPeers([]Peer{a.asPeer()}); err != nil {
		t.Fatal(err)
	}
	// Setting the same peers again changes nothing (and keeps the session).
	if err := a.dev.SetPeers([]Peer{b.asPeer()}); err != nil {
		t.Fatal(err)
	}
	// Outbound packets come from the TUN, through the divert filter.
	a.tun.Outbound <- ipv4("10.244.1.2", "10.244.2.2", "divert me")
	pkt := ipv4("10.244.1.2", "10.244.2.2", "through the tunnel")
	a.tun.Outbound <- pkt
	if got := receive(t, b); !bytes.Equal(got, pkt) {
		t.Fatalf("b decrypted % x, want % x", got, pkt)
	}
	if got := a.diverted.Load(); got != 1 {
		t.Fatalf("diverted %d packets, want 1", got)
	}
	back := ipv4("10.244.2.2", "10.244.1.2", "and back")
	b.tun.Outbound <- back
	if got := receive(t, a); !bytes.Equal(got, back) {
		t.Fatalf("a decrypted % x", got)
	}
	// A source outside the sender's allowed IPs is dropped by WireGuard.
	b.tun.Outbound <- ipv4("10.244.9.9", "10.244.1.2", "spoofed")
	select {
	case p := <-a.tun.Inbound:
		t.Fatalf("spoofed source delivered: % x", p)
	case <-time.After(200 * time.Millisecond):
	}
	if cfg, err := a.dev.dev.IpcGet(); err != nil || !bytes.Contains([]byte(cfg), []byte("rx_bytes=")) {
		t.Fatalf("uapi get: %v\n%s", err, cfg)
	}
	if err := a.dev.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := a.dev.dev.IpcGet(); bytes.Contains([]byte(cfg), []byte("public_key=")) {
		t.Fatalf("peer still configured after SetPeers(nil):\n%s", cfg)
	}
}

// TestKeepalivePeersHandshakeUnprompted: two devices that add each other
// as weft peers (Keepalive) at the same moment get a session without any
// traffic asking for one, and without both initiating at once (which
// would leave both waiting for the 5 s handshake retry); a packet then
// goes straight through. Peers without Keepalive stay silent until
// traffic comes.
func TestKeepalivePeersHandshakeUnprompted(t *testing.T) {
	prereqtest.Root(t) // the UAPI socket lives in /var/run/wireguard
	quiet, other := newNode(t, "10.244.3.0/24"), newNode(t, "10.244.4.0/24")
	if err := quiet.dev.SetPeers([]Peer{other.asPeer()}); err != nil {
		t.Fatal(err)
	}
	if err := other.dev.SetPeers([]Peer{quiet.asPeer()}); err != nil {
		t.Fatal(err)
	}

	a, b := newNode(t, "10.244.1.0/24"), newNode(t, "10.244.2.0/24")
	pa, pb := a.asPeer(), b.asPeer()
	pa.Keepalive, pb.Keepalive = true, true
	if err := a.dev.SetPeers([]Peer{pb}); err != nil {
		t.Fatal(err)
	}
	if err := b.dev.SetPeers([]Peer{pa}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second) // the retry would take 5 s
	for !(handshook(a) && handshook(b)) {
		if time.Now().After(deadline) {
			t.Fatal("no handshake within 2 s of adding the peers: both initiated, or neither")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pkt := ipv4("10.244.1.2", "10.244.2.2", "on the session the keepalive made")
	a.tun.Outbound <- pkt
	if got := receive(t, b); !bytes.Equal(got, pkt) {
		t.Fatalf("b decrypted % x, want % x", got, pkt)
	}
	if handshook(quiet) || handshook(other) {
		t.Error("peers without Keepalive handshook with no traffic")
	}
	// The keepalive only started the handshake: it is off again (a NAT
	// needs no mapping between these two), on both the device that sent
	// it at once and the one that sent it keepaliveDelay later.
	time.Sleep(2 * keepaliveDelay)
	for _, n := range []*node{a, b} {
		if cfg, _ := n.dev.dev.IpcGet(); !strings.Contains(cfg, "persistent_keepalive_interval=0") {
			t.Fatalf("keepalive still on after the handshake:\n%s", cfg)
		}
	}
	// PersistentKeepalive (a node behind NAT) keeps it, and turning it
	// off and on again by SetPeers takes effect on the peer as it is.
	pb.PersistentKeepalive = true
	if err := a.dev.SetPeers([]Peer{pb}); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := a.dev.dev.IpcGet(); !strings.Contains(cfg, fmt.Sprintf("persistent_keepalive_interval=%d", keepaliveSeconds)) {
		t.Fatalf("PersistentKeepalive not applied:\n%s", cfg)
	}
	if !handshook(a) {
		t.Fatal("the change of keepalive reset the session")
	}
}

// TestLearnedEndpointKept: a peer configured without an endpoint (behind
// NAT, reached where its handshake came from) keeps the endpoint the
// device learned across later SetPeers calls that change its allowed IPs.
func TestLearnedEndpointKept(t *testing.T) {
	prereqtest.Root(t) // the UAPI socket lives in /var/run/wireguard
	pub, natted := newNode(t, "10.244.1.0/24"), newNode(t, "10.244.2.0/24")
	toNatted := natted.asPeer()
	toNatted.Endpoint = netip.AddrPort{}
	if err := pub.dev.SetPeers([]Peer{toNatted}); err != nil {
		t.Fatal(err)
	}
	toPub := pub.asPeer()
	toPub.Keepalive, toPub.PersistentKeepalive = true, true
	if err := natted.dev.SetPeers([]Peer{toPub}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); !handshook(pub); {
		if time.Now().After(deadline) {
			t.Fatal("the peer behind NAT did not handshake")
		}
		time.Sleep(10 * time.Millisecond)
	}
	learned := endpointOf(t, pub, toNatted.PublicKey)
	if learned == "" {
		t.Fatal("no endpoint learned from the handshake")
	}
	toNatted.AllowedIPs = append(toNatted.AllowedIPs, netip.MustParsePrefix("10.244.9.0/24")) // a relayed CIDR
	if err := pub.dev.SetPeers([]Peer{toNatted}); err != nil {
		t.Fatal(err)
	}
	if got := endpointOf(t, pub, toNatted.PublicKey); got != learned {
		t.Fatalf("endpoint after SetPeers = %q, want the learned %q", got, learned)
	}
	// A guess that does not work (the peer's private address, before it
	// says it is behind NAT) does not replace the endpoint of a live session.
	toNatted.Endpoint = netip.MustParseAddrPort("198.51.100.12:51820")
	if err := pub.dev.SetPeers([]Peer{toNatted}); err != nil {
		t.Fatal(err)
	}
	if got := endpointOf(t, pub, toNatted.PublicKey); got != learned {
		t.Fatalf("endpoint after SetPeers with a guess = %q, want the learned %q of the live session", got, learned)
	}
	pkt := ipv4("10.244.1.2", "10.244.2.2", "to the learned endpoint")
	pub.tun.Outbound <- pkt
	if got := receive(t, natted); !bytes.Equal(got, pkt) {
		t.Fatalf("decrypted % x, want % x", got, pkt)
	}
}

// endpointOf is the endpoint n's device has for peer k ("" if none).
func endpointOf(t *testing.T, n *node, k wgtypes.Key) string {
	t.Helper()
	cfg, err := n.dev.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(cfg, "\n") {
		key, v, _ := strings.Cut(line, "=")
		switch key {
		case "public_key":
			in = v == hexKey(k)
		case "endpoint":
			if in {
				return v
			}
		}
	}
	return ""
}

// TestStandbyPeerAnswersARestartedDevice: b's device stops (a weftd
// killed) and a keeps b only as a standby peer (gossip says dead); a new
// device with b's key and port (the restarted weftd, Resuming) gets a
// session within a round trip although its key is the smaller one, which
// would otherwise wait for the larger key to start. A standby peer the
// device never had is not added.
func TestStandbyPeerAnswersARestartedDevice(t *testing.T) {
	prereqtest.Root(t) // the UAPI socket lives in /var/run/wireguard
	a, b := newNode(t, "10.244.1.0/24"), newNode(t, "10.244.2.0/24")
	for ka, kb := a.dev.PublicKey(), b.dev.PublicKey(); bytes.Compare(kb[:], ka[:]) > 0; ka, kb = a.dev.PublicKey(), b.dev.PublicKey() {
		b.dev.Close()
		b = newNode(t, "10.244.2.0/24") // b must hold the smaller key
	}
	pa, pb := a.asPeer(), b.asPeer()
	pa.Keepalive, pb.Keepalive = true, true
	if err := a.dev.SetPeers([]Peer{pb}); err != nil {
		t.Fatal(err)
	}
	if err := b.dev.SetPeers([]Peer{pa}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); !handshook(a); {
		if time.Now().After(deadline) {
			t.Fatal("no first session")
		}
		time.Sleep(10 * time.Millisecond)
	}

	b.dev.Close()
	standby := pb
	standby.Standby = true
	stranger := newNode(t, "10.244.9.0/24").asPeer()
	stranger.Standby = true
	if err := a.dev.SetPeers([]Peer{standby, stranger}); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := a.dev.dev.IpcGet(); !strings.Contains(cfg, hexKey(pb.PublicKey)) || strings.Contains(cfg, hexKey(stranger.PublicKey)) {
		t.Fatalf("a's peers after the standby set (want b kept, the stranger not added):\n%s", cfg)
	}

	b2 := &node{tun: tuntest.NewChannelTUN(), port: b.port, cidr: b.cidr}
	var err error
	if b2.dev, err = New(Config{Name: fmt.Sprintf("wtest%05d", rand.IntN(100000)), PrivateKey: b.key, ListenPort: b.port, TUN: b2.tun.TUN(), Resuming: true}); err != nil {
		t.Fatal(err)
	}
	defer b2.dev.Close()
	b2.dev.SetDivert(func([][]byte, []int, int) {})
	began := time.Now()
	pa.PersistentKeepalive = true // so the interval shows in the config below
	if err := b2.dev.SetPeers([]Peer{pa}); err != nil {
		t.Fatal(err)
	}
	// Resuming: the smaller key starts at once, not keepaliveDelay later.
	if cfg, _ := b2.dev.dev.IpcGet(); !strings.Contains(cfg, "persistent_keepalive_interval=25") {
		t.Fatalf("the resuming device did not start its keepalive (and handshake) at once:\n%s", cfg)
	}
	for !handshook(b2) {
		if time.Since(began) > time.Second { // keepaliveDelay is 300 ms, the retry 5 s
			t.Fatal("the restarted device had no session within 1 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("session %s after the restarted device set its peers", time.Since(began).Round(time.Millisecond))
	pkt := ipv4("10.244.2.2", "10.244.1.2", "after the restart")
	b2.tun.Outbound <- pkt
	if got := receive(t, a); !bytes.Equal(got, pkt) {
		t.Fatalf("a decrypted % x, want % x", got, pkt)
	}
}

// TestParseStats: the peer sections of a UAPI answer, as wireguard-go
// writes them, become per-key counters; a peer without a handshake has a
// zero time; malformed keys and values are skipped, not fatal.
func TestParseStats(t *testing.T) {
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	p1, p2 := k1.PublicKey(), k2.PublicKey()
	text := "private_key=" + hexKey(k1) + "\nlisten_port=51820\n" +
		"public_key=" + hexKey(p1) + "\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\n" +
		"public_key=" + hexKey(p2) + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=x\nrx_bytes=7\n" +
		"public_key=zz\nrx_bytes=99\nerrno=0\n"
	got := parseStats(text)
	if len(got) != 2 {
		t.Fatalf("%d peers, want 2: %+v", len(got), got)
	}
	if s := got[p1]; !s.LastHandshake.Equal(time.Unix(1700000000, 5)) || s.TxBytes != 10 || s.RxBytes != 20 || s.Endpoint != netip.MustParseAddrPort("192.0.2.1:51820") {
		t.Errorf("peer 1: %+v", s)
	}
	if s := got[p2]; !s.LastHandshake.IsZero() || s.TxBytes != 0 || s.RxBytes != 7 || s.Endpoint.IsValid() {
		t.Errorf("peer 2: %+v", s)
	}
}

// handshook reports whether n's device has completed a handshake with a
// peer.
func handshook(n *node) bool {
	cfg, err := n.dev.dev.IpcGet()
	return err == nil && strings.Contains(cfg, "last_handshake_time_sec=") && !strings.Contains(cfg, "last_handshake_time_sec=0\n")
}
