package kube

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/weftnet/weft/peer"
)

func kNode(name, ip string, cidrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: name},
			{Type: corev1.NodeInternalIP, Address: "fd00::1"},
			{Type: corev1.NodeInternalIP, Address: ip},
		}
	}
	return n
}

func rec(name string, cidrs ...string) peer.Peer {
	r := peer.Record{Name: name}
	for _, c := range cidrs {
		r.PodCIDRs = append(r.PodCIDRs, netip.MustParsePrefix(c))
	}
	return peer.Peer{Record: r, State: peer.StateAlive}
}

func names(ps []peer.Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Record.Name)
	}
	return out
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestInternalIP(t *testing.T) {
	ip, ok := InternalIP(kNode("a", "192.0.2.11"))
	if !ok || ip.String() != "192.0.2.11" {
		t.Fatalf("InternalIP = %v %v, want the IPv4 one", ip, ok)
	}
	if _, ok := InternalIP(kNode("a", "")); ok {
		t.Fatal("InternalIP found an address on a Node without one")
	}
	// An IPv6-only Node: its global IPv6 addresses, not a link-local one,
	// and seeds of both, internal first.
	n := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "fe80::1"},
		{Type: corev1.NodeInternalIP, Address: "2001:db8:1::11"},
		{Type: corev1.NodeExternalIP, Address: "2001:db8:ff::11"},
	}}}
	if ip, ok := InternalIP(n); !ok || ip.String() != "2001:db8:1::11" {
		t.Fatalf("InternalIP of an IPv6-only Node = %v %v, want 2001:db8:1::11", ip, ok)
	}
	if ip, ok := ExternalIP(n); !ok || ip.String() != "2001:db8:ff::11" {
		t.Fatalf("ExternalIP of an IPv6-only Node = %v %v", ip, ok)
	}
	if s := (Snapshot{nodes: map[string]Node{"a": nodeOf(n)}}).Seeds("b", 7946, false); len(s) != 2 || s[0] != "[2001:db8:1::11]:7946" || s[1] != "[2001:db8:ff::11]:7946" {
		t.Fatalf("seeds of an IPv6-only Node: %q", s)
	}
	if ip, ok := AltInternalIP(n); ok {
		t.Fatalf("AltInternalIP of an IPv6-only Node = %v, want none (its one address is the InternalIP)", ip)
	}
	// A dual-stack Node (kubelet --node-ip with both): IPv4 first, and the
	// global IPv6 one beside it.
	dual := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.11"}}}}
	dual.Status.Addresses = append(dual.Status.Addresses,
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fe80::11"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "::ffff:192.0.2.99"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "2001:db8:1::11"},
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "2001:db8:ff::11"})
	if ip, ok := InternalIP(dual); !ok || ip.String() != "192.0.2.11" {
		t.Fatalf("InternalIP of a dual-stack Node = %v %v", ip, ok)
	}
	if ip, ok := AltInternalIP(dual); !ok || ip.String() != "2001:db8:1::11" {
		t.Fatalf("AltInternalIP of a dual-stack Node = %v %v, want 2001:db8:1::11", ip, ok)
	}
	// Seeds: the IPv6 one only for a node whose underlay is IPv6 only.
	ds := Snapshot{nodes: map[string]Node{"d": nodeOf(dual)}}
	if got := ds.Seeds("x", 7946, false); !slices.Equal(got, []string{"192.0.2.11:7946"}) {
		t.Fatalf("seeds of a dual-stack Node: %q", got)
	}
	if got := ds.Seeds("x", 7946, true); !slices.Equal(got, []string{"192.0.2.11:7946", "[2001:db8:1::11]:7946"}) {
		t.Fatalf("seeds of a dual-stack Node for an IPv6-only one: %q", got)
	}
	// Its ExternalIP is IPv6 only: not a public address for a node whose
	// underlay is IPv4.
	if ip, ok := ExternalIP(dual); ok {
		t.Fatalf("ExternalIP of a Node with an IPv4 InternalIP and an IPv6 ExternalIP = %v, want none", ip)
	}
	if ip, ok := AltInternalIP(&corev1.Node{Status: corev1.NodeStatus{Addresses: dual.Status.Addresses[:1]}}); ok {
		t.Fatalf("AltInternalIP of an IPv4-only Node = %v", ip)
	}
}

