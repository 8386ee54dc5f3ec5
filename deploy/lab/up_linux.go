package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/ipam/diskfile"
)

// ErrRunning is returned by Up when the lab directory describes a lab that
// is still alive.
var ErrRunning = errors.New("lab already running")

// confName is the CNI network configuration file of every lab node.
const confName = "10-weft.conflist"

// readyTimeout bounds how long Up waits for one weftd to write node.json
// and open its socket; weftd does that in well under a second, the rest is
// headroom for a loaded CI machine.
const readyTimeout = 20 * time.Second

// Up builds the lab described by cfg: router, nodes, weftd on every
// non-external node (waiting for each one's node.json and control socket),
// and cfg.PodsPerNode pods on each of them. On any failure it tears down
// what it made and returns the error. Up does not wait for gossip to
// converge; call WaitConverged.
func Up(ctx context.Context, cfg Config) (l *Lab, err error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("lab config: %w", err)
	}
	if err := Preflight(cfg); err != nil {
		return nil, err
	}
	if old, lerr := Load(cfg.Dir); lerr == nil {
		if old.Alive() {
			return nil, fmt.Errorf("%w in %s (prefix %s): run `weftctl lab down --dir %s --prefix %s` first",
				ErrRunning, cfg.Dir, old.Prefix, cfg.Dir, old.Prefix)
		}
		// A stale description of a lab that is gone: its directory is
		// ours to reuse.
		if err := os.RemoveAll(cfg.Dir); err != nil {
			return nil, fmt.Errorf("remove stale lab dir: %w", err)
		}
	}

	l = plan(cfg)
	for _, name := range l.netnsNames() {
		if netnsExists(name) {
			return nil, fmt.Errorf("namespace %s already exists: run `weftctl lab down --prefix %s` to clean up", name, l.Prefix)
		}
	}
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab dir: %w", err)
	}
	if err := l.writeGossipKey(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			fmt.Fprintf(l.log, "lab up failed, tearing down: %v\n", err)
			if derr := l.Down(); derr != nil {
				err = errors.Join(err, fmt.Errorf("teardown: %w", derr))
			}
			l = nil
		}
	}()

	if err := l.makeRouter(ctx); err != nil {
		return l, err
	}
	if err := l.makeGateways(ctx); err != nil {
		return l, err
	}
	for i := range l.Nodes {
		if err := l.makeNode(ctx, &l.Nodes[i]); err != nil {
			return l, err
		}
	}
	if err := l.save(); err != nil {
		return l, err
	}

	// Every node is a seed: a restarted node (StartWeftd) then finds the
	// cluster through whichever node is up, including when the first
	// node is the one restarting. weftd skips its own address.
	var seedAddrs []string
	for _, n := range l.Nodes {
		if !n.External {
			seedAddrs = append(seedAddrs, n.UnderlayAddr)
		}
	}
	seed := strings.Join(seedAddrs, ",")
	for i := range l.Nodes {
		n := &l.Nodes[i]
		if n.External {
			continue
		}
		l.Seed = seed
		if err := l.startWeftd(n, l.seedsFor(n), cfg.WeftdArgs); err != nil {
			return l, err
		}
		// Record the PID at once so that a crash of this process
		// still leaves Cleanup something to find.
		if err := l.save(); err != nil {
			return l, err
		}
	}
	for i := range l.Nodes {
		n := &l.Nodes[i]
		if n.External {
			continue
		}
		if err := l.waitReady(ctx, n); err != nil {
			return l, err
		}
		fmt.Fprintf(l.log, "node %s up (pid %d, %s, %s, pods %s)\n", n.Name, n.WeftdPID, n.Site, n.UnderlayAddr, strings.TrimSuffix(n.PodCIDR+" "+n.PodCIDR6, " "))
	}

	for _, n := range l.Nodes {
		if n.External {
			continue
		}
		for k := 0; k < cfg.PodsPerNode; k++ {
			p, err := l.AddPod(ctx, n.Name)
			if err != nil {
				return l, err
			}
			fmt.Fprintf(l.log, "pod %s on %s: %s\n", p.Name, p.Node, strings.TrimSuffix(p.Address+" "+p.Address6, " "))
		}
	}
	if err := l.save(); err != nil {
		return l, err
	}
	return l, nil
}

