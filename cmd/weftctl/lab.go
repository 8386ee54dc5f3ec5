package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/overlay/control"
)

// convergeTimeout bounds the wait for gossip after the lab is up; the
// memberlist LAN defaults converge three nodes in a few seconds.
const convergeTimeout = 30 * time.Second

// stringList is a repeatable or comma-separated string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			*s = append(*s, f)
		}
	}
	return nil
}

// labFlags registers the flags that describe a lab on fs.
func labFlags(fs *flag.FlagSet, cfg *lab.Config, ext *stringList, weftdArgs *[]string) {
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "number of nodes (>= sites)")
	fs.IntVar(&cfg.Sites, "sites", cfg.Sites, "number of underlay sites, 1..3, joined by a router")
	fs.IntVar(&cfg.PodsPerNode, "pods-per-node", cfg.PodsPerNode, "pods made through weft-cni on each node")
	fs.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "namespace name prefix")
	fs.StringVar(&cfg.Dir, "dir", cfg.Dir, "lab directory (lab.json, per-node state and logs)")
	fs.StringVar(&cfg.BinDir, "bin-dir", cfg.BinDir, "directory holding weftd and weft-cni")
	fs.StringVar(&cfg.Transport, "transport", cfg.Transport, "transport policy: vxlan, wireguard or wireguard-across-sites")
	fs.BoolVar(&cfg.DualStack, "dual-stack", cfg.DualStack, "dual-stack pods: an IPv6 pod CIDR per node (fd00:10:244:<i>::/64 of fd00:10:244::/56) beside the IPv4 one, one address of each family per pod")
	fs.StringVar(&cfg.Underlay, "underlay", "ipv4", "underlay family: ipv4 (TEST-NET /24s), ipv6 (a 2001:db8:<site>::/64 per site, nodes' only underlay address IPv6: gossip, VXLAN and WireGuard over IPv6) or mixed (both subnets per site; node i IPv4 only for i%3=1, IPv6 only for i%3=2, both for i%3=0); combine with --dual-stack for IPv6 pods too")
	fs.StringVar(&cfg.Topology, "topology", cfg.Topology, "plain (sites joined by one router) or nat (two clouds and an on-premises site behind NAT gateways, 7 nodes; deploy/lab/README.md); nat defaults --transport to wireguard-across-sites")
	fs.Var(ext, "external", "nodes that get a namespace but no weftd and no pods (repeatable or comma-separated, e.g. n3)")
	fs.Func("weftd-arg", "extra flag for every weftd (repeatable)", func(v string) error {
		*weftdArgs = append(*weftdArgs, v)
		return nil
	})
}

// natDefaults fills in what the NAT topology implies unless given: its
// nodes behind NAT are reached over WireGuard only, and its layout is fixed.
func natDefaults(fs *flag.FlagSet, cfg *lab.Config) {
	if cfg.Topology != lab.TopologyNAT {
		return
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["transport"] {
		cfg.Transport = "wireguard-across-sites"
	}
	if !set["nodes"] {
		cfg.Nodes = 0 // the layout's
	}
	if !set["sites"] {
		cfg.Sites = 0
	}
}

func runLab(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: weftctl lab up|down|status", errUsage)
	}
	switch args[0] {
	case "up":
		return runLabUp(args[1:])
	case "down":
		return runLabDown(args[1:])
	case "status":
		return runLabStatus(args[1:])
	default:
		return fmt.Errorf("%w: unknown lab command %q (want up, down or status)", errUsage, args[0])
	}
}

