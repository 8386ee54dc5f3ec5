package main

// Kubernetes mode (--kube or --kubeconfig) and the health endpoints.
//
// In Kubernetes mode the cluster is the authority on membership:
//   - the pod CIDR is this Node's spec.podCIDRs (kube-controller-manager
//     --allocate-node-cidrs), waited for before anything is configured;
//   - gossip seeds are the other Nodes' InternalIPs;
//   - this node's WireGuard key, VTEP MAC and underlay address are
//     published as Node annotations (peer/kube);
//   - a gossiped peer is routed only while a Node of its name exists and
//     its announced CIDR lies inside that Node's spec.podCIDRs, so a
//     deleted Node's routes go within one informer event, not after
//     gossip failure detection.
//
// The health server runs in every mode: /healthz (liveness) and /readyz
// (readiness: the pod CIDR is known and node.json is written for it).
//
// main.go calls startKube once, where the pod CIDR is decided, and routes
// the membership feed through peerUpdates; nothing else here touches the
// datapath.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/cni"
	ipamkube "github.com/weftnet/weft/ipam/kube"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
	peerkube "github.com/weftnet/weft/peer/kube"
)

// kubeFlags is the part of weftd's config this file owns; embedded in
// config.
type kubeFlags struct {
	Kube       bool
	Kubeconfig string
	HealthAddr string
	SiteLabel  string // the Node label a site comes from, without --site
	// KubeAltUnderlay takes the Node's IPv6 InternalIP beside its IPv4
	// one as the second underlay address (AltUnderlayAddr).
	KubeAltUnderlay bool
}

func (k *kubeFlags) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&k.Kube, "kube", false, "Kubernetes mode: pod CIDR from this node's Node.spec.podCIDRs, gossip seeds from the other Nodes' InternalIPs, peers routed only while their Node exists; in-cluster credentials unless --kubeconfig. --name must be the Node name (default $NODE_NAME)")
	fs.StringVar(&k.Kubeconfig, "kubeconfig", "", "kubeconfig file for Kubernetes mode (implies --kube)")
	fs.StringVar(&k.SiteLabel, "site-label", "topology.kubernetes.io/zone", "Kubernetes mode without --site: the Node label whose value is this node's site (transport policy wireguard-across-sites); empty: no site")
	fs.BoolVar(&k.KubeAltUnderlay, "kube-alt-underlay", false, "Kubernetes mode without --underlay-addr: a Node with an IPv4 and an IPv6 InternalIP (dual-stack kubelet --node-ip) gets both as underlay addresses, so IPv6-only nodes reach it (README: IPv6 underlay); turn on once every node runs a weftd that knows second addresses")
	fs.StringVar(&k.HealthAddr, "health-addr", "", "serve /healthz (liveness) and /readyz (readiness) over HTTP on this address, e.g. 127.0.0.1:9993; empty: off")
}

// siteOf is the node's site in Kubernetes mode: --site if given, else the
// value of the Node's --site-label label ("" when it has none).
func siteOf(c config, labels map[string]string) string {
	if c.Site != "" || c.SiteLabel == "" {
		return c.Site
	}
	return labels[c.SiteLabel]
}

// kubeMode reports whether weftd runs against a Kubernetes API server.
func (c config) kubeMode() bool { return c.Kube || c.Kubeconfig != "" }

// defaultName is the default --name: $NODE_NAME (the DaemonSet sets it
// from spec.nodeName through the downward API), else the hostname.
func defaultName() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// checkKube validates the Kubernetes flags against the rest.
func (c *config) checkKube() error {
	if !c.kubeMode() {
		if c.KubeAltUnderlay {
			return errors.New("--kube-alt-underlay needs --kube")
		}
		return nil
	}
	if len(c.podCIDRFlags) > 0 || c.NodeCIDRBits != 0 {
		return errors.New("--kube takes the pod CIDR from the Node object: drop --pod-cidr and --node-cidr-size")
	}
	return nil
}

// kubeMode is the running Kubernetes integration and health server. A nil
// or zero value is valid (no Kubernetes, no health server) so that main.go
// needs no branches.
type kubeMode struct {
	c        *config
	log      *slog.Logger
	cluster  *peerkube.Cluster // nil outside Kubernetes mode
	nodes    *peerkube.Nodes
	podCIDR  atomic.Pointer[netip.Prefix] // set once known; readiness
	cancel   context.CancelFunc
	health   *http.Server
	healthLn net.Listener // passed on in a hand-off
	wg       sync.WaitGroup

	mu      sync.Mutex
	dropped map[string]string // peer → why it is not routed
}

