package claim

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"
)

var (
	cluster = netip.MustParsePrefix("10.244.0.0/16")
	now     = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	pfx     = netip.MustParsePrefix
)

func TestPickFreeAndStable(t *testing.T) {
	cfg := DefaultConfig(cluster)
	p1, err := cfg.Pick("n1", netip.Prefix{}, nil, now)
	if err != nil || !cfg.Fits(p1) {
		t.Fatalf("Pick = %s, %v", p1, err)
	}
	again, _ := cfg.Pick("n1", netip.Prefix{}, nil, now)
	if again != p1 {
		t.Fatalf("Pick is not deterministic: %s then %s", p1, again)
	}
	// The block is taken by a live node: n1 gets another one.
	p2, err := cfg.Pick("n1", netip.Prefix{}, []Holder{{Name: "n0", CIDR: p1, Alive: true}}, now)
	if err != nil || p2 == p1 || p2.Overlaps(p1) {
		t.Fatalf("Pick around a held block = %s, %v", p2, err)
	}
	// Different names start at different blocks (the hash spreads them).
	seen := map[netip.Prefix]bool{}
	for _, n := range []string{"n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"} {
		p, _ := cfg.Pick(n, netip.Prefix{}, nil, now)
		seen[p] = true
	}
	if len(seen) < 6 {
		t.Errorf("8 names start at only %d blocks", len(seen))
	}
}

func TestKeepAndGrace(t *testing.T) {
	cfg := Config{Cluster: cluster, Bits: 24, Grace: 10 * time.Minute}
	mine := pfx("10.244.7.0/24")
	for _, tc := range []struct {
		name    string
		holders []Holder
		keep    bool
	}{
		{"free", nil, true},
		{"higher name alive", []Holder{{Name: "n9", CIDR: mine, Alive: true}}, true},
		{"lower name alive", []Holder{{Name: "n1", CIDR: mine, Alive: true}}, false},
		{"lower name overlapping", []Holder{{Name: "n1", CIDR: pfx("10.244.0.0/20"), Alive: true}}, false},
		{"lower name dead in grace", []Holder{{Name: "n1", CIDR: mine, Seen: now.Add(-9 * time.Minute)}}, false},
		{"lower name dead past grace", []Holder{{Name: "n1", CIDR: mine, Seen: now.Add(-11 * time.Minute)}}, true},
		{"lower name elsewhere", []Holder{{Name: "n1", CIDR: pfx("10.244.8.0/24"), Alive: true}}, true},
	} {
		keep, why := cfg.Keep("n5", mine, tc.holders, now)
		if keep != tc.keep {
			t.Errorf("%s: Keep = %v (%s), want %v", tc.name, keep, why, tc.keep)
		}
		got, err := cfg.Pick("n5", mine, tc.holders, now)
		if err != nil || (got == mine) != tc.keep {
			t.Errorf("%s: Pick(want %s) = %s, %v", tc.name, mine, got, err)
		}
	}
	if ok, _ := cfg.Keep("n5", pfx("10.244.7.0/25"), nil, now); ok {
		t.Error("Keep accepted a block of the wrong size")
	}
	if ok, _ := cfg.Keep("n5", pfx("10.245.7.0/24"), nil, now); ok {
		t.Error("Keep accepted a block outside the cluster")
	}
	// A dead node's block, in grace, is not handed out fresh either.
	dead := []Holder{{Name: "n1", CIDR: mine, Seen: now.Add(-time.Minute)}}
	for range 300 {
		p, _ := cfg.Pick("z", netip.Prefix{}, dead, now)
		if p == mine {
			t.Fatal("picked a block inside its grace period")
		}
	}
	if lost, by := cfg.Lost("n5", mine, []Holder{{Name: "n1", CIDR: mine, Alive: true}}); !lost || by != "n1" {
		t.Errorf("Lost to a live lower name = %v %s", lost, by)
	}
	if lost, _ := cfg.Lost("n5", mine, dead); lost {
		t.Error("a settled block was lost to a dead node")
	}
}

// TestSimultaneousClaimsResolve plays the protocol: every node picks
// without seeing the others, then they re-pick in rounds seeing everyone's
// last pick, until nobody moves. No two nodes may end on one block.
func TestSimultaneousClaimsResolve(t *testing.T) {
	cfg := Config{Cluster: pfx("10.244.0.0/20"), Bits: 24, Grace: time.Minute} // 16 blocks
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"}
	claims := map[string]netip.Prefix{}
	for _, n := range names {
		claims[n], _ = cfg.Pick(n, netip.Prefix{}, nil, now)
	}
	for round := 0; ; round++ {
		if round > len(names) {
			t.Fatalf("no fixpoint after %d rounds: %v", round, claims)
		}
		moved := false
		for _, n := range names {
			var hs []Holder
			for o, c := range claims {
				if o != n {
					hs = append(hs, Holder{Name: o, CIDR: c, Alive: true})
				}
			}
			p, err := cfg.Pick(n, claims[n], hs, now)
			if err != nil {
				t.Fatal(err)
			}
			if p != claims[n] {
				claims[n], moved = p, true
			}
		}
		if !moved {
			break
		}
	}
	owner := map[netip.Prefix]string{}
	for n, c := range claims {
		if o, dup := owner[c]; dup {
			t.Fatalf("%s and %s both hold %s", o, n, c)
		}
		owner[c] = n
	}
	// The 17th node finds the range full.
	var hs []Holder
	for n, c := range claims {
		hs = append(hs, Holder{Name: n, CIDR: c, Alive: true})
	}
	if _, err := cfg.Pick("q", netip.Prefix{}, hs, now); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full range: %v", err)
	}
}