// signalContext is cancelled by SIGINT or SIGTERM. Later signals are
// swallowed until stop is called, so a second ^C can't cut teardown short.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func runLabUp(args []string) error {
	cfg := lab.DefaultConfig()
	var ext stringList
	fs := flag.NewFlagSet("weftctl lab up", flag.ContinueOnError)
	labFlags(fs, &cfg, &ext, &cfg.WeftdArgs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	natDefaults(fs, &cfg)
	cfg.External = ext
	cfg.Log = prefixWriter{os.Stdout, "  "}
	if err := lab.Preflight(cfg); err != nil {
		return err
	}

	if old, err := lab.Load(cfg.Dir); err == nil && old.Alive() {
		return fmt.Errorf("a lab (prefix %s) is running in %s: run `weftctl lab down --dir %s --prefix %s` first",
			old.Prefix, cfg.Dir, cfg.Dir, old.Prefix)
	}
	if err := lab.Cleanup(cfg.Prefix, cfg.Dir); err != nil {
		return fmt.Errorf("clean up leftovers of %s: %w", cfg.Prefix, err)
	}
	ctx, stop := signalContext()
	defer stop()

	fmt.Printf("bringing up lab %s: %d nodes, %d sites, %d pods per node, bin dir %s\n",
		cfg.Prefix, cfg.Nodes, cfg.Sites, cfg.PodsPerNode, cfg.BinDir)
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Println("waiting for gossip to converge")
	cctx, cancel := context.WithTimeout(ctx, convergeTimeout)
	err = l.WaitConverged(cctx)
	cancel()
	if err != nil {
		printLogTails(os.Stderr, l)
		fmt.Println("tearing down")
		return errors.Join(err, l.Down())
	}
	fmt.Println()
	printLab(os.Stdout, l)
	fmt.Println()
	printLearned(os.Stdout, learned(ctx, l))
	fmt.Printf("\nlab is up; lab.json in %s. Try:\n  ip netns exec %s ping %s\n  weftctl lab down --prefix %s --dir %s\n",
		l.Dir, firstPodNetns(l), secondPodAddr(l), l.Prefix, l.Dir)
	return nil
}

func firstPodNetns(l *lab.Lab) string {
	if len(l.Pods) > 0 {
		return l.Pods[0].Netns
	}
	return l.Nodes[0].Netns
}

func secondPodAddr(l *lab.Lab) string {
	if len(l.Pods) > 1 {
		return l.Pods[len(l.Pods)-1].Address
	}
	return l.Nodes[len(l.Nodes)-1].UnderlayAddr
}