// plan computes names and addresses; it touches nothing.
func plan(cfg Config) *Lab {
	l := &Lab{
		Version:     Version,
		Prefix:      cfg.Prefix,
		Dir:         filepath.Clean(cfg.Dir),
		Transport:   cfg.Transport,
		ClusterCIDR: ClusterCIDR,
		Router:      Router{Netns: cfg.Prefix + "-rtr", Sites: slices.Clone(sites[:cfg.Sites])},
		Underlay:    cfg.Underlay,
		Pods:        []Pod{},
		procs:       map[int]*proc{},
		log:         cfg.Log,
		binDir:      cfg.BinDir,
		WeftdArgs:   slices.Clone(cfg.WeftdArgs),
		ClaimCIDRs:  cfg.ClaimCIDRs,
		DualStack:   cfg.DualStack,
	}
	if cfg.DualStack {
		l.ClusterCIDR6 = ClusterCIDR6
	}
	switch cfg.Underlay {
	case UnderlayIPv6:
		l.Router.Sites = slices.Clone(sites6[:cfg.Sites])
	case UnderlayMixed:
		for k := range l.Router.Sites {
			l.Router.Sites[k].Subnet6, l.Router.Sites[k].Gateway6 = sites6[k].Subnet, sites6[k].Gateway
		}
	}
	if cfg.Internet {
		l.Internet = &Internet{Netns: cfg.Prefix + "-inet", Addr: InternetAddr, Gateway: "203.0.113.1"}
	}
	if cfg.Topology == TopologyNAT {
		planNAT(l, cfg)
	}
	for i := 1; i <= cfg.Nodes && cfg.Topology == ""; i++ {
		site := l.Router.Sites[(i-1)%cfg.Sites]
		n := Node{
			Name:         fmt.Sprintf("n%d", i),
			Site:         site.Name,
			UnderlayAddr: nodeAddr(site, i).String(),
			UnderlayIf:   "eth0",
			PodCIDR:      fmt.Sprintf("10.244.%d.0/24", i),
		}
		if cfg.Underlay == UnderlayMixed {
			a6 := nodeAddr(Site{Subnet: site.Subnet6}, i).String()
			switch i % 3 {
			case 2: // IPv6 only
				n.UnderlayAddr = a6
			case 0: // both, IPv4 first
				n.AltUnderlayAddr = a6
			}
		}
		l.Nodes = append(l.Nodes, n)
	}
	for i := range l.Nodes {
		n := &l.Nodes[i]
		if cfg.DualStack {
			n.PodCIDR6 = fmt.Sprintf("fd00:10:244:%x::/64", i+1)
		}
		n.Netns = cfg.Prefix + "-" + n.Name
		n.External = slices.Contains(cfg.External, n.Name)
		if cfg.ClaimCIDRs && !n.External {
			n.PodCIDR, n.PodCIDR6 = "", "" // claimed by weftd at start
		}
		if !n.External {
			d := filepath.Join(l.Dir, n.Name)
			n.RunDir = filepath.Join(d, "run")
			n.StateDir = filepath.Join(d, "state")
			n.ControlSocket = filepath.Join(n.RunDir, "weftd.sock")
			n.LogFile = filepath.Join(d, "weftd.log")
			n.CNIConfDir = filepath.Join(d, "net.d")
			n.CNIBinDir = cfg.BinDir
			n.IPAMDir = filepath.Join(d, "ipam")
			n.WGName = wgName(cfg.Prefix, n.Name)
		}
	}
	return l
}