func TestBlocksIPv6(t *testing.T) {
	cfg := Config{Cluster: pfx("fd00:10::/48"), Bits: 64}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if b := cfg.block(5); b != pfx("fd00:10:0:5::/64") {
		t.Fatalf("block(5) = %s", b)
	}
	if b := (Config{Cluster: cluster, Bits: 24}).block(255); b != pfx("10.244.255.0/24") {
		t.Fatalf("block(255) = %s", b)
	}
	for _, bad := range []Config{{Cluster: cluster, Bits: 8}, {Cluster: cluster, Bits: 31}, {Cluster: pfx("10.244.1.0/16"), Bits: 24}, {Cluster: pfx("fd00::/16"), Bits: 64}, {Cluster: cluster, Bits: 24, Grace: -time.Second}} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	cluster6 := pfx("fd00:10:244::/56")
	if _, err := Load(dir, cluster); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of nothing: %v", err)
	}
	want := State{Name: "n1", Cluster: cluster, CIDR: pfx("10.244.7.0/24"), Settled: now}
	want6 := State{Name: "n1", Cluster: cluster6, CIDR: pfx("fd00:10:244:7::/64"), Settled: now}
	if err := Save(dir, want); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, cluster6); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of the IPv6 claim before it was saved: %v", err)
	}
	if err := Save(dir, want6); err != nil {
		t.Fatal(err)
	}
	// One file per family: each comes back as saved.
	for _, w := range []State{want, want6} {
		got, err := Load(dir, w.Cluster)
		if err != nil || got.Name != w.Name || got.CIDR != w.CIDR || got.Cluster != w.Cluster || !got.Settled.Equal(now) {
			t.Fatalf("Load(%s) = %+v, %v; want %+v", w.Cluster, got, err, w)
		}
	}
	os.WriteFile(dir+"/"+FileName, []byte("{\"version\":9}"), 0o600)
	if _, err := Load(dir, cluster); err == nil {
		t.Fatal("Load accepted an unknown version")
	}
	os.WriteFile(dir+"/"+FileName6, []byte("{"), 0o600)
	if _, err := Load(dir, cluster6); err == nil {
		t.Fatal("Load accepted junk")
	}
}

// TestPickPerFamily: the IPv6 policy hands out /64s of its range, avoids
// IPv6 blocks others hold and ignores their IPv4 blocks (and the IPv4
// policy the IPv6 ones), so a dual-stack node's two claims never
// interfere.
func TestPickPerFamily(t *testing.T) {
	c4 := Config{Cluster: cluster, Bits: 24, Grace: time.Minute}
	c6 := Config{Cluster: pfx("fd00:10:244::/56"), Bits: 64, Grace: time.Minute}
	free6, err := c6.Pick("n2", netip.Prefix{}, nil, now)
	if err != nil || !c6.Fits(free6) {
		t.Fatalf("Pick IPv6 = %s, %v", free6, err)
	}
	free4, err := c4.Pick("n2", netip.Prefix{}, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	// n1 (lower name) holds exactly the blocks n2 would pick.
	holders := []Holder{{Name: "n1", CIDR: free4, Alive: true}, {Name: "n1", CIDR: free6, Alive: true}}
	p6, err := c6.Pick("n2", free6, holders, now)
	if err != nil || p6 == free6 || !c6.Fits(p6) {
		t.Fatalf("Pick IPv6 with %s held = %s, %v", free6, p6, err)
	}
	if ok, _ := c6.Keep("n2", free6, holders, now); ok {
		t.Fatalf("Keep IPv6 %s held by n1 (lower name) succeeded", free6)
	}
	if lost, by := c6.Lost("n2", free6, holders); !lost || by != "n1" {
		t.Fatalf("Lost IPv6 = %v %q", lost, by)
	}
	// IPv4 holders do not reserve IPv6 blocks, nor the other way round.
	only4 := holders[:1]
	if p, err := c6.Pick("n2", free6, only4, now); err != nil || p != free6 {
		t.Fatalf("Pick IPv6 with only IPv4 held = %s, %v; want %s", p, err, free6)
	}
	if p, err := c4.Pick("n2", free4, holders[1:], now); err != nil || p != free4 {
		t.Fatalf("Pick IPv4 with only IPv6 held = %s, %v; want %s", p, err, free4)
	}
}
