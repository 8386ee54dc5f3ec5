// Package kube connects weft's gossip membership to Kubernetes Node
// objects: it finds gossip seeds (other Nodes' InternalIP), publishes this
// node's weft identity as Node annotations, and keeps the live set of Node
// names so that weftd routes only to peers whose Node still exists.
//
// Why the Node set filters gossip: a Node deleted from the API server is
// gone from the cluster's point of view at once, but its weftd (if the
// machine is still up, or unreachable but not yet declared dead) keeps
// gossiping for a while. Without the filter, its pod CIDR would stay routed
// until memberlist's failure detector gave up, and kube-controller-manager
// may already have handed that CIDR to a new Node. With it, the route goes
// within one informer event.
//
// Only this package and ipam/kube import client-go; everything it returns
// is in weft's own or standard types.
package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	ipamkube "github.com/weftnet/weft/ipam/kube"
	"github.com/weftnet/weft/peer"
)

// Node annotations weftd publishes on its own Node. They are informational
// (for `kubectl get node -o yaml`, other tools and debugging): weft's peers
// learn these facts from gossip, which is authenticated by the gossip key.
const (
	AnnotationWGPublicKey  = "weft.dev/wg-public-key"
	AnnotationVTEPMAC      = "weft.dev/vtep-mac"
	AnnotationUnderlayAddr = "weft.dev/underlay-addr"
)

// Annotations returns the annotations that describe r. The WireGuard key
// is present only when the node runs WireGuard; otherwise its value is
// empty, which Publish turns into a removal.
func Annotations(r peer.Record) map[string]string {
	a := map[string]string{
		AnnotationVTEPMAC:      net.HardwareAddr(r.VTEPMAC[:]).String(),
		AnnotationUnderlayAddr: r.Underlay.Addr().String(),
		AnnotationWGPublicKey:  "",
	}
	if r.HasWGKey() {
		a[AnnotationWGPublicKey] = wgtypes.Key(r.WGPublicKey).String()
	}
	return a
}

// Publish merges ann into the Node's annotations with one JSON merge
// patch; an empty value removes the key. A patch (not Get+Update) because
// the kubelet and several controllers update Nodes all the time, and an
// Update would lose races with them.
func Publish(ctx context.Context, c kubernetes.Interface, node string, ann map[string]string) error {
	m := make(map[string]any, len(ann))
	for k, v := range ann {
		if v == "" {
			m[k] = nil
		} else {
			m[k] = v
		}
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": m}})
	if err != nil {
		return fmt.Errorf("encode annotations patch: %w", err)
	}
	if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s: %w", node, err)
	}
	return nil
}

// MarkNetworkAvailable sets the Node's NetworkUnavailable condition to
// False (reason WeftIsUp), as a network plugin does once its datapath is
// up: clouds whose node controller sets it True at registration keep pods
// off a Node until someone does. A strategic merge patch of the status
// subresource, merged by condition type, so the kubelet's own conditions
// are left alone.
func MarkNetworkAvailable(ctx context.Context, c kubernetes.Interface, node string, now time.Time) error {
	t := metav1.NewTime(now)
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse,
		Reason: "WeftIsUp", Message: "weft is running on this node",
		LastTransitionTime: t, LastHeartbeatTime: t,
	}}}})
	if err != nil {
		return fmt.Errorf("encode condition patch: %w", err)
	}
	if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("mark node %s network available: %w", node, err)
	}
	return nil
}

// InternalIP returns the Node's first IPv4 InternalIP address, or for a
// Node without one (an IPv6-only node) its first global IPv6 one.
func InternalIP(n *corev1.Node) (netip.Addr, bool) { return firstAddr(n, corev1.NodeInternalIP) }

