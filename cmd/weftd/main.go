// Command weftd is weft's node daemon: it gossips this node's record,
// learns every peer's pod CIDRs, and carries pod traffic between the TUN
// device and the underlay in VXLAN-format UDP or WireGuard.
//
// Files, one concern each, each registering and checking its own flags:
// main.go (the node's identity flags, run), datapath.go (TUN, router,
// VXLAN and WireGuard), underlay.go (the underlay address), gossip.go
// (gossip, keys, admission), claim.go (standalone node-CIDR claims),
// kube.go (Kubernetes mode, health), pipeline.go (a gossiped record's way
// to the router's peer table), static.go (--static-peer), status.go (the
// control API's status view), wireguard.go (key rotation).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/cmd/internal/buildinfo"
	"github.com/weftnet/weft/cni"
	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/overlay/handoff"
	"github.com/weftnet/weft/peer"
)

// config is weftd's whole configuration, filled from flags. The node-wide
// fields sit here; each concern's fields come from its embedded part.
type config struct {
	Name string
	// PodCIDR is this node's IPv4 pod CIDR, PodCIDR6 its IPv6 one
	// (dual-stack; invalid: none). ClusterCIDR and ClusterCIDR6 are the
	// cluster's ranges of each family, each routed to the TUN.
	PodCIDR, PodCIDR6         netip.Prefix
	ClusterCIDR, ClusterCIDR6 netip.Prefix
	RunDir                    string
	StateDir                  string
	Site                      string
	LogLevel                  slog.Level
	Procs                     int // --procs: 0 means procs' default

	podCIDRFlags          []string // --pod-cidr, repeatable or comma-separated
	clusterCIDR, logLevel string   // raw flags, parsed by checkNode

	datapathFlags // TUN, VXLAN, WireGuard (datapath.go)
	underlayFlags // underlay address (underlay.go)
	statics       // --static-peer (static.go)
	controlPlane  // gossip, keys, node-CIDR claims (gossip.go)
	kubeFlags     // Kubernetes mode, health endpoints (kube.go)
	handoffFlags  // hand-off from a running weftd (handoff.go)
	masqFlags     // egress masquerade (masq.go)
	metricsFlags  // Prometheus metrics (metrics.go)
	netpolFlags   // NetworkPolicy (netpol.go)
}

// registerFlags adds the node-wide flags to fs.
func (c *config) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Name, "name", defaultName(), "node name, unique in the cluster (default $NODE_NAME, else the hostname); the Node name in Kubernetes mode")
	fs.Func("pod-cidr", "this node's pod CIDR, e.g. 10.244.1.0/24 (required unless --node-cidr-size); dual-stack: give it twice or comma-separated, one IPv4 and one IPv6 (e.g. 10.244.1.0/24,fd00:10:244:1::/64)", func(s string) error {
		c.podCIDRFlags = append(c.podCIDRFlags, strings.Split(s, ",")...)
		return nil
	})
	fs.StringVar(&c.clusterCIDR, "cluster-cidr", "10.244.0.0/16", "the cluster's pod CIDR, routed to the TUN device; dual-stack: one per family, comma-separated (e.g. 10.244.0.0/16,fd00:10:244::/56)")
	fs.StringVar(&c.RunDir, "run-dir", "/run/weft", "directory for the control socket and the CNI hand-off file node.json")
	fs.StringVar(&c.StateDir, "state-dir", "/var/lib/weft", "directory for state that survives restarts")
	fs.StringVar(&c.Site, "site", "", "site label gossiped with the node record")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&c.Procs, "procs", 0, "CPUs weftd's Go code runs on at once (GOMAXPROCS); 0: $GOMAXPROCS if set, else half the CPUs available to weftd, at least 1 (README: Benchmarks)")
}

// parseFlags fills a config from args. Each concern checks its own flags,
// in an order where every check finds what it depends on filled: the
// datapath derives the VTEP MAC from the pod CIDR or the underlay.
func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	var c config
	c.registerFlags(fs)
	c.datapathFlags.registerFlags(fs)
	c.underlayFlags.registerFlags(fs)
	c.statics.registerFlags(fs)
	c.controlPlane.registerFlags(fs)
	c.kubeFlags.registerFlags(fs)
	c.masqFlags.registerFlags(fs)
	c.metricsFlags.registerFlags(fs)
	c.handoffFlags.registerFlags(fs)
	c.netpolFlags.registerFlags(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for _, check := range []func() error{c.checkKube, c.checkNode, c.checkControlPlane, c.checkUnderlay, c.checkDatapath, c.checkMasq, c.checkNetpol} {
		if err := check(); err != nil {
			return c, err
		}
	}
	return c, nil
}

