// Package kube feeds overlay/netpol from the Kubernetes API: informers on
// Pods, Namespaces and NetworkPolicies, translated into netpol's own types.
// With peer/kube and ipam/kube it is one of the few packages that import
// client-go.
//
// The informers' handlers only kick a coalescing channel; State copies
// the whole caches into a fresh netpol.State when the controller asks.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersnetv1 "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/overlay/netpol"
)

// Watcher is a netpol.Source over a cluster.
type Watcher struct {
	pods     listerscorev1.PodLister
	nss      listerscorev1.NamespaceLister
	policies listersnetv1.NetworkPolicyLister
	synced   []cache.InformerSynced
	changes  chan struct{}
	log      *slog.Logger
	invalid  atomic.Uint64 // policies the last State could not translate

	cancel    context.CancelFunc
	factory   informers.SharedInformerFactory
	closeOnce sync.Once
}

// Connect builds a clientset from a kubeconfig file, or from the pod's
// service account when kubeconfig is empty (the DaemonSet case).
func Connect(kubeconfig string) (kubernetes.Interface, error) {
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
	cfg.UserAgent = "weftd-netpol"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}

// Watch starts the informers; it returns at once (WaitSynced waits for
// their first lists). Close stops them.
func Watch(ctx context.Context, c kubernetes.Interface, log *slog.Logger) (*Watcher, error) {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	// No informer resync: State reads whole caches, the controller has
	// its own resync for the kernel side.
	f := informers.NewSharedInformerFactory(c, 0)
	w := &Watcher{
		changes: make(chan struct{}, 1),
		log:     log.With("component", "kube-netpol"),
		cancel:  cancel,
		factory: f,
	}
	pods := f.Core().V1().Pods()
	nss := f.Core().V1().Namespaces()
	pols := f.Networking().V1().NetworkPolicies()
	// Keep only what policies read of a Pod: the cache of a large
	// cluster's pods stays small.
	if err := pods.Informer().SetTransform(trimPod); err != nil {
		cancel()
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	kick := func(any) {
		select {
		case w.changes <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: kick, UpdateFunc: func(_, o any) { kick(o) }, DeleteFunc: kick}
	for _, inf := range []cache.SharedIndexInformer{pods.Informer(), nss.Informer(), pols.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			cancel()
			return nil, fmt.Errorf("watch: %w", err)
		}
		w.synced = append(w.synced, inf.HasSynced)
	}
	w.pods, w.nss, w.policies = pods.Lister(), nss.Lister(), pols.Lister()
	f.Start(ctx.Done())
	return w, nil
}

// WaitSynced waits for the first list of all three kinds.
func (w *Watcher) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), w.synced...) {
		return fmt.Errorf("pods, namespaces, networkpolicies: not synced: %w", context.Cause(ctx))
	}
	return nil
}

// Changes delivers a value after informer events (coalesced).
func (w *Watcher) Changes() <-chan struct{} { return w.changes }

// Invalid counts the policies the last State could not translate.
func (w *Watcher) Invalid() uint64 { return w.invalid.Load() }

// State copies the caches into a netpol.State.
func (w *Watcher) State() netpol.State {
	var st netpol.State
	pods, _ := w.pods.List(labels.Everything())
	for _, p := range pods {
		if pod, ok := PodOf(p); ok {
			st.Pods = append(st.Pods, pod)
		}
	}
	nss, _ := w.nss.List(labels.Everything())
	for _, n := range nss {
		st.Namespaces = append(st.Namespaces, netpol.Namespace{Name: n.Name, Labels: n.Labels})
	}
	pols, _ := w.policies.List(labels.Everything())
	var invalid uint64
	defer func() { w.invalid.Store(invalid) }()
	for _, p := range pols {
		pol, err := PolicyOf(p)
		if err != nil {
			invalid++
			w.log.Warn("NetworkPolicy not enforced", "policy", p.Namespace+"/"+p.Name, "err", err)
			continue
		}
		st.Policies = append(st.Policies, pol)
	}
	return st
}

// Close stops the informers.
func (w *Watcher) Close() {
	w.closeOnce.Do(func() {
		w.cancel()
		w.factory.Shutdown()
	})
}

// trimPod keeps the fields PodOf reads.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, ResourceVersion: p.ResourceVersion, UID: p.UID},
		Spec:       corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status:     corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	for _, c := range p.Spec.Containers {
		var ports []corev1.ContainerPort
		for _, cp := range c.Ports {
			if cp.Name != "" {
				ports = append(ports, cp)
			}
		}
		if len(ports) > 0 {
			out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: ports})
		}
	}
	return out, nil
}