// nodeAddr is node i's address on site: host 10+i of the site's subnet
// (192.0.2.11), written the same way in an IPv6 site (2001:db8:1::11).
func nodeAddr(site Site, i int) netip.Addr {
	pfx := netip.MustParsePrefix(site.Subnet)
	if pfx.Addr().Is4() {
		a := pfx.Addr().As4()
		a[3] = byte(10 + i)
		return netip.AddrFrom4(a)
	}
	return netip.MustParseAddr(strings.TrimSuffix(pfx.Addr().String(), "::") + "::" + strconv.Itoa(10+i))
}

// is6 reports whether a site or node address is IPv6.
func is6(addr string) bool { return strings.Contains(addr, ":") }

// addrArgs is `ip addr add` for addr/bits on dev inside netns; an IPv6
// address skips duplicate address detection (nodad), which would keep it
// tentative, unusable for binding, for a second or more after it is added.
func addrArgs(netns, addr string, bits int, dev string) []string {
	a := []string{"-n", netns, "addr", "add", fmt.Sprintf("%s/%d", addr, bits), "dev", dev}
	if is6(addr) {
		a = append(a, "nodad")
	}
	return a
}

// routeArgs is `ip route add default via gw dev dev` inside netns, for
// the family of gw.
func routeArgs(netns, gw, dev string) []string {
	if is6(gw) {
		return []string{"-6", "-n", netns, "route", "add", "default", "via", gw, "dev", dev}
	}
	return []string{"-n", netns, "route", "add", "default", "via", gw, "dev", dev}
}

// wgName is the node's WireGuard UAPI name (`wg show <name>`). UAPI
// sockets share /var/run/wireguard across namespaces, so the name carries
// the lab prefix; names are at most 15 bytes.
func wgName(prefix, node string) string {
	if n := prefix + "-" + node; len(n) <= 15 {
		return n
	}
	h := fnv.New32a()
	h.Write([]byte(prefix))
	return fmt.Sprintf("w%06x-%s", h.Sum32()&0xffffff, node)
}

// netnsNames lists the lab's namespaces, pods first, router last: the
// order teardown uses, so each deletion removes leaves before their parent.
func (l *Lab) netnsNames() []string {
	var out []string
	for _, p := range l.Pods {
		out = append(out, p.Netns)
	}
	for _, n := range l.Nodes {
		out = append(out, n.Netns)
	}
	if l.Internet != nil {
		out = append(out, l.Internet.Netns)
	}
	for _, g := range l.Gateways {
		out = append(out, g.Netns)
	}
	return append(out, l.Router.Netns)
}

func bridgeName(s Site) string { return "br-" + s.Name }

func (l *Lab) site(name string) Site {
	for _, s := range l.Router.Sites {
		if s.Name == name {
			return s
		}
	}
	return Site{}
}

func prefixLen(subnet string) int { return netip.MustParsePrefix(subnet).Bits() }

// forwardSysctls are the router's and every node's: forwarding on, and
// rp_filter off (tunnel and asymmetric paths); over an IPv6 underlay
// IPv6 forwarding too, and no duplicate address detection on links made
// later (each address is unique by plan; DAD would only delay it).
func (l *Lab) forwardSysctls() map[string]string {
	kv := map[string]string{
		"net.ipv4.ip_forward":             "1",
		"net.ipv4.conf.all.rp_filter":     "0",
		"net.ipv4.conf.default.rp_filter": "0",
	}
	if l.Underlay == UnderlayIPv6 || l.Underlay == UnderlayMixed {
		kv["net.ipv6.conf.all.forwarding"] = "1"
		kv["net.ipv6.conf.default.accept_dad"] = "0"
		kv["net.ipv6.conf.all.accept_dad"] = "0"
	}
	return kv
}