// startKube starts the health server and, in Kubernetes mode, waits for
// this Node's pod CIDR and fills c.PodCIDR, c.UnderlayAddr (when not
// given), c.VTEPMAC (when not given) and c.Seeds. The returned context
// ends when ctx does or when weftd must restart (its Node came back with a
// different pod CIDR).
func startKube(ctx context.Context, c *config, log *slog.Logger, healthLn net.Listener) (context.Context, *kubeMode, error) {
	ctx, cancel := context.WithCancel(ctx)
	k := &kubeMode{c: c, log: log.With("component", "kube"), cancel: cancel}
	if !c.kubeMode() && c.PodCIDR.IsValid() {
		p := c.PodCIDR
		k.podCIDR.Store(&p)
	}
	if err := k.serveHealth(healthLn); err != nil {
		cancel()
		return ctx, k, err
	}
	if !c.kubeMode() {
		return ctx, k, nil
	}
	fail := func(err error) (context.Context, *kubeMode, error) { k.Close(); return ctx, k, err }
	var err error
	if k.cluster, err = peerkube.Connect(c.Kubeconfig, k.log); err != nil {
		return fail(err)
	}
	self, err := k.cluster.WaitPodCIDRs(ctx, c.Name)
	if err != nil {
		return fail(fmt.Errorf("pod CIDR of Node %s: %w", c.Name, err))
	}
	internalIP, cidrs := self.InternalIP, self.PodCIDRs
	c.Site = siteOf(*c, self.Labels)
	pod, ok := ipamkube.IPv4(cidrs)
	if !ok {
		return fail(fmt.Errorf("Node %s has no IPv4 pod CIDR (%v); weft needs one (IPv6-only pods are not supported yet)", c.Name, cidrs))
	}
	if pod.Bits() > 30 || !c.ClusterCIDR.Contains(pod.Addr()) || c.ClusterCIDR.Bits() > pod.Bits() {
		return fail(fmt.Errorf("Node %s pod CIDR %s is not a /30-or-larger block inside --cluster-cidr %s (does it match kube-controller-manager --cluster-cidr?)", c.Name, pod, c.ClusterCIDR))
	}
	c.PodCIDR = pod
	if c.PodCIDR6, err = kubePodCIDR6(*c, cidrs); err != nil {
		return fail(err)
	}
	if _, has6 := ipamkube.IPv6(cidrs); has6 && !c.PodCIDR6.IsValid() {
		k.log.Warn("the Node has an IPv6 pod CIDR but --cluster-cidr has no IPv6 range: IPv6 pods stay off", "podCIDRs", cidrs)
	}
	k.podCIDR.Store(&pod)
	if !c.UnderlayAddr.IsValid() {
		if internalIP.IsValid() {
			c.UnderlayAddr = internalIP
			if c.KubeAltUnderlay {
				c.AltUnderlayAddr = self.AltInternalIP
			}
		} else if c.UnderlayAddr, err = selectUnderlay(); err != nil {
			return fail(fmt.Errorf("--underlay-addr not given, Node %s has no InternalIP, and none found: %w", c.Name, err))
		}
	}
	if c.PublicAddr, err = publicOf(*c, self); err != nil {
		return fail(err)
	}
	if c.VTEPMAC == ([6]byte{}) {
		c.VTEPMAC = macFromAddr(gatewayOf(pod))
	}
	if k.nodes, err = k.cluster.Watch(ctx); err != nil {
		return fail(err)
	}
	syncCtx, done := context.WithTimeout(ctx, time.Minute)
	err = k.nodes.WaitSynced(syncCtx)
	done()
	if err != nil {
		return fail(err)
	}
	seeds := k.nodes.Snapshot().Seeds(c.Name, c.GossipPort, c.UnderlayAddr.Is6())
	c.Seeds = append(c.Seeds, seeds...)
	k.log.Info("Kubernetes mode", "node", c.Name, "podCIDRs", c.podCIDRs(), "underlay", c.UnderlayAddr, "public", c.PublicAddr, "site", c.Site, "seeds", seeds)
	return ctx, k, nil
}