func TestSnapshotFilterAndSeeds(t *testing.T) {
	s := Snapshot{Synced: true, nodes: map[string]Node{
		"n1": nodeOf(kNode("n1", "192.0.2.11", "10.244.1.0/24")),
		"n2": nodeOf(kNode("n2", "198.51.100.12", "10.244.2.0/24")),
		"n3": nodeOf(kNode("n3", "", "10.244.3.0/24")),
		"n4": nodeOf(kNode("n4", "192.0.2.14")), // no CIDR yet
	}}
	if got, want := s.Seeds("n1", 7946, false), []string{"192.0.2.14:7946", "198.51.100.12:7946"}; !slices.Equal(got, want) {
		t.Errorf("Seeds = %v, want %v (self and address-less nodes skipped)", got, want)
	}
	// Public addresses follow the internal ones: the ExternalIP, or the
	// annotation over it ("none" drops it).
	withExt := func(name, internal, external string, ann map[string]string) *corev1.Node {
		n := kNode(name, internal, "10.244.9.0/24")
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: external})
		n.Annotations = ann
		return n
	}
	pub := Snapshot{Synced: true, nodes: map[string]Node{
		"a": nodeOf(withExt("a", "192.0.2.11", "203.0.113.11", nil)),
		"b": nodeOf(withExt("b", "192.0.2.11", "203.0.113.21", map[string]string{AnnotationPublicAddr: "203.0.113.99"})),
		"c": nodeOf(withExt("c", "198.51.100.11", "203.0.113.31", map[string]string{AnnotationPublicAddr: "none"})),
	}}
	if got, want := pub.Seeds("x", 7946, false), []string{"192.0.2.11:7946", "192.0.2.11:7946", "198.51.100.11:7946", "203.0.113.11:7946", "203.0.113.99:7946"}; !slices.Equal(got, want) {
		t.Errorf("Seeds with public addresses = %v, want %v", got, want)
	}
	snap := []peer.Peer{
		rec("n2", "10.244.2.0/24"),   // matches its Node
		rec("n3", "10.244.3.128/25"), // inside its Node's CIDR
		rec("n4"),                    // announces nothing yet: harmless
		rec("gone", "10.244.9.0/24"), // Node deleted
		rec("n5", "10.244.5.0/24"),   // never had a Node
		rec("n1x", "10.244.1.0/24"),  // no Node of that name
	}
	snap = append(snap, rec("n2", "10.244.1.0/24")) // another node's CIDR
	kept, dropped := s.Filter(snap)
	if got, want := names(kept), []string{"n2", "n3", "n4"}; !slices.Equal(got, want) {
		t.Errorf("kept %v, want %v", got, want)
	}
	var dn []string
	for _, d := range dropped {
		dn = append(dn, d.Peer)
	}
	if want := []string{"gone", "n5", "n1x", "n2"}; !slices.Equal(dn, want) {
		t.Errorf("dropped %v, want %v", dropped, want)
	}
	if len(snap) != 7 {
		t.Error("Filter modified its input")
	}
	// Before the first list, nothing is dropped.
	if kept, _ := (Snapshot{}).Filter(snap); len(kept) != len(snap) {
		t.Errorf("unsynced snapshot dropped peers: kept %d of %d", len(kept), len(snap))
	}
}