// PodOf translates a Pod; ok is false for pods policies ignore: host
// network, finished, or without an address yet.
func PodOf(p *corev1.Pod) (netpol.Pod, bool) {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return netpol.Pod{}, false
	}
	var ips []netip.Addr
	for _, s := range append([]corev1.PodIP{{IP: p.Status.PodIP}}, p.Status.PodIPs...) {
		a, err := netip.ParseAddr(s.IP)
		if err != nil || a.Zone() != "" {
			continue // the API server refuses these; a zone names no pod
		}
		// An IPv4-mapped IPv6 address is the IPv4 address (what a
		// packet of the pod carries).
		if a = a.Unmap(); !slices.Contains(ips, a) {
			ips = append(ips, a)
		}
	}
	if len(ips) == 0 {
		return netpol.Pod{}, false
	}
	pod := netpol.Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, IPs: ips, Node: p.Spec.NodeName}
	for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
		for _, cp := range c.Ports {
			proto, err := netpol.ParseProto(string(cp.Protocol))
			if cp.Name == "" || err != nil || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			pod.Ports = append(pod.Ports, netpol.NamedPort{Name: cp.Name, Proto: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	return pod, true
}

// PolicyOf translates a NetworkPolicy; an error names what is wrong.
func PolicyOf(np *networkingv1.NetworkPolicy) (netpol.Policy, error) {
	p := netpol.Policy{Namespace: np.Namespace, Name: np.Name}
	var err error
	if p.PodSelector, err = selectorOf(&np.Spec.PodSelector); err != nil {
		return p, fmt.Errorf("podSelector: %w", err)
	}
	if len(np.Spec.PolicyTypes) == 0 {
		// The API server defaults this; the rule it uses, for objects
		// that skipped it.
		p.Ingress, p.Egress = true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.Ingress = true
		case networkingv1.PolicyTypeEgress:
			p.Egress = true
		default:
			return p, fmt.Errorf("policyTypes: unknown %q", t)
		}
	}
	for i, r := range np.Spec.Ingress {
		rule, err := ruleOf(r.From, r.Ports)
		if err != nil {
			return p, fmt.Errorf("ingress[%d]: %w", i, err)
		}
		p.IngressRules = append(p.IngressRules, rule)
	}
	for i, r := range np.Spec.Egress {
		rule, err := ruleOf(r.To, r.Ports)
		if err != nil {
			return p, fmt.Errorf("egress[%d]: %w", i, err)
		}
		p.EgressRules = append(p.EgressRules, rule)
	}
	return p, nil
}

func ruleOf(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (netpol.Rule, error) {
	var r netpol.Rule
	for i, pe := range peers {
		var out netpol.Peer
		switch {
		case pe.IPBlock != nil:
			if pe.PodSelector != nil || pe.NamespaceSelector != nil {
				return r, fmt.Errorf("peer %d: ipBlock with a selector", i)
			}
			cidr, err := netip.ParsePrefix(pe.IPBlock.CIDR)
			if err != nil {
				return r, fmt.Errorf("peer %d: ipBlock.cidr: %w", i, err)
			}
			b := &netpol.IPBlock{CIDR: cidr}
			for _, e := range pe.IPBlock.Except {
				ep, err := netip.ParsePrefix(e)
				if err != nil {
					return r, fmt.Errorf("peer %d: ipBlock.except: %w", i, err)
				}
				b.Except = append(b.Except, ep)
			}
			out.Block = b
		case pe.PodSelector == nil && pe.NamespaceSelector == nil:
			return r, fmt.Errorf("peer %d: empty", i)
		default:
			for _, s := range []struct {
				from *metav1.LabelSelector
				to   **netpol.Selector
			}{{pe.PodSelector, &out.Pods}, {pe.NamespaceSelector, &out.Namespaces}} {
				if s.from == nil {
					continue
				}
				sel, err := selectorOf(s.from)
				if err != nil {
					return r, fmt.Errorf("peer %d: %w", i, err)
				}
				*s.to = &sel
			}
		}
		r.Peers = append(r.Peers, out)
	}
	for i, pt := range ports {
		var proto corev1.Protocol
		if pt.Protocol != nil {
			proto = *pt.Protocol
		}
		pr, err := netpol.ParseProto(string(proto))
		if err != nil {
			return r, fmt.Errorf("port %d: %w", i, err)
		}
		out := netpol.Port{Proto: pr}
		if pt.Port != nil {
			switch pt.Port.Type {
			case intstr.Int:
				if pt.Port.IntVal < 1 || pt.Port.IntVal > 65535 {
					return r, fmt.Errorf("port %d: %d out of range", i, pt.Port.IntVal)
				}
				out.Port = uint16(pt.Port.IntVal)
			case intstr.String:
				out.Name = pt.Port.StrVal
			}
		}
		if pt.EndPort != nil {
			if out.Port == 0 || *pt.EndPort < int32(out.Port) || *pt.EndPort > 65535 {
				return r, fmt.Errorf("port %d: endPort %d needs a numeric port at or below it", i, *pt.EndPort)
			}
			out.EndPort = uint16(*pt.EndPort)
		}
		r.Ports = append(r.Ports, out)
	}
	return r, nil
}

func selectorOf(s *metav1.LabelSelector) (netpol.Selector, error) {
	sel := netpol.Selector{MatchLabels: s.MatchLabels}
	for _, e := range s.MatchExpressions {
		sel.Exprs = append(sel.Exprs, netpol.Requirement{Key: e.Key, Op: netpol.Operator(e.Operator), Values: e.Values})
	}
	return sel, sel.Validate()
}