// publicOf is this node's public address in Kubernetes mode: the Node's
// weft.dev/public-addr annotation ("none": no public address), else
// --public-addr, else the Node's ExternalIP, else none (README: Across
// clouds and NAT).
func publicOf(c config, self peerkube.Self) (netip.Addr, error) {
	switch {
	case self.PublicOverride == "none":
		return netip.Addr{}, nil
	case self.PublicOverride != "":
		a, err := parsePublic(self.PublicOverride)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("Node %s annotation %s: %w", c.Name, peerkube.AnnotationPublicAddr, err)
		}
		return a, nil
	case c.PublicAddr.IsValid():
		return c.PublicAddr, nil
	}
	return self.ExternalIP, nil
}

// peerUpdates returns the membership feed weftd routes from: outside
// Kubernetes mode the membership's own, else one filtered by the live Node
// set and re-sent whenever that set changes. It also keeps this node's
// annotations current.
func (k *kubeMode) peerUpdates(ctx context.Context, members *peer.Membership) <-chan []peer.Peer {
	if k == nil || k.nodes == nil {
		return members.Updates()
	}
	out := make(chan []peer.Peer, 1)
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		k.feed(ctx, members, out)
	}()
	return out
}

func (k *kubeMode) feed(ctx context.Context, members *peer.Membership, out chan []peer.Peer) {
	var (
		last      []peer.Peer
		have      bool
		published map[string]string
	)
	publish := func() {
		ann := peerkube.Annotations(members.Self())
		if sameAnnotations(ann, published) {
			return
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := k.cluster.Publish(pctx, k.c.Name, ann); err != nil {
			k.log.Warn("publishing Node annotations failed; retrying", "err", err)
			return
		}
		published = ann
		k.log.Info("published Node annotations", "annotations", ann)
	}
	// The datapath is up (feed starts after it): tell the cluster, once,
	// retrying on the resync until it took.
	available := false
	markAvailable := func() {
		if available {
			return
		}
		mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := k.cluster.MarkNetworkAvailable(mctx, k.c.Name); err != nil {
			k.log.Warn("setting NetworkUnavailable=False failed; retrying", "err", err)
			return
		}
		available = true
		k.log.Info("Node condition NetworkUnavailable=False set")
	}
	emit := func() {
		snap := k.nodes.Snapshot()
		kept, dropped := snap.Filter(last)
		k.setDropped(dropped)
		select { // one-slot, newest wins
		case <-out:
		default:
		}
		out <- kept
	}
	publish()
	markAvailable()
	// The resync publishes annotations again after a failure or a key
	// rotation, and repairs anyone else's edits.
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case snap, ok := <-members.Updates():
			if !ok {
				return
			}
			last, have = snap, true
			emit()
		case <-k.nodes.Changes():
			if k.selfMoved() {
				return
			}
			if have {
				emit()
			}
		case <-tick.C:
			publish()
			markAvailable()
		}
	}
}

// kubePodCIDR6 is a dual-stack Node's IPv6 pod CIDR, when --cluster-cidr
// has an IPv6 range (invalid otherwise: the node runs IPv4 pods only).
func kubePodCIDR6(c config, cidrs []netip.Prefix) (netip.Prefix, error) {
	p, ok := ipamkube.IPv6(cidrs)
	if !ok || !c.ClusterCIDR6.IsValid() {
		return netip.Prefix{}, nil
	}
	if p.Bits() > 120 || !c.ClusterCIDR6.Contains(p.Addr()) || c.ClusterCIDR6.Bits() > p.Bits() {
		return netip.Prefix{}, fmt.Errorf("Node %s IPv6 pod CIDR %s is not a /120-or-larger block inside --cluster-cidr %s (does it match kube-controller-manager --cluster-cidr?)", c.Name, p, c.clusterCIDR)
	}
	return p, nil
}

// selfMoved ends weftd (through the context startKube returned) when this
// Node exists again with a different pod CIDR: the Node was deleted and
// re-registered, and the controller manager gave it a new block. Pods of
// the old block cannot be kept; a restart reconfigures everything for the
// new one. A Node that is merely gone is not a reason to exit: it may come
// back with the same CIDR, and leaving gossip would take routes from
// peers that still have this node's Node.
func (k *kubeMode) selfMoved() bool {
	n, ok := k.nodes.Snapshot().Get(k.c.Name)
	if !ok || len(n.PodCIDRs) == 0 {
		return false
	}
	cur := k.podCIDR.Load()
	if cur == nil || slices.Contains(n.PodCIDRs, *cur) {
		return false
	}
	k.log.Error("this Node's pod CIDR changed (Node re-registered); restarting", "was", *cur, "now", n.PodCIDRs)
	k.cancel()
	return true
}