func TestAnnotationsAndPublish(t *testing.T) {
	r := peer.Record{
		Name:     "n1",
		Underlay: netip.MustParseAddrPort("192.0.2.11:4789"),
		VTEPMAC:  [6]byte{0x0a, 0x58, 10, 244, 1, 1},
	}
	a := Annotations(r)
	if a[AnnotationVTEPMAC] != "0a:58:0a:f4:01:01" || a[AnnotationUnderlayAddr] != "192.0.2.11" || a[AnnotationWGPublicKey] != "" {
		t.Fatalf("Annotations = %v", a)
	}
	n := kNode("n1", "192.0.2.11")
	n.Annotations = map[string]string{"other": "kept", AnnotationWGPublicKey: "stale"}
	c := fake.NewClientset(n)
	ctx := context.Background()
	if err := Publish(ctx, c, "n1", a); err != nil {
		t.Fatal(err)
	}
	got, err := c.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"other": "kept", AnnotationVTEPMAC: "0a:58:0a:f4:01:01", AnnotationUnderlayAddr: "192.0.2.11"}
	if b1, b2 := mustJSON(got.Annotations), mustJSON(want); b1 != b2 {
		t.Errorf("annotations after Publish = %s, want %s (empty WireGuard key removed, others kept)", b1, b2)
	}

	r.Caps = peer.CapWireGuard
	r.WGPublicKey = [32]byte{1, 2, 3}
	r.WGPort = 51820
	if k := Annotations(r)[AnnotationWGPublicKey]; k == "" || len(k) != 44 {
		t.Errorf("WireGuard key annotation %q, want base64 of 32 bytes", k)
	}
	if err := Publish(ctx, c, "missing", a); err == nil {
		t.Error("Publish to a missing Node succeeded")
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// waitFor polls the watcher until cond holds or the deadline passes.
func waitFor(t *testing.T, n *Nodes, what string, cond func(Snapshot) bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for !cond(n.Snapshot()) {
		select {
		case <-n.Changes():
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// The informer view follows creates, updates and deletes, and a deleted
// Node's peer is filtered out promptly: the property weftd relies on to
// purge a deleted node's routes.
func TestWatchFollowsNodes(t *testing.T) {
	c := fake.NewClientset(kNode("n1", "192.0.2.11", "10.244.1.0/24"), kNode("n2", "198.51.100.12", "10.244.2.0/24"))
	// The fake clientset has no resource versions: an object created
	// between the informer's list and its watch is never delivered. Wait
	// for the watch before changing anything (a real API server replays
	// from the list's resource version instead).
	watching := make(chan struct{})
	var once sync.Once
	c.PrependWatchReactor("nodes", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := c.Tracker().Watch(a.GetResource(), a.GetNamespace())
		once.Do(func() { close(watching) }) // after the tracker has the watcher
		return true, w, err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := Watch(ctx, c, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-watching:
	case <-ctx.Done():
		t.Fatal("the informer never started its watch")
	}
	waitFor(t, w, "two nodes", func(s Snapshot) bool { return s.Len() == 2 })
	gossip := []peer.Peer{rec("n2", "10.244.2.0/24"), rec("n3", "10.244.3.0/24")}
	if kept, _ := w.Snapshot().Filter(gossip); !slices.Equal(names(kept), []string{"n2"}) {
		t.Fatalf("kept %v before n3 registered", names(kept))
	}

	if _, err := c.CoreV1().Nodes().Create(ctx, kNode("n3", "192.0.2.13"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "n3 registered", func(s Snapshot) bool { _, ok := s.Get("n3"); return ok })
	if kept, _ := w.Snapshot().Filter(gossip); len(kept) != 1 {
		t.Fatalf("n3 routed before its Node had a pod CIDR: kept %v", names(kept))
	}
	if _, err := c.CoreV1().Nodes().Update(ctx, kNode("n3", "192.0.2.13", "10.244.3.0/24"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "n3 CIDR", func(s Snapshot) bool { n, _ := s.Get("n3"); return len(n.PodCIDRs) == 1 })
	if kept, _ := w.Snapshot().Filter(gossip); !slices.Equal(names(kept), []string{"n2", "n3"}) {
		t.Fatalf("kept %v, want n2 n3", names(kept))
	}

	start := time.Now()
	if err := c.CoreV1().Nodes().Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "n2 deleted", func(s Snapshot) bool { _, ok := s.Get("n2"); return !ok })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("deletion took %s to reach the snapshot", d)
	}
	if kept, _ := w.Snapshot().Filter(gossip); !slices.Equal(names(kept), []string{"n3"}) {
		t.Fatalf("kept %v after n2's Node was deleted, want n3", names(kept))
	}
	if got := w.Snapshot().Seeds("n1", 7946, false); !slices.Equal(got, []string{"192.0.2.13:7946"}) {
		t.Errorf("Seeds = %v", got)
	}
	w.Close()
	w.Close() // idempotent
}

// Cluster is weftd's only handle on client-go: the pod CIDR wait returns
// the Node's InternalIP (weftd's default underlay address) and labels (its
// site) too.
func TestClusterWaitPodCIDRs(t *testing.T) {
	n := kNode("n1", "192.0.2.11", "10.244.1.0/24")
	n.Labels = map[string]string{"topology.kubernetes.io/zone": "zone-a"}
	c := NewCluster(fake.NewClientset(n), quiet())
	self, err := c.WaitPodCIDRs(context.Background(), "n1")
	if err != nil || self.InternalIP.String() != "192.0.2.11" || len(self.PodCIDRs) != 1 || self.PodCIDRs[0].String() != "10.244.1.0/24" || self.Labels["topology.kubernetes.io/zone"] != "zone-a" {
		t.Fatalf("WaitPodCIDRs = %+v %v", self, err)
	}
	if self.ExternalIP.IsValid() || self.PublicOverride != "" {
		t.Fatalf("public address from a Node without one: %+v", self)
	}
	n2 := kNode("n2", "192.0.2.12", "10.244.2.0/24")
	n2.Status.Addresses = append(n2.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.12"})
	n2.Annotations = map[string]string{AnnotationPublicAddr: "203.0.113.13"}
	c2 := NewCluster(fake.NewClientset(n2), quiet())
	if s2, err := c2.WaitPodCIDRs(context.Background(), "n2"); err != nil || s2.ExternalIP.String() != "203.0.113.12" || s2.PublicOverride != "203.0.113.13" {
		t.Fatalf("WaitPodCIDRs with an ExternalIP and the annotation = %+v %v", s2, err)
	}
	if err := c.Publish(context.Background(), "n1", map[string]string{AnnotationVTEPMAC: "0a:58:0a:f4:01:01"}); err != nil {
		t.Fatal(err)
	}
}

// TestMarkNetworkAvailable: NetworkUnavailable becomes False (reason
// WeftIsUp) on the status subresource, the kubelet's Ready condition is
// left as it was, and a Node that does not exist is an error.
func TestMarkNetworkAvailable(t *testing.T) {
	n := kNode("n1", "192.0.2.11", "10.244.1.0/24")
	n.Status.Conditions = []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"},
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue, Reason: "NoRouteCreated"},
	}
	c := fake.NewSimpleClientset(n)
	ctx := context.Background()
	if err := MarkNetworkAvailable(ctx, c, "n1", time.Now()); err != nil {
		t.Fatal(err)
	}
	got, err := c.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds := map[corev1.NodeConditionType]corev1.NodeCondition{}
	for _, cd := range got.Status.Conditions {
		conds[cd.Type] = cd
	}
	if cd := conds[corev1.NodeNetworkUnavailable]; cd.Status != corev1.ConditionFalse || cd.Reason != "WeftIsUp" || cd.LastTransitionTime.IsZero() {
		t.Errorf("NetworkUnavailable = %+v", cd)
	}
	if cd := conds[corev1.NodeReady]; cd.Status != corev1.ConditionTrue || cd.Reason != "KubeletReady" || len(got.Status.Conditions) != 2 {
		t.Errorf("conditions after the patch: %+v", got.Status.Conditions)
	}
	var sub []string
	for _, a := range c.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			sub = append(sub, p.GetSubresource())
		}
	}
	if !slices.Equal(sub, []string{"status"}) {
		t.Errorf("patches on subresources %q, want one on status", sub)
	}
	if err := MarkNetworkAvailable(ctx, c, "nope", time.Now()); err == nil {
		t.Error("no error for a missing Node")
	}
}