func (l *Lab) makeRouter(ctx context.Context) error {
	r := l.Router.Netns
	fmt.Fprintf(l.log, "creating router %s\n", r)
	if _, err := ip(ctx, "netns", "add", r); err != nil {
		return err
	}
	if _, err := ip(ctx, "-n", r, "link", "set", "lo", "up"); err != nil {
		return err
	}
	if err := setSysctls(r, l.forwardSysctls()); err != nil {
		return err
	}
	for _, s := range l.Router.Sites {
		br := bridgeName(s)
		cmds := [][]string{
			{"-n", r, "link", "add", br, "type", "bridge"},
			addrArgs(r, s.Gateway, prefixLen(s.Subnet), br),
		}
		if s.Gateway6 != "" {
			cmds = append(cmds, addrArgs(r, s.Gateway6, prefixLen(s.Subnet6), br))
		}
		cmds = append(cmds, []string{"-n", r, "link", "set", br, "up"})
		for _, c := range cmds {
			if _, err := ip(ctx, c...); err != nil {
				return fmt.Errorf("router site %s: %w", s.Name, err)
			}
		}
	}
	return l.makeInternet(ctx)
}

// makeInternet adds the "internet" namespace (Config.Internet): a veth from
// the router, a default route back to it, and nothing toward the pods.
func (l *Lab) makeInternet(ctx context.Context) error {
	in := l.Internet
	if in == nil {
		return nil
	}
	r := l.Router.Netns
	fmt.Fprintf(l.log, "creating internet %s (%s)\n", in.Netns, in.Addr)
	if _, err := ip(ctx, "netns", "add", in.Netns); err != nil {
		return err
	}
	for _, c := range [][]string{
		{"-n", in.Netns, "link", "set", "lo", "up"},
		{"-n", r, "link", "add", "vinet", "type", "veth", "peer", "name", "eth0", "netns", in.Netns},
		{"-n", r, "addr", "add", in.Gateway + "/24", "dev", "vinet"},
		{"-n", r, "link", "set", "vinet", "up"},
		{"-n", in.Netns, "addr", "add", in.Addr + "/24", "dev", "eth0"},
		{"-n", in.Netns, "link", "set", "eth0", "up"},
		{"-n", in.Netns, "route", "add", "default", "via", in.Gateway},
	} {
		if _, err := ip(ctx, c...); err != nil {
			return fmt.Errorf("internet: %w", err)
		}
	}
	return nil
}

