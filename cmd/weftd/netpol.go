package main

// NetworkPolicy (--network-policy, Kubernetes mode only): informers on
// Pods, Namespaces and NetworkPolicies (overlay/netpol/kube) feed the
// controller (overlay/netpol), which keeps the nftables table inet
// weft-netpol equal to the compiled policies.
//
// Lifecycle, fail closed: the table outlives weftd. A stopping or
// handing-off weftd leaves it in force; a starting one replaces it only
// once its informers have synced, so a restart never opens what policies
// closed. Only a weftd started with --network-policy=false removes it.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/overlay/netpol"
	netpolkube "github.com/weftnet/weft/overlay/netpol/kube"
)

type netpolFlags struct {
	NetworkPolicy       bool
	NetworkPolicyResync time.Duration
}

func (n *netpolFlags) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&n.NetworkPolicy, "network-policy", false, "enforce Kubernetes NetworkPolicy on this node's pods (nftables table inet "+netpol.TableName+", IPv4 and IPv6; Kubernetes mode only); false removes the table")
	fs.DurationVar(&n.NetworkPolicyResync, "network-policy-resync", netpol.DefaultConfig("").Resync, "how often the NetworkPolicy table is applied again, repairing changes made by others")
}

func (c *config) checkNetpol() error {
	if c.NetworkPolicy && !c.kubeMode() {
		return errors.New("--network-policy needs Kubernetes mode (--kube or --kubeconfig)")
	}
	if c.NetworkPolicyResync <= 0 {
		return fmt.Errorf("--network-policy-resync %s: want > 0", c.NetworkPolicyResync)
	}
	return nil
}

// netpolRun is the running enforcement; nil when off (every method
// accepts nil).
type netpolRun struct {
	ctrl    *netpol.Controller
	watch   *netpolkube.Watcher
	enf     *netpol.Table
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started time.Time
}

// startNetpol starts enforcement, or with the flag off removes any table a
// previous weftd left.
func startNetpol(ctx context.Context, c config, log *slog.Logger) (*netpolRun, error) {
	enf := netpol.NewTable(0)
	if !c.NetworkPolicy {
		if err := enf.Remove(); err != nil {
			return nil, fmt.Errorf("--network-policy=false: %w", err)
		}
		return nil, nil
	}
	cs, err := netpolkube.Connect(c.Kubeconfig)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	w, err := netpolkube.Watch(ctx, cs, log)
	if err != nil {
		cancel()
		return nil, err
	}
	cfg := netpol.DefaultConfig(c.Name)
	cfg.Resync, cfg.Log = c.NetworkPolicyResync, log.With("component", "netpol")
	n := &netpolRun{ctrl: netpol.NewController(cfg, w, enf), watch: w, enf: enf, cancel: cancel, started: time.Now()}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.ctrl.Run(ctx); err != nil {
			cfg.Log.Error("NetworkPolicy stopped: the table in force stays", "err", err)
		}
	}()
	log.Info("NetworkPolicy enforcement on: the table in force stays until the informers have synced", "table", netpol.TableName)
	return n, nil
}

// Close stops the controller and informers; the table stays (fail closed).
func (n *netpolRun) Close() {
	if n == nil {
		return
	}
	n.cancel()
	n.wg.Wait()
	n.watch.Close()
}

// annotate adds the enforcement's state and drop counters to st.
func (n *netpolRun) annotate(st *control.Status) {
	if n == nil {
		return
	}
	s := n.ctrl.Status()
	np := &control.NetworkPolicy{
		Synced: s.Synced, Policies: s.Policies, Selecting: s.Selecting, Rules: s.Rules, Pods: s.Pods,
		Applies: s.Applies, Failures: s.Failures, Invalid: s.Invalid + int(n.watch.Invalid()), LastApply: s.LastApply,
		LastApplyMillis: float64(s.LastTook.Microseconds()) / 1000, LastError: s.LastError,
	}
	drops, err := n.ctrl.Counters()
	if err != nil && np.LastError == "" {
		np.LastError = err.Error()
	}
	for key, d := range drops {
		np.Drops = append(np.Drops, control.PolicyDrops{Policy: key, Ingress: d.Ingress, Egress: d.Egress})
	}
	sort.Slice(np.Drops, func(i, j int) bool { return np.Drops[i].Policy < np.Drops[j].Policy })
	st.NetworkPolicy = np
}