func runLabDown(args []string) error {
	def := lab.DefaultConfig()
	fs := flag.NewFlagSet("weftctl lab down", flag.ContinueOnError)
	prefix := fs.String("prefix", def.Prefix, "namespace name prefix to clean up")
	dir := fs.String("dir", def.Dir, "lab directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var errs []error
	if l, err := lab.Load(*dir); err == nil {
		l.SetLog(prefixWriter{os.Stdout, "  "})
		fmt.Printf("tearing down lab %s (%s)\n", l.Prefix, l.Dir)
		if err := l.Down(); err != nil {
			errs = append(errs, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "weftctl: %v (cleaning up by name)\n", err)
	}
	if err := lab.Cleanup(*prefix, *dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		fmt.Printf("lab %s is down\n", *prefix)
	}
	return errors.Join(errs...)
}

func runLabStatus(args []string) error {
	def := lab.DefaultConfig()
	fs := flag.NewFlagSet("weftctl lab status", flag.ContinueOnError)
	dir := fs.String("dir", def.Dir, "lab directory")
	out := fs.String("o", "text", "output format: text or json (exactly lab.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *out {
	case "json":
		b, err := os.ReadFile(filepath.Join(*dir, "lab.json"))
		if err != nil {
			return fmt.Errorf("no lab in %s: %w", *dir, err)
		}
		_, err = os.Stdout.Write(b)
		return err
	case "text":
		l, err := lab.Load(*dir)
		if err != nil {
			return fmt.Errorf("no lab in %s: %w", *dir, err)
		}
		printLab(os.Stdout, l)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		fmt.Println()
		printLearned(os.Stdout, learned(ctx, l))
		return nil
	default:
		return fmt.Errorf("%w: -o %q: want text or json", errUsage, *out)
	}
}

// printLab prints the router, nodes and pods of l as tables.
func printLab(w io.Writer, l *lab.Lab) {
	fmt.Fprintf(w, "lab %s (%s), transport %s, cluster %s\n\n", l.Prefix, l.Dir, l.Transport, strings.TrimSuffix(l.ClusterCIDR+" "+l.ClusterCIDR6, " "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SITE\tSUBNET\tGATEWAY (router %s)\n", l.Router.Netns)
	for _, s := range l.Router.Sites {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Subnet, s.Gateway)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tSITE\tUNDERLAY\tPOD CIDR\tWEFTD")
	for _, n := range l.Nodes {
		d := "external"
		if !n.External {
			d = fmt.Sprintf("pid %d", n.WeftdPID)
			if !pidAlive(n.WeftdPID) {
				d += " (not running)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Netns, n.Site, strings.TrimSuffix(n.UnderlayAddr+" "+n.AltUnderlayAddr, " "), strings.TrimSuffix(n.PodCIDR+" "+n.PodCIDR6, " "), d)
	}
	tw.Flush()
	if len(l.Pods) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tADDRESS\tNETNS")
	for _, p := range l.Pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Node, strings.TrimSuffix(p.Address+" "+p.Address6, " "), p.Netns)
	}
	tw.Flush()
}

func pidAlive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// learnedRoutes is, per node, what its weftd says about its peers (or why
// it could not say).
type learnedRoutes struct {
	node  string
	peers []control.Node
	err   error
}

func learned(ctx context.Context, l *lab.Lab) []learnedRoutes {
	var out []learnedRoutes
	for _, n := range l.Nodes {
		if n.External {
			continue
		}
		st, err := l.Status(ctx, n.Name)
		peers := st.Peers
		sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
		out = append(out, learnedRoutes{node: n.Name, peers: peers, err: err})
	}
	return out
}

func printLearned(w io.Writer, ls []learnedRoutes) {
	if len(ls) == 0 {
		return
	}
	fmt.Fprintln(w, "pod CIDRs learned by gossip (from each weftd's /v1/status)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPEER\tPOD CIDRS\tUNDERLAY\tSTATE\tTRANSPORT")
	for _, lr := range ls {
		if lr.err != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t%v\t-\n", lr.node, lr.err)
			continue
		}
		if len(lr.peers) == 0 {
			fmt.Fprintf(tw, "%s\t(none)\t\t\t\t\n", lr.node)
		}
		for _, p := range lr.peers {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", lr.node, p.Name, strings.Join(p.PodCIDRs, ","), p.UnderlayAddr, p.State, p.Transport)
		}
	}
	tw.Flush()
}

// printLogTails shows the end of every weftd log, before teardown removes
// them.
func printLogTails(w io.Writer, l *lab.Lab) {
	for _, n := range l.Nodes {
		if n.LogFile == "" {
			continue
		}
		b, err := os.ReadFile(n.LogFile)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(w, "--- %s weftd.log (last %d lines)\n%s\n", n.Name, len(lines), strings.Join(lines, "\n"))
	}
}

// prefixWriter indents progress lines from the lab package.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	s := strings.TrimRight(string(b), "\n")
	s = p.prefix + strings.ReplaceAll(s, "\n", "\n"+p.prefix) + "\n"
	if _, err := io.WriteString(p.w, s); err != nil {
		return 0, err
	}
	return len(b), nil
}

// pairResult is the outcome of the probes from one pod to another.
type pairResult struct {
	from, to  lab.Pod
	v6        bool   // probed over IPv6 (to.Address6)
	addr      string // the address probed
	crossSite bool
	ping      lab.PingResult
	pingErr   error
	tcp       lab.TransferResult
	tcpErr    error
	// noFamily: the two nodes share no underlay family (mixed underlay),
	// so the pair is not probed; unreachable is the reason the sending
	// node's weftd gives, which it must give.
	noFamily    bool
	unreachable string
}

func (r pairResult) ok() bool {
	if r.noFamily {
		return r.unreachable != ""
	}
	return r.pingErr == nil && r.tcpErr == nil
}

// runDemo is `make demo`: a fresh lab, every ordered pair of pods on
// different nodes pinged and sent a checksummed TCP stream, a summary, and
// teardown whatever happens. It uses its own prefix and directory so it
// never touches a lab someone brought up by hand.
func runDemo(args []string) error {
	cfg := lab.DefaultConfig()
	cfg.Prefix = "weftdemo"
	cfg.Dir = "/run/weft-demo"
	var ext stringList
	fs := flag.NewFlagSet("weftctl demo", flag.ContinueOnError)
	labFlags(fs, &cfg, &ext, &cfg.WeftdArgs)
	sizeMiB := fs.Int("tcp-mib", 8, "MiB sent over TCP between each pair of pods")
	if err := fs.Parse(args); err != nil {
		return err
	}
	natDefaults(fs, &cfg)
	cfg.External = ext
	cfg.Log = prefixWriter{os.Stdout, "  "}
	start := time.Now()
	if err := lab.Preflight(cfg); err != nil {
		return err
	}

	ctx, stop := signalContext()
	defer stop()

	if err := lab.Cleanup(cfg.Prefix, cfg.Dir); err != nil {
		return fmt.Errorf("clean up leftovers of %s: %w", cfg.Prefix, err)
	}
	if cfg.Topology == lab.TopologyNAT {
		fmt.Printf("== weft demo: 7 nodes in two clouds and on premises, behind NAT, %d pod(s) per node, transport %s\n", cfg.PodsPerNode, cfg.Transport)
	} else {
		underlay := cfg.Underlay
		if underlay == "" {
			underlay = lab.UnderlayIPv4
		}
		fmt.Printf("== weft demo: %d nodes on %d sites, %d pod(s) per node, transport %s, underlay %s\n",
			cfg.Nodes, cfg.Sites, cfg.PodsPerNode, cfg.Transport, underlay)
	}
	fmt.Println("== bringing up the lab")
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("== tearing down")
		if err := l.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "weftctl: teardown:", err)
		}
		// Belt and braces: anything named like the demo goes too.
		if err := lab.Cleanup(cfg.Prefix, cfg.Dir); err != nil {
			fmt.Fprintln(os.Stderr, "weftctl: cleanup:", err)
		}
	}()

	fmt.Println("== waiting for gossip to converge")
	cctx, cancel := context.WithTimeout(ctx, convergeTimeout)
	err = l.WaitConverged(cctx)
	cancel()
	if err != nil {
		printLogTails(os.Stderr, l)
		fmt.Println("FAIL")
		return err
	}
	fmt.Printf("   converged after %.1fs\n", time.Since(start).Seconds())

	results := probePairs(ctx, l, int64(*sizeMiB)<<20)
	ok := ctx.Err() == nil && len(results) > 0
	for _, r := range results {
		ok = ok && r.ok()
	}
	fmt.Println()
	printLab(os.Stdout, l)
	fmt.Println()
	printLearned(os.Stdout, learned(ctx, l))
	fmt.Println()
	printPairs(os.Stdout, results, *sizeMiB)
	if len(results) == 0 {
		fmt.Println("\nno pairs of pods on different nodes to test (need >= 2 nodes with pods)")
	}
	if !ok {
		printLogTails(os.Stderr, l)
		fmt.Printf("\nFAIL (%d pairs, %.1fs)\n", len(results), time.Since(start).Seconds())
		if ctx.Err() != nil {
			return fmt.Errorf("demo interrupted")
		}
		return fmt.Errorf("demo failed")
	}
	fmt.Printf("\nPASS (%d pairs, %.1fs)\n", len(results), time.Since(start).Seconds())
	return nil
}