// AltInternalIP returns, for a Node whose InternalIP is IPv4, its first
// global IPv6 InternalIP: the second underlay address of a node with one
// of each family (a dual-stack kubelet --node-ip).
func AltInternalIP(n *corev1.Node) (netip.Addr, bool) {
	first, ok := InternalIP(n)
	if !ok || !first.Is4() {
		return netip.Addr{}, false
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && !ip.Is4In6() && ip.Is6() && ip.IsGlobalUnicast() && ip.Zone() == "" {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// firstAddr returns the Node's first IPv4 address of type t, else its
// first global unicast IPv6 one (link-local addresses carry no zone in
// a Node's status and cannot be reached from other links).
func firstAddr(n *corev1.Node, t corev1.NodeAddressType) (netip.Addr, bool) {
	var v6 netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != t {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		if ip = ip.Unmap(); ip.Is4() {
			return ip, true
		}
		if !v6.IsValid() && ip.IsGlobalUnicast() && ip.Zone() == "" {
			v6 = ip
		}
	}
	return v6, v6.IsValid()
}

// Node is what weft keeps of one Node object.
type Node struct {
	Name string
	// InternalIP is the Node's IPv4 InternalIP, else its IPv6 one
	// (InternalIP), invalid if none; AltInternalIP the IPv6 one beside an
	// IPv4 one (AltInternalIP).
	InternalIP, AltInternalIP netip.Addr
	// PodCIDRs is spec.podCIDRs; empty until the controller manager has
	// assigned them (or if they do not parse).
	PodCIDRs []netip.Prefix
	// Public is the Node's public address as seeds use it: the
	// AnnotationPublicAddr value if it parses, else its ExternalIP;
	// invalid if none.
	Public netip.Addr
}

func nodeOf(n *corev1.Node) Node {
	out := Node{Name: n.Name}
	out.InternalIP, _ = InternalIP(n)
	out.AltInternalIP, _ = AltInternalIP(n)
	out.Public, _ = ExternalIP(n)
	switch v := n.Annotations[AnnotationPublicAddr]; v {
	case "":
	case "none":
		out.Public = netip.Addr{}
	default:
		if a, err := netip.ParseAddr(v); err == nil {
			out.Public = a.Unmap()
		}
	}
	out.PodCIDRs, _ = ipamkube.PodCIDRs(n)
	return out
}

// Snapshot is an immutable view of the cluster's Nodes, by name.
type Snapshot struct {
	nodes map[string]Node
	// Synced is false until the informer's first list has completed; an
	// unsynced snapshot must not be used to drop peers.
	Synced bool
}

// Len is the number of Nodes.
func (s Snapshot) Len() int { return len(s.nodes) }

// Get returns the Node called name.
func (s Snapshot) Get(name string) (Node, bool) {
	n, ok := s.nodes[name]
	return n, ok
}

// Seeds returns host:port gossip seeds from every Node's InternalIP (with
// alt, for a node whose underlay is IPv6 only, also the IPv6 InternalIP of
// dual-stack Nodes, which it reaches where it cannot reach their IPv4), and
// then every public address, except self's, sorted within each group:
// nodes of this node's site answer on the first, nodes of other sites on
// the second (one answer is enough to join). Every weftd listens on the
// same gossip port.
func (s Snapshot) Seeds(self string, port int, alt bool) []string {
	var internal, public []string
	for name, n := range s.nodes {
		if name == self {
			continue
		}
		if n.InternalIP.IsValid() {
			internal = append(internal, net.JoinHostPort(n.InternalIP.String(), strconv.Itoa(port)))
		}
		if alt && n.AltInternalIP.IsValid() {
			internal = append(internal, net.JoinHostPort(n.AltInternalIP.String(), strconv.Itoa(port)))
		}
		if n.Public.IsValid() && n.Public != n.InternalIP {
			public = append(public, net.JoinHostPort(n.Public.String(), strconv.Itoa(port)))
		}
	}
	slices.Sort(internal)
	slices.Sort(public)
	return append(internal, public...)
}

// Drop says why a peer was left out by Filter.
type Drop struct {
	Peer   string
	Reason string
}

// Filter keeps the peers that Kubernetes vouches for: a Node of the same
// name exists, and every pod CIDR the peer announces lies inside one of
// that Node's spec.podCIDRs. A peer without a Node is one that was deleted
// (or never joined the cluster); a peer announcing a CIDR its Node was not
// given is misconfigured or lying, and routing to it would steal another
// node's pods. snap is not modified. An unsynced snapshot keeps everyone:
// before the first list, absence proves nothing.
func (s Snapshot) Filter(snap []peer.Peer) (kept []peer.Peer, dropped []Drop) {
	if !s.Synced {
		return snap, nil
	}
	kept = make([]peer.Peer, 0, len(snap))
	for _, p := range snap {
		n, ok := s.nodes[p.Record.Name]
		if !ok {
			dropped = append(dropped, Drop{p.Record.Name, "no Node object"})
			continue
		}
		if bad, ok := outside(p.Record.PodCIDRs, n.PodCIDRs); !ok {
			dropped = append(dropped, Drop{p.Record.Name, fmt.Sprintf("announces %s, not inside the Node's spec.podCIDRs %v", bad, n.PodCIDRs)})
			continue
		}
		kept = append(kept, p)
	}
	return kept, dropped
}

// outside returns the first of announced not contained in any of given.
func outside(announced, given []netip.Prefix) (netip.Prefix, bool) {
	for _, a := range announced {
		in := false
		for _, g := range given {
			if g.Bits() <= a.Bits() && g.Contains(a.Addr()) {
				in = true
				break
			}
		}
		if !in {
			return a, false
		}
	}
	return netip.Prefix{}, true
}

// Nodes watches every Node of the cluster through an informer and keeps
// an immutable Snapshot behind an atomic pointer. Create it with Watch;
// stop it with Close.
type Nodes struct {
	snap    atomic.Pointer[Snapshot]
	kick    chan struct{} // informer handlers → rebuild loop, coalescing
	changes chan struct{} // rebuild loop → consumer, coalescing
	store   cache.Store
	synced  cache.InformerSynced
	log     *slog.Logger

	cancel    context.CancelFunc
	factory   informers.SharedInformerFactory
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Watch starts watching Nodes. It returns at once; Snapshot().Synced turns
// true once the first list has arrived (WaitSynced waits for that).
func Watch(ctx context.Context, c kubernetes.Interface, log *slog.Logger) (*Nodes, error) {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	// No periodic resync: the rebuild reads the whole store each time, so
	// there is no per-object state that could drift.
	f := informers.NewSharedInformerFactory(c, 0)
	inf := f.Core().V1().Nodes().Informer()
	n := &Nodes{
		kick:    make(chan struct{}, 1),
		changes: make(chan struct{}, 1),
		store:   inf.GetStore(),
		synced:  inf.HasSynced,
		log:     log.With("component", "kube-nodes"),
		cancel:  cancel,
		factory: f,
	}
	n.snap.Store(&Snapshot{})
	kick := func(any) { n.signal(n.kick) }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    kick,
		UpdateFunc: func(_, o any) { kick(o) },
		DeleteFunc: kick,
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	f.Start(ctx.Done())
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.run(ctx)
	}()
	return n, nil
}

func (n *Nodes) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run rebuilds the snapshot after every batch of informer events, and
// once when the informer has synced (handlers may all have fired before
// HasSynced turned true).
func (n *Nodes) run(ctx context.Context) {
	syncedCh := make(chan struct{})
	go func() {
		cache.WaitForCacheSync(ctx.Done(), n.synced)
		close(syncedCh)
	}()
	defer func() { <-syncedCh }()
	waitSync := syncedCh
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		case <-waitSync:
			waitSync = nil
		}
		n.rebuild()
	}
}

func (n *Nodes) rebuild() {
	s := &Snapshot{nodes: make(map[string]Node), Synced: n.synced()}
	for _, o := range n.store.List() {
		if obj, ok := o.(*corev1.Node); ok {
			s.nodes[obj.Name] = nodeOf(obj)
		}
	}
	old := n.snap.Swap(s)
	if old.Synced == s.Synced && sameNodes(old.nodes, s.nodes) {
		return
	}
	n.log.Debug("node set changed", "nodes", len(s.nodes), "synced", s.Synced)
	n.signal(n.changes)
}

func sameNodes(a, b map[string]Node) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y, ok := b[k]
		if !ok || x.InternalIP != y.InternalIP || x.AltInternalIP != y.AltInternalIP || x.Public != y.Public || !slices.Equal(x.PodCIDRs, y.PodCIDRs) {
			return false
		}
	}
	return true
}