func sameAnnotations(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for key, v := range a {
		if w, ok := b[key]; !ok || w != v {
			return false
		}
	}
	return true
}

func (k *kubeMode) setDropped(ds []peerkube.Drop) {
	m := make(map[string]string, len(ds))
	for _, d := range ds {
		m[d.Peer] = d.Reason
	}
	k.mu.Lock()
	old := k.dropped
	k.dropped = m
	k.mu.Unlock()
	for p, why := range m {
		if old[p] != why {
			k.log.Warn("peer not routed", "peer", p, "why", why)
		}
	}
	for p := range old {
		if _, ok := m[p]; !ok {
			k.log.Info("peer routed again", "peer", p)
		}
	}
}

// annotate marks, in a status answer, the peers Kubernetes mode keeps out
// of the routes: peer.StateNoNode (their transport is already "-").
func (k *kubeMode) annotate(st *control.Status) {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range st.Peers {
		if _, ok := k.dropped[st.Peers[i].Name]; ok {
			st.Peers[i].State = peer.StateNoNode
		}
	}
}

// serveHealth starts the health server when --health-addr is set, on ln
// when a hand-off passed the listener, else on one opened here, so that a
// taken port fails startup loudly.
func (k *kubeMode) serveHealth(ln net.Listener) error {
	if k.c.HealthAddr == "" {
		if ln != nil {
			ln.Close()
		}
		return nil
	}
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", k.c.HealthAddr); err != nil {
			return fmt.Errorf("--health-addr: %w", err)
		}
	}
	k.healthLn = ln
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { reply(w, k.live(r.Context())) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { reply(w, k.ready()) })
	k.health = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		if err := k.health.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			k.log.Error("health server stopped", "err", err)
		}
	}()
	k.log.Info("health endpoints", "addr", ln.Addr().String())
	return nil
}

func reply(w http.ResponseWriter, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// ready: the pod CIDR is known and node.json (what weft-cni reads) is
// written for it. A node.json left by a previous run does not count until
// this run knows its CIDR and the file matches it.
func (k *kubeMode) ready() error {
	p := k.podCIDR.Load()
	if p == nil {
		return errors.New("waiting for the pod CIDR")
	}
	st, err := cni.ReadNodeState(k.c.RunDir)
	if err != nil {
		return fmt.Errorf("node.json: %w", err)
	}
	if !slices.Contains(st.PodCIDRs, *p) {
		return fmt.Errorf("node.json has %v, want %s", st.PodCIDRs, *p)
	}
	return nil
}

// live: before startup is done (waiting for the Node) weftd is alive by
// definition; after it, the control socket must answer, which proves the
// daemon's serving goroutines are not wedged.
func (k *kubeMode) live(ctx context.Context) error {
	if k.ready() != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := control.Get(ctx, k.c.socket()); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	return nil
}

// routable keeps the peers whose Node exists; all of them outside
// Kubernetes mode. Nil-safe.
func (k *kubeMode) routable(peers []peer.Peer) []peer.Peer {
	if k == nil || k.nodes == nil {
		return peers
	}
	kept, _ := k.nodes.Snapshot().Filter(peers)
	return kept
}

// healthListener is the health server's listener (nil: none), to pass on
// in a hand-off. Nil-safe.
func (k *kubeMode) healthListener() net.Listener {
	if k == nil {
		return nil
	}
	return k.healthLn
}

// stopHealth closes the health server (a hand-off: the taker serves the
// same listening socket). Nil-safe.
func (k *kubeMode) stopHealth() {
	if k != nil && k.health != nil {
		k.health.Close()
	}
}

// Close stops the health server, the Node watcher and the feed, and waits
// for them. Idempotent; nil-safe.
func (k *kubeMode) Close() {
	if k == nil {
		return
	}
	k.cancel()
	if k.health != nil {
		k.health.Close()
	}
	if k.nodes != nil {
		k.nodes.Close()
	}
	k.wg.Wait()
}