// probePairs pings every ordered pair of pods on different nodes and sends
// size checksummed bytes over TCP between them, printing progress.
func probePairs(ctx context.Context, l *lab.Lab, size int64) []pairResult {
	siteOf := map[string]string{}
	for _, n := range l.Nodes {
		siteOf[n.Name] = n.Site
	}
	var results []pairResult
	for _, from := range l.Pods {
		for _, to := range l.Pods {
			if from.Node == to.Node {
				continue
			}
			if ctx.Err() != nil {
				return results
			}
			// Both families in a dual-stack lab, IPv4 first.
			for _, addr := range []string{to.Address, to.Address6} {
				if addr == "" || ctx.Err() != nil {
					continue
				}
				r := pairResult{from: from, to: to, v6: addr == to.Address6, addr: addr, crossSite: siteOf[from.Node] != siteOf[to.Node]}
				src := from.Address
				if r.v6 {
					src = from.Address6
				}
				fmt.Printf("== %s (%s) -> %s (%s)\n", from.Name, src, to.Name, addr)
				if !l.ShareFamily(from.Node, to.Node) {
					r.noFamily, r.unreachable = true, unreachableReason(ctx, l, from.Node, to.Node)
					fmt.Printf("   %s\n", pingCell(r))
					results = append(results, r)
					continue
				}
				r.ping, r.pingErr = l.Ping(ctx, from.Netns, addr, 3)
				r.tcp, r.tcpErr = l.TransferTo(ctx, from, to, addr, size)
				fmt.Printf("   ping %s, tcp %s\n", pingCell(r), tcpCell(r))
				results = append(results, r)
			}
		}
	}
	return results
}

