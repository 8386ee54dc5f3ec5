package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func owner(i int) Owner { return Owner{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func openT(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestAllocateExhaustSlash29(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.7.0/29")
	gw := netip.MustParseAddr("10.244.7.1")
	// .0 network, .1 gateway, .7 broadcast: .2-.6 are usable, in order.
	for i, want := range []string{"10.244.7.2", "10.244.7.3", "10.244.7.4", "10.244.7.5", "10.244.7.6"} {
		a, err := s.Allocate(cidr, []netip.Addr{gw}, owner(i))
		if err != nil {
			t.Fatalf("allocate %d: %v", i, err)
		}
		if a.String() != want {
			t.Fatalf("allocate %d = %v, want %s", i, a, want)
		}
	}
	if _, err := s.Allocate(cidr, []netip.Addr{gw}, owner(99)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocate on full /29: err %v, want ErrExhausted", err)
	}
	// The failed attempt must not leave a file behind.
	held, err := s.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 5 {
		t.Fatalf("%d allocations after exhaustion, want 5: %v", len(held), held)
	}
}

func TestAllocateIdempotent(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	a1, err := s.Allocate(cidr, nil, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	a2, err := s.Allocate(cidr, nil, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	if a1 != a2 {
		t.Fatalf("same owner got %v then %v", a1, a2)
	}
	// Same container, other interface: a different attachment.
	a3, err := s.Allocate(cidr, nil, Owner{ContainerID: "c1", IfName: "net1"})
	if err != nil {
		t.Fatal(err)
	}
	if a3 == a1 {
		t.Fatalf("different ifname got the same address %v", a3)
	}
	got, ok, err := s.Lookup(owner(1))
	if err != nil || !ok || got != a1 {
		t.Fatalf("Lookup = %v %v %v, want %v", got, ok, err, a1)
	}
	b, err := os.ReadFile(filepath.Join(s.Dir(), a1.String()))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "c1\neth0" {
		t.Fatalf("allocation file holds %q, want host-local format", b)
	}
}

func TestReleaseAndReuse(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.7.0/30") // only .1 and .2 usable
	a, err := s.Allocate(cidr, nil, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Allocate(cidr, nil, owner(2))
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("two owners share an address")
	}
	if _, err := s.Allocate(cidr, nil, owner(3)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("want ErrExhausted, got %v", err)
	}
	if err := s.Release(owner(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(owner(1)); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if _, ok, _ := s.Lookup(owner(1)); ok {
		t.Fatal("released owner still found")
	}
	c, err := s.Allocate(cidr, nil, owner(3))
	if err != nil {
		t.Fatal(err)
	}
	if c != a {
		t.Fatalf("reuse got %v, want freed %v", c, a)
	}
}

func TestRoundRobin(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	a, _ := s.Allocate(cidr, nil, owner(1))
	if err := s.Release(owner(1)); err != nil {
		t.Fatal(err)
	}
	b, err := s.Allocate(cidr, nil, owner(2))
	if err != nil {
		t.Fatal(err)
	}
	if b != a.Next() {
		t.Fatalf("after releasing %v got %v, want the next address (no immediate reuse)", a, b)
	}
}

func TestReleaseAllOfOwner(t *testing.T) {
	s := openT(t, t.TempDir())
	o := owner(1)
	if _, err := s.Allocate(netip.MustParsePrefix("10.244.7.0/24"), nil, o); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Allocate(netip.MustParsePrefix("10.245.0.0/24"), nil, o); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(o); err != nil {
		t.Fatal(err)
	}
	held, _ := s.Allocations()
	if len(held) != 0 {
		t.Fatalf("left %v", held)
	}
}

func TestReopenSurvives(t *testing.T) {
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Allocate(cidr, nil, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Allocate(cidr, nil, owner(2)); err == nil {
		t.Fatal("Allocate on closed store succeeded")
	}

	s2 := openT(t, dir)
	got, ok, err := s2.Lookup(owner(1))
	if err != nil || !ok || got != a {
		t.Fatalf("after reopen Lookup = %v %v %v, want %v", got, ok, err, a)
	}
	b, err := s2.Allocate(cidr, nil, owner(2))
	if err != nil {
		t.Fatal(err)
	}
	if b == a {
		t.Fatal("reopened store handed out a held address")
	}
}

func TestIgnoresStrayFiles(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	// A temporary left by a crash and garbage in the hint must not matter.
	os.WriteFile(filepath.Join(dir, "10.244.7.2.tmp"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, lastReservedName), []byte("not an ip"), 0o600)
	a, err := s.Allocate(netip.MustParsePrefix("10.244.7.0/24"), nil, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	if a.String() != "10.244.7.1" {
		t.Fatalf("got %v", a)
	}
}

func TestBadInput(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	for _, o := range []Owner{{}, {ContainerID: "c"}, {IfName: "eth0"}, {ContainerID: "a\nb", IfName: "eth0"}} {
		if _, err := s.Allocate(cidr, nil, o); err == nil {
			t.Errorf("Allocate(%q) succeeded", o)
		}
		if err := s.Release(o); err == nil {
			t.Errorf("Release(%q) succeeded", o)
		}
	}
	if _, err := s.Allocate(netip.Prefix{}, nil, owner(1)); err == nil {
		t.Error("Allocate with zero prefix succeeded")
	}
}

func TestRange(t *testing.T) {
	for _, tc := range []struct {
		p, first, last string
	}{
		{"10.244.7.0/24", "10.244.7.1", "10.244.7.254"},
		{"10.244.7.77/24", "10.244.7.1", "10.244.7.254"},
		{"10.244.0.0/16", "10.244.0.1", "10.244.255.254"},
		{"10.244.7.0/31", "10.244.7.0", "10.244.7.1"},
		{"10.244.7.9/32", "10.244.7.9", "10.244.7.9"},
		{"fd00:10:244:7::/64", "fd00:10:244:7::1", "fd00:10:244:7:ffff:ffff:ffff:ffff"},
	} {
		r := newRange(netip.MustParsePrefix(tc.p).Masked())
		if r.first.String() != tc.first || r.last.String() != tc.last {
			t.Errorf("%s: range %v-%v, want %s-%s", tc.p, r.first, r.last, tc.first, tc.last)
		}
	}
}

func TestAllocateIPv6(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("fd00:10:244:7::/64")
	gw := netip.MustParseAddr("fd00:10:244:7::1")
	a, err := s.Allocate(cidr, []netip.Addr{gw}, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	if a.String() != "fd00:10:244:7::2" {
		t.Fatalf("got %v", a)
	}
}

func TestConcurrentGoroutines(t *testing.T) {
	dir := t.TempDir()
	shared := openT(t, dir)
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	const n = 50
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s := shared
			if i%2 == 1 {
				// Half use their own Store: then only the flock
				// keeps them apart.
				own, err := Open(dir)
				if err != nil {
					errs[i] = err
					return
				}
				defer own.Close()
				s = own
			}
			addrs[i], errs[i] = s.Allocate(cidr, nil, owner(i))
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("goroutines %d and %d both got %v", j, i, a)
		}
		seen[a] = i
	}
}

const helperEnv = "WEFT_IPAM_TEST_HELPER"

// TestHelperProcess is not a test: TestConcurrentProcesses re-executes the
// test binary with it selected, to allocate from another process.
func TestHelperProcess(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper for TestConcurrentProcesses")
	}
	dir, rest, _ := strings.Cut(spec, ",")
	id, count, _ := strings.Cut(rest, ",")
	n, _ := strconv.Atoi(count)
	s, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := range n {
		a, err := s.Allocate(netip.MustParsePrefix("10.244.0.0/16"), nil, Owner{ContainerID: fmt.Sprintf("p%s-%d", id, i), IfName: "eth0"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(a)
	}
	s.Close()
	os.Exit(0)
}

func TestConcurrentProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	const procs, each = 6, 25
	outs := make([][]byte, procs)
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for p := range procs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d", helperEnv, dir, p, each))
			cmd.Stderr = os.Stderr
			outs[p], errs[p] = cmd.Output()
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for p := range procs {
		if errs[p] != nil {
			t.Fatalf("process %d: %v", p, errs[p])
		}
		lines := strings.Fields(string(outs[p]))
		if len(lines) != each {
			t.Fatalf("process %d printed %d addresses, want %d: %q", p, len(lines), each, outs[p])
		}
		for _, l := range lines {
			if seen[l] {
				t.Fatalf("address %s handed out twice across processes", l)
			}
			seen[l] = true
		}
	}
	s := openT(t, dir)
	held, err := s.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != procs*each {
		t.Fatalf("%d allocation files, want %d", len(held), procs*each)
	}
}

func TestPrune(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	addrs := map[int]netip.Addr{}
	for i := range 5 {
		a, err := s.Allocate(cidr, nil, owner(i))
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = a
	}
	// An allocation in the old host-local format matches no attachment.
	if err := os.WriteFile(filepath.Join(s.Dir(), "10.244.7.200"), []byte("legacy"), 0o640); err != nil {
		t.Fatal(err)
	}
	keep := map[Owner]bool{owner(1): true, owner(3): true}
	released, err := s.Prune(func(o Owner) bool { return keep[o] })
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]Owner{
		addrs[0]: owner(0), addrs[2]: owner(2), addrs[4]: owner(4),
		netip.MustParseAddr("10.244.7.200"): {ContainerID: "legacy"},
	}
	if fmt.Sprint(released) != fmt.Sprint(want) {
		t.Fatalf("released %v, want %v", released, want)
	}
	held, err := s.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 2 || held[addrs[1]] != owner(1) || held[addrs[3]] != owner(3) {
		t.Fatalf("left %v", held)
	}
	// Pruning again releases nothing.
	if released, err := s.Prune(func(o Owner) bool { return keep[o] }); err != nil || len(released) != 0 {
		t.Fatalf("second prune: %v %v", released, err)
	}
}

func TestFree(t *testing.T) {
	s := openT(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.7.0/29")
	gw := []netip.Addr{netip.MustParseAddr("10.244.7.1")}
	free := func() int {
		t.Helper()
		n, err := s.Free(cidr, gw, 100)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := free(); n != 5 {
		t.Fatalf("free on empty /29 = %d, want 5", n)
	}
	for i := range 5 {
		if _, err := s.Allocate(cidr, gw, owner(i)); err != nil {
			t.Fatal(err)
		}
		if n := free(); n != 4-i {
			t.Fatalf("free after %d allocations = %d, want %d", i+1, n, 4-i)
		}
	}
	// The cap bounds the walk over a huge range.
	n, err := s.Free(netip.MustParsePrefix("fd00:10:244::/64"), nil, 3)
	if err != nil || n != 3 {
		t.Fatalf("free on /64 capped at 3 = %d %v", n, err)
	}
}

// TestAddressesDualStack: an owner holds one address per family, Addresses
// lists both (IPv4 first), and Release frees both.
func TestAddressesDualStack(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o := Owner{ContainerID: "c1", IfName: "eth0"}
	v6, err := s.Allocate(netip.MustParsePrefix("fd00:10:244:1::/64"), []netip.Addr{netip.MustParseAddr("fd00:10:244:1::1")}, o)
	if err != nil {
		t.Fatal(err)
	}
	v4, err := s.Allocate(netip.MustParsePrefix("10.244.1.0/24"), []netip.Addr{netip.MustParseAddr("10.244.1.1")}, o)
	if err != nil {
		t.Fatal(err)
	}
	if v4.String() != "10.244.1.2" || v6.String() != "fd00:10:244:1::2" {
		t.Fatalf("allocated %v and %v, want the first free host of each", v4, v6)
	}
	got, err := s.Addresses(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != v4 || got[1] != v6 {
		t.Fatalf("Addresses = %v, want [%v %v]", got, v4, v6)
	}
	if err := s.Release(o); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Addresses(o); err != nil || len(got) != 0 {
		t.Fatalf("after Release: %v, %v", got, err)
	}
}