func (l *Lab) makeNode(ctx context.Context, n *Node) error {
	fmt.Fprintf(l.log, "creating node %s (%s %s)\n", n.Name, n.Site, n.UnderlayAddr)
	s := l.site(n.Site)
	r := l.Router.Netns
	if _, err := ip(ctx, "netns", "add", n.Netns); err != nil {
		return err
	}
	// Defaults first, so that eth0, created next, inherits them.
	if err := setSysctls(n.Netns, l.forwardSysctls()); err != nil {
		return err
	}
	// Both ends are born inside their namespaces: no link ever exists in
	// the root namespace, even for a moment.
	rtrIf, br := "v"+n.Name, bridgeName(s)
	if g := l.Gateway(n.Site); g != nil {
		// Behind its site's NAT gateway (TopologyNAT).
		r, br, s = g.Netns, "br-lan", Site{Name: g.Site, Subnet: g.LAN, Gateway: g.LANGW}
	}
	cmds := [][]string{
		{"-n", n.Netns, "link", "set", "lo", "up"},
		{"-n", r, "link", "add", rtrIf, "type", "veth", "peer", "name", n.UnderlayIf, "netns", n.Netns},
		{"-n", r, "link", "set", rtrIf, "master", br},
		{"-n", r, "link", "set", rtrIf, "up"},
	}
	for _, a := range []string{n.UnderlayAddr, n.AltUnderlayAddr} {
		if a == "" {
			continue
		}
		subnet := s.Subnet
		if is6(a) && s.Subnet6 != "" {
			subnet = s.Subnet6
		}
		cmds = append(cmds, addrArgs(n.Netns, a, prefixLen(subnet), n.UnderlayIf))
	}
	cmds = append(cmds, []string{"-n", n.Netns, "link", "set", n.UnderlayIf, "up"})
	for _, a := range []string{n.UnderlayAddr, n.AltUnderlayAddr} {
		if a == "" {
			continue
		}
		gw := s.Gateway
		if is6(a) && s.Gateway6 != "" {
			gw = s.Gateway6
		}
		cmds = append(cmds, routeArgs(n.Netns, gw, n.UnderlayIf))
	}
	for _, c := range cmds {
		if _, err := ip(ctx, c...); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := setSysctls(n.Netns, map[string]string{
		"net.ipv4.conf." + n.UnderlayIf + ".rp_filter": "0",
	}); err != nil {
		return err
	}
	if n.External {
		return nil
	}
	for _, d := range []string{n.RunDir, n.StateDir, n.CNIConfDir, n.IPAMDir, filepath.Join(l.Dir, n.Name, "cni-cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	conf, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "weft",
		"plugins": []map[string]any{{
			"type":    "weft-cni",
			"runDir":  n.RunDir,
			"dataDir": n.IPAMDir,
		}},
	}, "", "  ")
	if err != nil {
		return fmt.Errorf("node %s conflist: %w", n.Name, err)
	}
	return diskfile.Write(filepath.Join(n.CNIConfDir, confName), append(conf, '\n'), 0o644)
}

// startWeftd runs weftd inside the node namespace. `ip netns exec` execs
// the daemon in place, so the PID we get is weftd's own; a new session
// keeps terminal signals meant for weftctl away from it, so it outlives
// `weftctl lab up`.
func (l *Lab) startWeftd(n *Node, seed string, extra []string) error {
	bin := filepath.Join(l.binDir, "weftd")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("node %s: weftd: %w (set --bin-dir)", n.Name, err)
	}
	args := []string{"netns", "exec", n.Netns, bin,
		"--name", n.Name,
		"--underlay-addr", strings.TrimSuffix(n.UnderlayAddr+","+n.AltUnderlayAddr, ","),
		"--public-addr", n.PublicAddr,
		"--cluster-cidr", l.clusterCIDRs(),
		"--seeds", seed,
		"--run-dir", n.RunDir,
		"--state-dir", n.StateDir,
		"--site", n.Site,
		"--transport-policy", l.Transport,
		"--wg-name", n.WGName,
	}
	if n.PodCIDR != "" {
		args = append(args, "--pod-cidr", n.PodCIDR)
		if n.PodCIDR6 != "" {
			args = append(args, "--pod-cidr", n.PodCIDR6)
		}
	} else {
		args = append(args, "--node-cidr-size", "24")
	}
	if l.GossipKeyFile != "" {
		args = append(args, "--gossip-key-file", l.GossipKeyFile)
	}
	args = append(args, extra...)
	logf, err := os.OpenFile(n.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command("ip", args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %s: start weftd: %w", n.Name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	n.WeftdPID = cmd.Process.Pid
	l.mu.Lock()
	if l.procs == nil {
		l.procs = map[int]*proc{}
	}
	l.procs[n.WeftdPID] = p
	l.mu.Unlock()
	fmt.Fprintf(l.log, "started weftd on %s (pid %d)\n", n.Name, n.WeftdPID)
	return nil
}

// clusterCIDRs is weftd's --cluster-cidr: both ranges in a dual-stack lab.
func (l *Lab) clusterCIDRs() string {
	if l.ClusterCIDR6 != "" {
		return ClusterCIDR + "," + l.ClusterCIDR6
	}
	return ClusterCIDR
}

// waitReady waits for weftd's node.json (the CNI hand-off) and its control
// socket, failing early if the daemon exits.
func (l *Lab) waitReady(ctx context.Context, n *Node) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	l.mu.Lock()
	p := l.procs[n.WeftdPID]
	l.mu.Unlock()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, jerr := os.Stat(filepath.Join(n.RunDir, "node.json"))
		fi, serr := os.Stat(n.ControlSocket)
		if jerr == nil && serr == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		var exited <-chan struct{}
		if p != nil {
			exited = p.done
		}
		select {
		case <-exited:
			return fmt.Errorf("node %s: weftd exited (%v) before it was ready; log %s:\n%s", n.Name, p.err, n.LogFile, tail(n.LogFile, 20))
		case <-ctx.Done():
			return fmt.Errorf("node %s: weftd not ready (node.json: %v, socket: %v): %w; log %s:\n%s",
				n.Name, jerr, serr, ctx.Err(), n.LogFile, tail(n.LogFile, 20))
		case <-tick.C:
		}
	}
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// reap reports whether pid is a child of this Lab that has exited and been
// waited for.
func (l *Lab) reap(pid int) bool {
	l.mu.Lock()
	p := l.procs[pid]
	l.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Alive reports whether anything of the lab still exists: one of its
// namespaces, or one of its weftd processes.
func (l *Lab) Alive() bool {
	for _, name := range l.netnsNames() {
		if netnsExists(name) {
			return true
		}
	}
	for _, n := range l.Nodes {
		if n.WeftdPID > 0 && alive(n.WeftdPID, l.reap) && (l.ownsProc(n.WeftdPID) || isWeftd(n.WeftdPID)) {
			return true
		}
	}
	return false
}

func (l *Lab) ownsProc(pid int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.procs[pid]
	return ok
}

// Down stops every weftd by PID, kills whatever else runs in the lab's
// namespaces, deletes the namespaces and removes the lab directory. It
// keeps going after an error and returns all of them; calling it twice is
// harmless.
func (l *Lab) Down() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := l.log
	if log == nil {
		log = io.Discard
	}
	var errs []error
	var pids []int
	for _, n := range l.Nodes {
		if n.WeftdPID > 0 && alive(n.WeftdPID, l.reap) && (l.ownsProc(n.WeftdPID) || isWeftd(n.WeftdPID)) {
			pids = append(pids, n.WeftdPID)
		}
	}
	if len(pids) > 0 {
		fmt.Fprintf(log, "stopping weftd %v\n", pids)
	}
	if err := killAll(pids, l.reap); err != nil {
		errs = append(errs, err)
	}
	l.mu.Lock()
	names := l.netnsNames()
	l.mu.Unlock()
	for _, name := range names {
		if !strings.HasPrefix(name, l.Prefix+"-") {
			errs = append(errs, fmt.Errorf("lab.json names namespace %q outside prefix %q; left alone", name, l.Prefix))
			continue
		}
		if err := deleteNetns(ctx, name, l.reap); err != nil {
			errs = append(errs, err)
		}
	}
	if len(names) > 0 {
		fmt.Fprintf(log, "deleted %d namespaces\n", len(names))
	}
	if l.Dir != "" {
		if err := checkDir(l.Dir); err != nil {
			errs = append(errs, err)
		} else if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes what a previous, possibly crashed, lab left behind, by
// name: the weftd processes recorded in <dir>/lab.json (if they are still
// weftd), every namespace named <prefix>-* together with the processes
// inside it, and dir itself. dir may be empty to skip the directory.
func Cleanup(prefix, dir string) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	if dir != "" {
		if err := checkDir(dir); err != nil {
			return err
		}
		if old, err := Load(dir); err == nil {
			var pids []int
			for _, n := range old.Nodes {
				if n.WeftdPID > 0 && alive(n.WeftdPID, nil) && isWeftd(n.WeftdPID) {
					pids = append(pids, n.WeftdPID)
				}
			}
			if err := killAll(pids, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	names, err := listNetns(prefix)
	if err != nil {
		errs = append(errs, err)
	}
	// Longest names first: pods (<prefix>-n1-p1) before nodes before the
	// router, the same leaves-first order Down uses.
	sort.Slice(names, func(i, j int) bool {
		if len(names[i]) != len(names[j]) {
			return len(names[i]) > len(names[j])
		}
		return names[i] < names[j]
	})
	for _, name := range names {
		if err := deleteNetns(ctx, name, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if dir != "" {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
		}
	}
	return errors.Join(errs...)
}