// printPairs prints the summary table of probePairs and the errors behind
// each failure.
func printPairs(w io.Writer, results []pairResult, sizeMiB int) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "PAIR\tPATH\tPING\tTCP %d MiB (sha256)\n", sizeMiB)
	for _, r := range results {
		path := "same site"
		if r.crossSite {
			path = "cross-site"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.pair(), path, pingCell(r), tcpCell(r))
	}
	tw.Flush()
	for _, r := range results {
		if r.pingErr != nil {
			fmt.Fprintf(w, "\n%s ping: %v\n%s", r.pair(), r.pingErr, r.ping.Output)
		}
		if r.tcpErr != nil {
			fmt.Fprintf(w, "\n%s tcp: %v\n", r.pair(), r.tcpErr)
		}
	}
}

// pair names the pair, and the family when it is IPv6.
func (r pairResult) pair() string {
	s := r.from.Name + " -> " + r.to.Name
	if r.v6 {
		s += " (IPv6)"
	}
	return s
}

// unreachableReason is the reason node from's weftd gives for not
// reaching node to, or "".
func unreachableReason(ctx context.Context, l *lab.Lab, from, to string) string {
	st, err := l.Status(ctx, from)
	if err != nil {
		return ""
	}
	for _, p := range st.Peers {
		if p.Name == to {
			return p.Unreachable
		}
	}
	return ""
}

func pingCell(r pairResult) string {
	if r.noFamily {
		if r.unreachable == "" {
			return "FAIL: no common underlay family, but weftd does not say the peer is unreachable"
		}
		return "unreachable, as planned: " + r.unreachable
	}
	if r.pingErr != nil {
		return fmt.Sprintf("FAIL %d/%d", r.ping.Received, r.ping.Sent)
	}
	return fmt.Sprintf("ok %d/%d avg %.3f ms", r.ping.Received, r.ping.Sent, float64(r.ping.AvgRTT)/float64(time.Millisecond))
}

func tcpCell(r pairResult) string {
	if r.noFamily {
		return "-"
	}
	if r.tcpErr != nil {
		return "FAIL"
	}
	return fmt.Sprintf("ok %.1f MB/s", r.tcp.MBps())
}
