package cni

// Crash safety and concurrency of ADD through the real binary.

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// TestCrashMidAddThenGC kills weft-cni with SIGKILL at each point of ADD
// (test-only hook, CrashEnv), then runs GC with the surviving pod as the
// only valid attachment: allocations, node links and node routes must be
// exactly as before the killed ADD, and the pod netns must be empty again.
func TestCrashMidAddThenGC(t *testing.T) {
	for _, point := range []string{CrashAfterAlloc, CrashAfterVeth, CrashAfterHost} {
		t.Run(point, func(t *testing.T) {
			l := newLab(t, "1.1.0")
			l.writeNode()
			keep := addNetns(t, l.suffix, "keep")
			victim := addNetns(t, l.suffix, "victim")
			if _, err := l.add(keep); err != nil {
				t.Fatalf("ADD keep: %v", err)
			}
			before := l.hostState()

			t.Setenv(CrashEnv, point)
			_, err := l.add(victim)
			if err == nil {
				t.Fatal("ADD with a crash hook succeeded")
			}
			t.Setenv(CrashEnv, "")
			t.Logf("killed ADD: %v", err)

			// The crash left what that point implies, and no more
			// was rolled back: the test proves GC, not the rollback.
			mid := l.hostState()
			if _, ok := l.lookup(victim); !ok {
				t.Fatalf("no allocation persisted before %s", point)
			}
			hasVeth := slices.Contains(l.weftLinks(), HostVethName(victim, "eth0"))
			if hasVeth != (point != CrashAfterAlloc) {
				t.Fatalf("at %s host veth present=%v", point, hasVeth)
			}
			if reflect.DeepEqual(mid, before) {
				t.Fatal("killed ADD left no trace; the hook did not fire where expected")
			}

			if err := l.gc(false, keep); err != nil {
				t.Fatalf("GC: %v", err)
			}
			after := l.hostState()
			if !reflect.DeepEqual(after, before) {
				t.Fatalf("after GC:\n%+v\nbefore the killed ADD:\n%+v", after, before)
			}
			if got := podLinks(t, victim); !slices.Equal(got, []string{"lo"}) {
				t.Fatalf("victim pod links after GC: %v", got)
			}
			if err := l.check(keep); err != nil {
				t.Fatalf("CHECK of the kept pod after GC: %v", err)
			}
			// The victim can be wired afresh.
			if _, err := l.add(victim); err != nil {
				t.Fatalf("ADD after GC: %v", err)
			}
			for _, p := range []string{victim, keep} {
				if err := l.del(p); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestConcurrentAdds runs 100 ADDs at once on one node through the real
// binary and libcni: 100 distinct addresses, 100 veths, all CHECKable; then
// 100 concurrent DELs leave nothing.
func TestConcurrentAdds(t *testing.T) {
	const n = 100
	l := newLab(t, "1.1.0")
	l.writeNode() // 10.244.7.0/24: 253 usable addresses
	pods := make([]string, n)
	for i := range pods {
		pods[i] = addNetns(t, l.suffix, fmt.Sprintf("c%03d", i))
	}
	start := time.Now()
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() {
			res, err := l.add(p)
			if err != nil {
				errs[i] = err
				return
			}
			r, err := types100.GetResult(res)
			if err != nil {
				errs[i] = err
				return
			}
			ips[i], _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
		})
	}
	wg.Wait()
	t.Logf("%d concurrent ADDs in %v", n, time.Since(start))
	seen := map[netip.Addr]string{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD %s: %v", pods[i], err)
		}
		if prev, dup := seen[ips[i]]; dup {
			t.Fatalf("%s and %s both got %v", prev, pods[i], ips[i])
		}
		if !netip.MustParsePrefix("10.244.7.0/24").Contains(ips[i]) || ips[i].String() == "10.244.7.1" {
			t.Fatalf("%s got %v", pods[i], ips[i])
		}
		seen[ips[i]] = pods[i]
		if a, ok := l.lookup(pods[i]); !ok || a != ips[i] {
			t.Fatalf("store says %s holds %v %v, result says %v", pods[i], a, ok, ips[i])
		}
	}
	st := l.hostState()
	if len(st.Allocs) != n || len(l.weftLinks()) != n {
		t.Fatalf("%d allocations, %d veths, want %d", len(st.Allocs), len(l.weftLinks()), n)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		if err := l.check(pods[i]); err != nil {
			t.Fatalf("CHECK %s: %v", pods[i], err)
		}
	}
	for i, p := range pods {
		wg.Go(func() { errs[i] = l.del(p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("DEL %s: %v", pods[i], err)
		}
	}
	if st := l.hostState(); len(st.Allocs) != 0 || len(l.weftLinks()) != 0 {
		t.Fatalf("left after DELs: %d allocations, links %v", len(st.Allocs), l.weftLinks())
	}
}