// Snapshot returns the current view; it never changes after return.
func (n *Nodes) Snapshot() Snapshot { return *n.snap.Load() }

// Changes receives a value after the Node set (names, addresses or pod
// CIDRs) changed; several changes may collapse into one. Read Snapshot
// after each.
func (n *Nodes) Changes() <-chan struct{} { return n.changes }

// WaitSynced blocks until the first list of Nodes is in the snapshot.
func (n *Nodes) WaitSynced(ctx context.Context) error {
	for !n.Snapshot().Synced {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the Node list: %w", ctx.Err())
		case <-n.changes:
			// Hand the signal on, so the consumer still sees a change.
			defer n.signal(n.changes)
		}
	}
	return nil
}

// Close stops the informer and the rebuild loop and waits for them.
func (n *Nodes) Close() {
	n.closeOnce.Do(func() {
		n.cancel()
		n.factory.Shutdown()
		n.wg.Wait()
	})
}

// Cluster is weftd's handle on the API server: the only client-go value
// weftd holds, so that cmd/weftd itself never imports client-go.
type Cluster struct {
	c   kubernetes.Interface
	log *slog.Logger
}

// NewCluster wraps a clientset (a fake one in tests).
func NewCluster(c kubernetes.Interface, log *slog.Logger) *Cluster {
	if log == nil {
		log = slog.Default()
	}
	return &Cluster{c: c, log: log}
}

