package peer

import (
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

var loopback = netip.MustParseAddr("127.0.0.1")

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// fastConfig speeds gossip up so a three-node cluster converges well
// within a second. Failure detection stays moderate: with -race on two
// cores, tighter probe timeouts make healthy nodes flap.
func fastConfig(t *testing.T, name string, seeds ...string) Config {
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.BindAddr = loopback
	cfg.BindPort = 0
	cfg.Seeds = seeds
	cfg.ProbeInterval = 200 * time.Millisecond
	cfg.ProbeTimeout = 100 * time.Millisecond
	cfg.GossipInterval = 20 * time.Millisecond
	cfg.RejoinInterval = 100 * time.Millisecond
	cfg.Logger = testLogger(t)
	return cfg
}

func nodeRecord(i int) Record {
	return Record{
		Name:       fmt.Sprintf("n%d", i),
		Underlay:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), 4789),
		PodCIDRs:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)},
		VTEPMAC:    [6]byte{0x02, 0, 0, 0, 0, byte(i)},
		Site:       "site1",
		Caps:       CapVXLAN,
		Generation: 1,
	}
}

func startNode(t *testing.T, i int, seeds ...string) *Membership {
	t.Helper()
	m, err := Join(fastConfig(t, fmt.Sprintf("n%d", i), seeds...), nodeRecord(i))
	if err != nil {
		t.Fatalf("Join n%d: %v", i, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// waitUpdate reads snapshots until ok accepts one or the deadline passes.
func waitUpdate(t *testing.T, m *Membership, what string, ok func([]Peer) bool) []Peer {
	t.Helper()
	deadline := time.After(5 * time.Second)
	var last []Peer
	for {
		select {
		case snap, open := <-m.Updates():
			if !open {
				t.Fatalf("%s: %s: Updates closed", m.Self().Name, what)
			}
			last = snap
			if ok(snap) {
				return snap
			}
		case <-deadline:
			t.Fatalf("%s: %s: timed out; last snapshot %v", m.Self().Name, what, names(last))
		}
	}
}

func names(ps []Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Record.Name+"/"+string(p.State))
	}
	return out
}

func hasExactly(want ...string) func([]Peer) bool {
	return func(ps []Peer) bool {
		var got []string
		for _, p := range ps {
			got = append(got, p.Record.Name)
		}
		return slices.Equal(got, want)
	}
}

func TestMembershipConvergeLeave(t *testing.T) {
	// Every node gets the same seed list, including n1 itself: its own
	// address must be skipped.
	port, err := netListenFreePort()
	if err != nil {
		t.Fatal(err)
	}
	seed := netip.AddrPortFrom(loopback, uint16(port)).String()
	cfg1 := fastConfig(t, "n1", seed)
	cfg1.BindPort = port
	n1, err := Join(cfg1, nodeRecord(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n1.Close() })
	if len(n1.seeds) != 0 || n1.Counters()["seed_join_attempts"] != 0 {
		t.Fatalf("own address not skipped: %v", n1.seeds)
	}
	n2 := startNode(t, 2, seed)
	n3 := startNode(t, 3, seed)

	nodes := []*Membership{n1, n2, n3}
	for i, m := range nodes {
		var want []string
		for j := range nodes {
			if j != i {
				want = append(want, fmt.Sprintf("n%d", j+1))
			}
		}
		snap := waitUpdate(t, m, "converge", hasExactly(want...))
		for _, p := range snap {
			var j int
			fmt.Sscanf(p.Record.Name, "n%d", &j)
			if !p.Record.Equal(nodeRecord(j)) {
				t.Errorf("%s sees %s as %+v, want %+v", m.Self().Name, p.Record.Name, p.Record, nodeRecord(j))
			}
			if p.State != StateAlive || p.LastSeen.IsZero() {
				t.Errorf("%s sees %s state %q lastSeen %v", m.Self().Name, p.Record.Name, p.State, p.LastSeen)
			}
		}
	}

	// A record change reaches the others as a new snapshot.
	r := n2.Self()
	r.PodCIDRs = append(slices.Clone(r.PodCIDRs), netip.MustParsePrefix("fd00:10:244:2::/64"))
	if err := n2.UpdateSelf(r, time.Second); err != nil {
		t.Fatal(err)
	}
	if g := n2.Self().Generation; g != 2 {
		t.Errorf("generation after update = %d, want 2", g)
	}
	waitUpdate(t, n1, "update", func(ps []Peer) bool {
		return len(ps) == 2 && len(ps[0].Record.PodCIDRs) == 2 && ps[0].Record.Generation == 2
	})

	// A graceful leave removes n3 from the live snapshots; status still shows it.
	if err := n3.Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	waitUpdate(t, n1, "leave", hasExactly("n2"))
	waitUpdate(t, n2, "leave", hasExactly("n1"))
	var seen bool
	for _, p := range n1.Peers() {
		if p.Record.Name == "n3" {
			seen = true
			if p.State != StateLeft {
				t.Errorf("n1 status shows n3 as %q, want left", p.State)
			}
		}
	}
	if !seen {
		t.Errorf("n1 status lost n3: %v", names(n1.Peers()))
	}
	if c := n1.Counters(); c["peer_leaves"] == 0 || c["peer_joins"] < 2 || c["records_rejected"] != 0 {
		t.Errorf("n1 counters %v", c)
	}
	if err := n3.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := n3.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, open := <-n3.Updates(); open {
		// Drain a possibly pending snapshot; the channel must then be closed.
		if _, open := <-n3.Updates(); open {
			t.Error("Updates not closed after Close")
		}
	}
	if err := n3.Leave(time.Second); err != ErrClosed {
		t.Errorf("Leave after Close = %v, want ErrClosed", err)
	}
}

// junkDelegate is a memberlist.Delegate gossiping arbitrary metadata.
type junkDelegate struct{ meta []byte }

func (d junkDelegate) NodeMeta(int) []byte           { return d.meta }
func (junkDelegate) NotifyMsg([]byte)                {}
func (junkDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (junkDelegate) LocalState(bool) []byte          { return nil }
func (junkDelegate) MergeRemoteState([]byte, bool)   {}

func rawMember(t *testing.T, name string, meta []byte, seed string) {
	t.Helper()
	mc := memberlist.DefaultLocalConfig()
	mc.Name = name
	mc.BindAddr = "127.0.0.1"
	mc.BindPort = 0
	mc.Delegate = junkDelegate{meta}
	mc.Logger = log.New(io.Discard, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ml.Shutdown() })
	if _, err := ml.Join([]string{seed}); err != nil {
		t.Fatal(err)
	}
}

func TestMembershipRejectsBadRecords(t *testing.T) {
	n1 := startNode(t, 1)
	seed := n1.GossipAddr().String()
	waitUpdate(t, n1, "initial", hasExactly())

	impostor, _ := func() ([]byte, error) { r := nodeRecord(9); return r.MarshalBinary() }() // valid record, wrong name
	unmasked, _ := func() ([]byte, error) {
		r := nodeRecord(8)
		r.Name = "bad-cidr"
		r.PodCIDRs[0] = netip.MustParsePrefix("10.244.8.1/24")
		return r.MarshalBinary()
	}()
	rawMember(t, "garbage", []byte("\x01this is not a record"), seed)
	rawMember(t, "empty", nil, seed)
	rawMember(t, "impostor", impostor, seed)
	rawMember(t, "bad-cidr", unmasked, seed)
	n2 := startNode(t, 2, seed)

	// The good node arrives; the bad ones never appear.
	waitUpdate(t, n1, "good peer", hasExactly("n2"))
	deadline := time.Now().Add(5 * time.Second)
	for n1.Counters()["records_rejected"] < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c := n1.Counters()["records_rejected"]; c != 4 {
		t.Errorf("records_rejected = %d, want 4", c)
	}
	if got := names(n1.Peers()); !slices.Equal(got, []string{"n2/alive"}) {
		t.Errorf("Peers() = %v", got)
	}
	// n2 learned the junk members through gossip, not directly: same verdict.
	waitUpdate(t, n2, "good peer", hasExactly("n1"))
	for n2.Counters()["records_rejected"] < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c := n2.Counters()["records_rejected"]; c != 4 {
		t.Errorf("n2 records_rejected = %d, want 4", c)
	}
}

func TestMembershipRetriesSeeds(t *testing.T) {
	// n2 starts first with n1 as its seed, which is not up yet.
	l, err := netListenFreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg1 := fastConfig(t, "n1")
	cfg1.BindPort = l
	seed := netip.AddrPortFrom(loopback, uint16(l)).String()
	n2 := startNode(t, 2, seed)
	waitUpdate(t, n2, "alone", hasExactly())
	if n2.Counters()["seed_join_failures"] == 0 {
		t.Error("join of a dead seed did not fail")
	}
	n1, err := Join(cfg1, nodeRecord(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n1.Close() })
	waitUpdate(t, n2, "late seed", hasExactly("n1"))
	waitUpdate(t, n1, "late seed", hasExactly("n2"))

	// Without Leave, n1 is detected as failed: gone from the live view,
	// "dead" (not "left") in status, and n2 goes back to retrying its seed.
	attempts := n2.Counters()["seed_join_attempts"]
	n1.Close()
	waitUpdate(t, n2, "failure", hasExactly())
	if got := names(n2.Peers()); !slices.Equal(got, []string{"n1/dead"}) {
		t.Errorf("n2 status after n1 failed: %v", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n2.Counters()["seed_join_attempts"] == attempts && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n2.Counters()["seed_join_attempts"] == attempts {
		t.Error("alone again, but seeds not retried")
	}
}

// netListenFreePort finds a port free for both TCP and UDP on loopback,
// for tests that must know a node's port before it starts.
func netListenFreePort() (int, error) {
	for range 20 {
		tl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return 0, err
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		tl.Close()
		if err == nil {
			ul.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port")
}

func TestUpdatesCoalesce(t *testing.T) {
	m := &Membership{updates: make(chan []Peer, 1)}
	for i := 1; i <= 3; i++ {
		m.publish([]Peer{{Record: nodeRecord(i)}})
	}
	got := <-m.updates
	if len(got) != 1 || got[0].Record.Name != "n3" {
		t.Errorf("got %v, want only the latest snapshot", names(got))
	}
	select {
	case s := <-m.updates:
		t.Errorf("stale snapshot left behind: %v", names(s))
	default:
	}
}

func TestJoinTargets(t *testing.T) {
	self := netip.MustParseAddrPort("192.0.2.11:7946")
	got := joinTargets([]string{"192.0.2.11", "192.0.2.11:7946", "192.0.2.11:7000", " 192.0.2.12 ", "192.0.2.12:7946", "", "seed.example:1234", "2001:db8::1", "[2001:db8::2]:99"}, self)
	want := []string{"192.0.2.11:7000", "192.0.2.12:7946", "seed.example:1234", "[2001:db8::1]:7946", "[2001:db8::2]:99"}
	if !slices.Equal(got, want) {
		t.Errorf("joinTargets = %q, want %q", got, want)
	}
}

func TestJoinRejectsBadConfig(t *testing.T) {
	good := fastConfig(t, "n1")
	bad := nodeRecord(1)
	bad.Underlay = netip.AddrPort{}
	for name, tc := range map[string]struct {
		cfg Config
		rec Record
	}{
		"name mismatch": {good, nodeRecord(2)},
		"bad record":    {good, bad},
		"no bind addr":  {func() Config { c := good; c.BindAddr = netip.Addr{}; return c }(), nodeRecord(1)},
	} {
		if m, err := Join(tc.cfg, tc.rec); err == nil {
			m.Close()
			t.Errorf("%s: Join succeeded", name)
		}
	}
}

func TestMemberlistLog(t *testing.T) {
	var b strings.Builder
	l := log.New(memberlistLog{slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug}))}, "", 0)
	l.Printf("[WARN] memberlist: Was able to connect to n2 over TCP but UDP probes failed")
	if s := b.String(); !strings.Contains(s, "level=DEBUG") || !strings.Contains(s, `msg="Was able to connect`) || !strings.Contains(s, "ml_level=WARN") {
		t.Errorf("log line %q", s)
	}
}

// TestMembershipNoLeaks runs a small cluster and checks Close leaves no
// goroutines behind. memberlist's own listeners wind down asynchronously
// after Shutdown, hence the retries.
func TestMembershipNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		n1, err := Join(fastConfig(t, "n1"), nodeRecord(1))
		if err != nil {
			t.Fatal(err)
		}
		n2, err := Join(fastConfig(t, "n2", n1.GossipAddr().String()), nodeRecord(2))
		if err != nil {
			n1.Close()
			t.Fatal(err)
		}
		waitUpdate(t, n1, "converge", hasExactly("n2"))
		n2.Leave(time.Second)
		n2.Close()
		n1.Close()
	}()
	var now int
	for range 100 {
		if now = runtime.NumGoroutine(); now <= before+2 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	t.Errorf("goroutines: %d before, %d after Close\n%s", before, now, buf[:runtime.Stack(buf, true)])
}