// checkNode parses and checks the node-wide flags.
func (c *config) checkNode() error {
	if err := c.LogLevel.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if c.Procs < 0 || c.Procs > 4096 {
		return fmt.Errorf("--procs %d out of range 0..4096", c.Procs)
	}
	if c.Name == "" {
		return errors.New("--name is required (no hostname)")
	}
	if len(c.podCIDRFlags) == 0 && c.NodeCIDRBits == 0 && !c.kubeMode() {
		return errors.New("--pod-cidr is required (or --node-cidr-size to claim one over gossip)")
	}
	if err := c.parseClusterCIDRs(); err != nil {
		return err
	}
	if len(c.podCIDRFlags) == 0 {
		return nil
	}
	return c.parsePodCIDRs()
}

// parseClusterCIDRs parses --cluster-cidr: one prefix, or one per family
// comma-separated (IPv4 first or not, as Kubernetes allows).
func (c *config) parseClusterCIDRs() error {
	for _, s := range strings.Split(c.clusterCIDR, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--cluster-cidr: %w", err)
		}
		at := &c.ClusterCIDR
		if p.Addr().Is6() {
			at = &c.ClusterCIDR6
		}
		if at.IsValid() {
			return fmt.Errorf("--cluster-cidr %s: two prefixes of one family", c.clusterCIDR)
		}
		*at = p
	}
	if !c.ClusterCIDR.IsValid() {
		return fmt.Errorf("--cluster-cidr %s: an IPv4 prefix is required (IPv6-only pods are not supported yet)", c.clusterCIDR)
	}
	return nil
}

// parsePodCIDRs parses --pod-cidr: at most one prefix per family, each
// inside the cluster CIDR of its family; an IPv4 one is required.
func (c *config) parsePodCIDRs() error {
	for _, s := range c.podCIDRFlags {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--pod-cidr: %w", err)
		}
		at, cluster, fam, maxBits := &c.PodCIDR, c.ClusterCIDR, "IPv4", 30
		if p.Addr().Is6() {
			at, cluster, fam, maxBits = &c.PodCIDR6, c.ClusterCIDR6, "IPv6", 120
		}
		if p != p.Masked() || p.Bits() > maxBits || p.Addr().Is4In6() {
			return fmt.Errorf("--pod-cidr %s: want a masked %s prefix of /%d or larger", p, fam, maxBits)
		}
		if !cluster.IsValid() || !cluster.Contains(p.Addr()) || cluster.Bits() > p.Bits() {
			return fmt.Errorf("--pod-cidr %s is not inside --cluster-cidr %s", p, c.clusterCIDR)
		}
		if at.IsValid() {
			return fmt.Errorf("--pod-cidr: two %s prefixes (%s, %s): want at most one per family", fam, *at, p)
		}
		*at = p
	}
	if !c.PodCIDR.IsValid() {
		return fmt.Errorf("--pod-cidr %s: an IPv4 pod CIDR is required (IPv6-only pods are not supported yet)", strings.Join(c.podCIDRFlags, ","))
	}
	return nil
}

// podCIDRs is this node's pod CIDRs, IPv4 first; empty before a claim.
func (c config) podCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{c.PodCIDR, c.PodCIDR6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// clusterCIDRs is the cluster's pod ranges, IPv4 first.
func (c config) clusterCIDRs() []netip.Prefix {
	if c.ClusterCIDR6.IsValid() {
		return []netip.Prefix{c.ClusterCIDR, c.ClusterCIDR6}
	}
	return []netip.Prefix{c.ClusterCIDR}
}

func main() {
	if buildinfo.Requested(os.Args[1:]) {
		fmt.Println(buildinfo.String("weftd"))
		return
	}
	c, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftd:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.LogLevel}))
	runtime.GOMAXPROCS(procs(c.Procs, os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0)))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = run(ctx, c, log)
	switch {
	case errors.Is(err, errHandedOff) && c.kubeMode():
		// An exit would restart this container, which would take the
		// node back: wait for the pod's deletion instead.
		log.Info("handed off: idle until SIGTERM")
		<-ctx.Done()
	case err != nil && !errors.Is(err, errHandedOff):
		log.Error("weftd failed", "err", err)
		os.Exit(1)
	}
}

