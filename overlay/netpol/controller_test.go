package netpol

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type fakeSource struct {
	mu      sync.Mutex
	st      State
	synced  chan struct{}
	changes chan struct{}
}

func (f *fakeSource) WaitSynced(ctx context.Context) error {
	select {
	case <-f.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeSource) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeSource) Changes() <-chan struct{} { return f.changes }

func (f *fakeSource) set(st State) {
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
	select {
	case f.changes <- struct{}{}:
	default:
	}
}

// fakeTable records what was applied.
type fakeTable struct {
	mu      sync.Mutex
	applied []*Ruleset
	fail    error
	applies chan struct{}
}

func (f *fakeTable) Apply(rs *Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.applied = append(f.applied, rs)
	select {
	case f.applies <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeTable) Counters() (map[string]Drops, error) {
	return map[string]Drops{PolicyID("a/p"): {Ingress: 3}}, nil
}

func (f *fakeTable) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.applied)
}

// TestControllerFailClosed: nothing is applied (the table in force stays)
// until the source has synced; then every change and every resync apply.
func TestControllerFailClosed(t *testing.T) {
	src := &fakeSource{synced: make(chan struct{}), changes: make(chan struct{}, 1)}
	tab := &fakeTable{applies: make(chan struct{}, 16)}
	cfg := DefaultConfig("n1")
	cfg.Resync = 50 * time.Millisecond
	c := NewController(cfg, src, tab)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	time.Sleep(100 * time.Millisecond)
	if n := tab.count(); n != 0 || c.Status().Synced {
		t.Fatalf("%d applies before the source synced", n)
	}
	src.set(clusterState(Policy{Namespace: "a", Name: "p", Ingress: true}))
	close(src.synced)
	<-tab.applies
	<-tab.applies // the resync
	st := c.Status()
	if !st.Synced || st.Policies != 1 || st.Selecting != 1 || st.Rules != 3 || st.Pods != 5 { // rules: the dispatch, the group's jump and drop
		t.Errorf("status %+v", st)
	}
	drops, err := c.Counters()
	if err != nil || drops["a/p"].Ingress != 3 {
		t.Errorf("counters %v, %v", drops, err)
	}
	tab.mu.Lock()
	tab.fail = errors.New("netlink: boom")
	tab.mu.Unlock()
	time.Sleep(120 * time.Millisecond)
	if st := c.Status(); st.Failures == 0 || st.LastError == "" || st.Policies != 1 {
		t.Errorf("after failures: %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestControllerSkipsUnchanged: a change that compiles to the same
// Ruleset (a Pod update no policy reads) applies nothing; the resync
// applies all the same.
func TestControllerSkipsUnchanged(t *testing.T) {
	src := &fakeSource{synced: make(chan struct{}), changes: make(chan struct{}, 1)}
	close(src.synced)
	st := clusterState(Policy{Namespace: "a", Name: "p", Ingress: true})
	src.set(st)
	tab := &fakeTable{applies: make(chan struct{}, 16)}
	cfg := DefaultConfig("n1")
	cfg.Resync = time.Hour
	c := NewController(cfg, src, tab)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	<-tab.applies
	st = clusterState(Policy{Namespace: "a", Name: "p", Ingress: true})
	st.Pods[0].Name = "renamed" // nothing a policy reads
	src.set(st)
	time.Sleep(100 * time.Millisecond)
	if n := tab.count(); n != 1 {
		t.Errorf("%d applies after an irrelevant change, want 1", n)
	}
	st = clusterState(Policy{Namespace: "a", Name: "p", Ingress: true, PodSelector: *selp("app", "web")})
	src.set(st)
	<-tab.applies
	if n := tab.count(); n != 2 {
		t.Errorf("%d applies after a change of selection, want 2", n)
	}
	cancel()
	<-done
}
