// Package kube reads a node's pod CIDRs from Kubernetes: the Node object's
// spec.podCIDRs, which kube-controller-manager's node IPAM controller
// (--allocate-node-cidrs) fills in shortly after the kubelet registers the
// node. In Kubernetes mode this replaces weft's own claim protocol
// (ipam/claim): the cluster already has an authority for node CIDRs, and two
// authorities would disagree.
//
// Only this package and peer/kube import client-go; weftd converts what they
// return into its own types.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// ErrNoPodCIDR means the Node exists but has no pod CIDR yet.
var ErrNoPodCIDR = errors.New("node has no pod CIDR yet")

// PodCIDRs returns the node's pod CIDRs, one per IP family, from
// spec.podCIDRs (or the older single spec.podCIDR when podCIDRs is empty).
// Each must be a masked prefix; the API server enforces that, but the value
// is parsed strictly anyway because it ends up in routes.
func PodCIDRs(n *corev1.Node) ([]netip.Prefix, error) {
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("node %s: %w", n.Name, ErrNoPodCIDR)
	}
	out := make([]netip.Prefix, 0, len(raw))
	for _, s := range raw {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("node %s: pod CIDR %q: %w", n.Name, s, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("node %s: pod CIDR %s has host bits set", n.Name, p)
		}
		out = append(out, p)
	}
	return out, nil
}

// IPv4 returns the first IPv4 prefix of ps.
func IPv4(ps []netip.Prefix) (netip.Prefix, bool) { return family(ps, false) }

// IPv6 returns the first IPv6 prefix of ps: a dual-stack Node's second
// family.
func IPv6(ps []netip.Prefix) (netip.Prefix, bool) { return family(ps, true) }

func family(ps []netip.Prefix, v6 bool) (netip.Prefix, bool) {
	for _, p := range ps {
		if p.Addr().Is6() == v6 {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// WaitConfig tunes Wait. Start from DefaultWaitConfig.
type WaitConfig struct {
	// Resync is how often the Node is read again even without a watch
	// event: a watch can break silently (a proxy dropping idle streams),
	// and the fake clientset in tests has no resource versions, so an
	// update between the first read and the watch would be missed.
	Resync time.Duration
	// Logger gets one line when waiting starts and one per failed read.
	Logger *slog.Logger
}

// DefaultWaitConfig waits with a 5 s resync: kube-controller-manager
// assigns a CIDR within a second of registration, so the watch event is
// what normally ends the wait, and the resync only bounds the damage of a
// lost one.
func DefaultWaitConfig() WaitConfig {
	return WaitConfig{Resync: 5 * time.Second, Logger: slog.Default()}
}

// Wait returns the Node called name and its pod CIDRs as soon as the Node
// exists and has them. It waits for both: weftd may start before the
// kubelet has registered the node, and the controller manager assigns the
// CIDR only after that. It returns early only if ctx ends or the Node's
// CIDRs cannot be parsed.
func Wait(ctx context.Context, c kubernetes.Interface, name string, cfg WaitConfig) (*corev1.Node, []netip.Prefix, error) {
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultWaitConfig().Resync
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "kube-ipam", "node", name)
	logged := false
	for {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			cidrs, perr := PodCIDRs(n)
			if perr == nil {
				return n, cidrs, nil
			}
			if !errors.Is(perr, ErrNoPodCIDR) {
				return nil, nil, perr
			}
		case apierrors.IsNotFound(err):
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		default:
			log.Warn("reading the Node failed; retrying", "err", err)
		}
		if !logged {
			log.Info("waiting for the Node to exist and have spec.podCIDRs (kube-controller-manager --allocate-node-cidrs)")
			logged = true
		}
		if err := waitEvent(ctx, c, name, cfg.Resync); err != nil {
			return nil, nil, err
		}
	}
}

// waitEvent returns after the first watch event about the Node, after d, or
// when the watch breaks; only ctx ending is an error.
func waitEvent(ctx context.Context, c kubernetes.Interface, name string, d time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	w, err := c.CoreV1().Nodes().Watch(wctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(),
	})
	if err != nil {
		// No watch (RBAC, API server restarting): fall back to polling.
		<-wctx.Done()
		return ctx.Err()
	}
	defer w.Stop()
	for {
		select {
		case <-wctx.Done():
			return ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return ctx.Err()
			}
			// The fake clientset ignores field selectors; check the name.
			if n, isNode := ev.Object.(*corev1.Node); isNode && n.Name == name && ev.Type != watch.Error {
				return nil
			}
		}
	}
}