// procs is the GOMAXPROCS weftd runs with: the --procs flag if set, else
// the runtime's choice if $GOMAXPROCS is set (avail is what the runtime
// chose), else half of avail, at least 1. The datapath's work is a few
// goroutines in system calls that also do the kernel's share of each packet;
// more scheduler threads than that only add hand-offs and wake-ups between
// them, and the pods whose packets weftd carries need the other CPUs
// (measured: README, Benchmarks).
func procs(flag int, env string, avail int) int {
	switch {
	case flag > 0:
		return flag
	case env != "":
		return avail
	}
	return max(1, avail/2)
}

// run wires the parts in the order the node needs them: a hand-off from a
// running weftd if there is one (handoff.go), the pod CIDR (claim or
// Kubernetes), the datapath for it, gossip with the full record, node.json
// for weft-cni, the control socket, and then the peer pipeline until ctx
// ends or this weftd hands off in turn (errHandedOff).
func run(ctx context.Context, c config, log *slog.Logger) error {
	if err := overlay.CheckPrivileges(); err != nil {
		return err
	}
	for _, dir := range []string{c.RunDir, c.StateDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	tk, err := dialDonor(c, log)
	if err != nil {
		return err
	}
	defer tk.abort() // before done: the donor resumes
	keys, err := gossipKeys(c, log)
	if err != nil {
		return err
	}
	var members *peer.Membership // joined early only in claim mode (claim.go)
	if c.claimMode() {
		var cidrs []netip.Prefix
		if members, cidrs, err = joinAndClaim(ctx, c, keys, log); err != nil {
			return err
		}
		c.PodCIDR = cidrs[0]
		if len(cidrs) > 1 {
			c.PodCIDR6 = cidrs[1]
		}
		defer members.Close()
	}
	// Kubernetes mode: the pod CIDR, seeds and underlay come from the
	// Node objects; the health endpoints start here in every mode.
	healthLn, err := tk.listener(fdHealth)
	if err != nil {
		return err
	}
	passedMetrics, err := tk.listener(fdMetrics)
	if err != nil {
		return err
	}
	ctx, kube, err := startKube(ctx, &c, log, healthLn)
	if err != nil {
		return err
	}
	defer kube.Close()
	np, err := startNetpol(ctx, c, log)
	if err != nil {
		return err
	}
	defer np.Close()
	how := startOf(c, log, tk)
	dp, err := startDatapath(c, log, tk, how.resuming())
	if err != nil {
		return err
	}
	defer dp.Close()

	self := c.selfRecord(dp.wg)
	started, first := how.apply(c, log, dp.router, self)
	if err := dp.start(c, tk); err != nil {
		return err
	}
	if members == nil {
		if err := tk.releaseGossip(); err != nil {
			return err
		}
		if members, err = joinRetry(membershipConfig(c, keys, log), self, tk); err != nil {
			return fmt.Errorf("start gossip: %w", err)
		}
		defer members.Close()
	} else if err := members.UpdateSelf(self, 2*time.Second); err != nil {
		// Claim mode: the datapath is ready for the settled block; now
		// the full record (with WireGuard fields) goes out.
		return fmt.Errorf("announce node record: %w", err)
	}
	plane := newPlane(c, log, members)
	defer plane.start(ctx)()

	// The hand-off file goes last: once it exists, pods wired by weft-cni
	// have a gateway and a route out.
	if err := cni.WriteNodeState(c.RunDir, cni.NodeState{
		NodeName: c.Name, PodCIDRs: c.podCIDRs(), Gateway: dp.gateway, Gateway6: dp.gateway6, MTU: dp.mtu,
		ClusterCIDR: c.ClusterCIDR, ClusterCIDR6: c.ClusterCIDR6,
	}); err != nil {
		return err
	}
	// The donor frees the control, UAPI and hand-off sockets only now.
	if err := tk.done(); err != nil {
		log.Warn("hand-off: the donor did not confirm the end", "err", err)
	}
	if dp.wg != nil {
		if err := dp.wg.StartUAPI(); err != nil {
			return err
		}
	}
	metricsLn, err := listenMetrics(c.MetricsAddr, passedMetrics)
	if err != nil {
		return err
	}
	n := &node{c: c, log: log, dp: dp, members: members, kube: kube, metricsLn: metricsLn}
	ctrl, stopCtrl := context.WithCancel(ctx)
	defer stopCtrl()
	n.stopControl = stopCtrl
	n.served = serveControl(ctrl, c, dp, members, plane, kube, np, started, metricsLn)
	d := donor{reqs: make(chan donorReq)}
	handed := make(chan error, 1)
	go func() { handed <- handoff.Serve(ctrl, c.handoffSocket(), d) }()
	log.Info("weftd running", "name", c.Name, "underlay", self.Underlay, "podCIDRs", c.podCIDRs(), "tun", c.TUN, "mtu", dp.mtu, "vni", c.VNI, "socket", c.socket(), "procs", runtime.GOMAXPROCS(0), "start", started.Start)

	pipe := newPipeline(c, log, members, plane, dp.router, kube.routable)
	pipe.last = first
	n.pipe = pipe
	updates := kube.peerUpdates(ctx, members) // filtered by the Node set in Kubernetes mode
	for {
		select {
		case snap := <-updates:
			if n.paused {
				continue // the taker routes now
			}
			if err := pipe.route(snap); err != nil {
				return plane.giveUp(err)
			}
		case req := <-d.reqs:
			req.reply <- n.handle(req.op)
			if n.gossipGone {
				updates = nil
			}
		case err := <-handed:
			switch {
			case errors.Is(err, handoff.ErrHandedOff):
				log.Info("handed off to a new weftd")
				return errHandedOff
			case errors.Is(err, handoff.ErrLost):
				return err
			case err != nil:
				log.Warn("hand-off socket stopped: no hand-off to this weftd", "err", err)
			}
		case err := <-n.served:
			if err != nil {
				return fmt.Errorf("control socket: %w", err)
			}
		case <-ctx.Done():
			if n.gossipGone {
				return errHandedOff // a signal in the middle of a hand-off
			}
			stop(c, log, members)
			return nil
		}
	}
}

// stop ends a weftd on SIGTERM or SIGINT. By default it is a restart: no
// leave, so peers keep this node's routes while the persistent TUN holds
// its traffic for the next weftd; --leave-on-exit leaves first.
func stop(c config, log *slog.Logger, members *peer.Membership) {
	if !c.LeaveOnExit {
		log.Info("stopping without leaving the cluster (restart)")
		return
	}
	log.Info("leaving the cluster")
	if err := members.Leave(2 * time.Second); err != nil {
		log.Warn("graceful leave failed", "err", err)
	}
}

// socket is the control API's unix socket.
func (c config) socket() string { return filepath.Join(c.RunDir, "weftd.sock") }

// serveControl serves the control API on the socket in c.RunDir until ctx
// ends; the channel delivers Serve's result.
func serveControl(ctx context.Context, c config, dp *datapath, members *peer.Membership, plane *plane, kube *kubeMode, np *netpolRun, started control.Process, metricsLn net.Listener) <-chan error {
	statusOf := func() control.Status {
		st := status(c, dp, members)
		st.Process = started
		plane.annotate(&st)
		kube.annotate(&st)
		np.annotate(&st)
		return st
	}
	served := make(chan error, 2) // the control socket's and the metrics server's
	if metricsLn != nil {
		go func() {
			if err := serveMetrics(ctx, metricsLn, statusOf); err != nil {
				served <- err
			}
		}()
	}
	go func() {
		served <- control.Serve(ctx, c.socket(), control.API{
			Status: statusOf,
			Actions: plane.withKeyActions(map[string]func(map[string]string) (any, error){
				"wireguard/rotate-key": func(map[string]string) (any, error) { return rotateKey(c, dp.wg, members) },
			}),
		})
	}()
	return served
}