// Connect builds a client from a kubeconfig file, or from the pod's
// service account when kubeconfig is empty (the DaemonSet case).
func Connect(kubeconfig string, log *slog.Logger) (*Cluster, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "weftd"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return NewCluster(cs, log), nil
}

// Self is what weftd takes from its own Node: its InternalIP (the default
// underlay address), its ExternalIP and public-address annotation (its
// public address), its pod CIDRs and its labels (the site).
type Self struct {
	InternalIP netip.Addr
	// AltInternalIP is the IPv6 InternalIP beside an IPv4 one
	// (AltInternalIP), invalid if none.
	AltInternalIP netip.Addr
	ExternalIP    netip.Addr
	// PublicOverride is the AnnotationPublicAddr value, "" if none.
	PublicOverride string
	PodCIDRs       []netip.Prefix
	Labels         map[string]string
}

// AnnotationPublicAddr, set on a Node by its administrator, overrides the
// node's public address (what nodes of other sites reach it at) over
// weftd's --public-addr and the Node's ExternalIP, as flannel's
// public-ip-overwrite and Kilo's force-endpoint do; "none" says the node
// has no public address even if it has an ExternalIP.
const AnnotationPublicAddr = "weft.dev/public-addr"

// ExternalIP returns the Node's first ExternalIP address of its
// InternalIP's family (InternalIP), so that a Node reached over IPv4
// inside its site is not given an IPv6 public address its IPv4 peers
// cannot use (nor one that would stop weftd looking for NAT); a Node
// without an InternalIP takes the first IPv4 one, else IPv6.
func ExternalIP(n *corev1.Node) (netip.Addr, bool) {
	in, ok := InternalIP(n)
	ext, found := firstAddr(n, corev1.NodeExternalIP)
	if !ok || !found || ext.Is4() == in.Is4() {
		return ext, found
	}
	return netip.Addr{}, false
}

// WaitPodCIDRs waits until the Node called name exists and has pod CIDRs
// (ipam/kube.Wait) and returns what weftd takes from it.
func (k *Cluster) WaitPodCIDRs(ctx context.Context, name string) (Self, error) {
	cfg := ipamkube.DefaultWaitConfig()
	cfg.Logger = k.log
	n, cidrs, err := ipamkube.Wait(ctx, k.c, name, cfg)
	if err != nil {
		return Self{}, err
	}
	ip, _ := InternalIP(n)
	alt, _ := AltInternalIP(n)
	ext, _ := ExternalIP(n)
	return Self{InternalIP: ip, AltInternalIP: alt, ExternalIP: ext, PublicOverride: n.Annotations[AnnotationPublicAddr], PodCIDRs: cidrs, Labels: maps.Clone(n.Labels)}, nil
}

// Publish merges annotations into the Node called node (see Publish).
func (k *Cluster) Publish(ctx context.Context, node string, ann map[string]string) error {
	return Publish(ctx, k.c, node, ann)
}

// Watch starts a Node watcher (see Watch).
func (k *Cluster) Watch(ctx context.Context) (*Nodes, error) { return Watch(ctx, k.c, k.log) }

// MarkNetworkAvailable is MarkNetworkAvailable on the cluster's client.
func (k *Cluster) MarkNetworkAvailable(ctx context.Context, node string) error {
	return MarkNetworkAvailable(ctx, k.c, node, time.Now())
}
