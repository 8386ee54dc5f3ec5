package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/lab"
)

// Fixed numbers of the testbeds. The underlay and pod addresses come from
// the lab's plan (node i at .(10+i) of its site, pods in 10.244.i.0/24);
// the ones below are the baselines' own.
const (
	iperfPort  = 5201
	vxlanPort  = "8472" // flannel's
	vxlanMTU   = 1450   // 1500 − 50 (outer IPv4 20, UDP 8, VXLAN 8, Ethernet 14)
	wgPort     = "51820"
	wgMTU      = 1420 // 1500 − 60 (IPv4 20, UDP 8, WireGuard 32): wg-quick's default
	podVeth    = "pod1"
	wgUAPIDir  = "/var/run/wireguard"
	readyLimit = 20 * time.Second
)

// bedKind names a testbed; one lab each, prefix <tag><kind>.
type bedKind string

const (
	bedHostGW      bedKind = "hgw" // raw and host-gw
	bedKernelVXLAN bedKind = "kvx"
	bedWireGuardGo bedKind = "wgo"
	bedWeftVXLAN   bedKind = "wvx"
	bedWeftWG      bedKind = "wwg"
	// The dual-stack labs of the IPv6 rows: the IPv4 rows keep labs of
	// their own, exactly as before.
	bedWeftVXLAN6 bedKind = "wv6"
	bedWeftWG6    bedKind = "ww6"
)

var allBeds = []bedKind{bedHostGW, bedKernelVXLAN, bedWireGuardGo, bedWeftVXLAN, bedWeftWG, bedWeftVXLAN6, bedWeftWG6}

// bedOf is the testbed that carries a datapath.
func bedOf(datapath string) bedKind {
	switch datapath {
	case Raw, HostGW:
		return bedHostGW
	case KernelVXLAN:
		return bedKernelVXLAN
	case WireGuardGo:
		return bedWireGuardGo
	case WeftVXLAN:
		return bedWeftVXLAN
	case WeftVXLAN6:
		return bedWeftVXLAN6
	case WeftWireGuard6:
		return bedWeftWG6
	default:
		return bedWeftWG
	}
}

// path is one thing to measure: iperf3 and ping from clientNS to addr,
// with the iperf3 server in serverNS.
type path struct {
	datapath string
	clientNS string
	serverNS string
	addr     string
	// daemons are the datapath's own processes, whose CPU counts with
	// it (weftd, wireguard-go).
	daemons []int
	server  *process
}

// bed is one lab and what this run added to it. Everything it made is
// named <prefix>-* (namespaces) or recorded here (processes, wireguard-go
// sockets), and close removes all of it.
type bed struct {
	kind   bedKind
	prefix string
	dir    string
	tmp    string // keys and logs, inside the run's temporary directory
	lab    *lab.Lab
	procs  []*process
	wgIfs  []string
	paths  []*path
	log    *slog.Logger
}

func newBed(kind bedKind, cfg *Config, tmp string) *bed {
	prefix := cfg.Tag + string(kind)
	return &bed{
		kind:   kind,
		prefix: prefix,
		dir:    filepath.Join(cfg.RunDir, prefix),
		tmp:    tmp,
		log:    cfg.logger().With("bed", prefix),
	}
}

// up builds the lab and the datapath(s) of the bed and starts the iperf3
// servers; it leaves whatever it made for close.
func (b *bed) up(ctx context.Context, cfg *Config, want []string) error {
	lc := lab.Config{
		Prefix: b.prefix,
		Dir:    b.dir,
		BinDir: cfg.BinDir,
		Nodes:  2,
		Sites:  2,
		// The lab validates this even for external-only labs, where
		// nothing uses it.
		Transport: "vxlan",
		Log:       logWriter{b.log},
	}
	switch b.kind {
	case bedWeftVXLAN:
		lc.PodsPerNode = 1
	case bedWeftWG:
		lc.PodsPerNode = 1
		lc.Transport = "wireguard"
	case bedWeftVXLAN6:
		lc.PodsPerNode = 1
		lc.DualStack = true
	case bedWeftWG6:
		lc.PodsPerNode = 1
		lc.Transport = "wireguard"
		lc.DualStack = true
	default:
		lc.External = []string{"n1", "n2"}
	}
	l, err := lab.Up(ctx, lc)
	if err != nil {
		return fmt.Errorf("lab up %s: %w", b.prefix, err)
	}
	b.lab = l
	n1, n2 := l.Node("n1"), l.Node("n2")
	if n1 == nil || n2 == nil {
		return fmt.Errorf("lab %s: nodes n1, n2 missing", b.prefix)
	}

	switch b.kind {
	case bedHostGW:
		if err := b.hostGW(ctx, n1, n2); err != nil {
			return err
		}
	case bedKernelVXLAN:
		if err := b.kernelVXLAN(ctx, n1, n2); err != nil {
			return err
		}
	case bedWireGuardGo:
		if err := b.wireguardGo(ctx, cfg.WireGuardBin, n1, n2); err != nil {
			return err
		}
	case bedWeftVXLAN, bedWeftWG, bedWeftVXLAN6, bedWeftWG6:
		if err := b.weft(ctx, n1, n2); err != nil {
			return err
		}
	}
	var keep []*path
	for _, p := range b.paths {
		for _, w := range want {
			if p.datapath == w {
				keep = append(keep, p)
			}
		}
	}
	b.paths = keep
	for _, p := range b.paths {
		if err := b.startServer(ctx, p); err != nil {
			return err
		}
		if err := waitPing(ctx, p); err != nil {
			return fmt.Errorf("%s: %w", p.datapath, err)
		}
	}
	return nil
}

// hostGW: raw between the node namespaces, and host-gw between pods with
// the pod CIDRs routed over the underlay, in the router too.
func (b *bed) hostGW(ctx context.Context, n1, n2 *lab.Node) error {
	b.paths = append(b.paths, &path{datapath: Raw, clientNS: n1.Netns, serverNS: n2.Netns, addr: n2.UnderlayAddr})
	if err := b.routeViaUnderlay(ctx, n1, n2); err != nil {
		return err
	}
	return b.pods(ctx, HostGW, 1500, n1, n2)
}

func (b *bed) routeViaUnderlay(ctx context.Context, n1, n2 *lab.Node) error {
	r := b.lab.Router.Netns
	var cmds [][]string
	for _, pair := range [][2]*lab.Node{{n1, n2}, {n2, n1}} {
		self, peer := pair[0], pair[1]
		cmds = append(cmds,
			[]string{"ip", "-n", r, "route", "replace", self.PodCIDR, "via", self.UnderlayAddr},
			[]string{"ip", "-n", self.Netns, "route", "replace", peer.PodCIDR, "via", b.gateway(self)},
		)
	}
	return runAll(ctx, cmds)
}

// gateway is the router's address on n's site.
func (b *bed) gateway(n *lab.Node) string {
	for _, s := range b.lab.Router.Sites {
		if s.Name == n.Site {
			return s.Gateway
		}
	}
	return ""
}

// kernelVXLAN lays out flannel.1 as flannel's vxlan backend does: VNI 1,
// port 8472, no learning; the device has the network address of the
// node's CIDR, each remote CIDR is routed via the remote's network
// address on the device, with a permanent neighbour entry for it and a
// static FDB entry that sends its MAC to the remote's underlay address.
func (b *bed) kernelVXLAN(ctx context.Context, n1, n2 *lab.Node) error {
	mac := map[string]string{n1.Name: "0e:00:00:00:01:00", n2.Name: "0e:00:00:00:02:00"}
	var cmds [][]string
	for _, pair := range [][2]*lab.Node{{n1, n2}, {n2, n1}} {
		self, peer := pair[0], pair[1]
		peerNet := strings.TrimSuffix(peer.PodCIDR, "/24")
		selfNet := strings.TrimSuffix(self.PodCIDR, "/24")
		x := []string{"ip", "netns", "exec", self.Netns}
		cmds = append(cmds,
			append(x, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", self.UnderlayAddr, "dev", self.UnderlayIf, "dstport", vxlanPort, "nolearning"),
			append(x, "ip", "link", "set", "flannel.1", "address", mac[self.Name], "mtu", fmt.Sprint(vxlanMTU), "up"),
			append(x, "ip", "addr", "add", selfNet+"/32", "dev", "flannel.1"),
			append(x, "ip", "route", "add", peer.PodCIDR, "via", peerNet, "dev", "flannel.1", "onlink"),
			append(x, "ip", "neigh", "replace", peerNet, "lladdr", mac[peer.Name], "dev", "flannel.1", "nud", "permanent"),
			append(x, "bridge", "fdb", "append", mac[peer.Name], "dev", "flannel.1", "dst", peer.UnderlayAddr),
		)
	}
	if err := runAll(ctx, cmds); err != nil {
		return err
	}
	return b.pods(ctx, KernelVXLAN, vxlanMTU, n1, n2)
}

// wireguardGo runs the standalone wireguard-go in each node namespace
// (foreground, so the PID is its own) and configures it with wg(8). The
// UAPI socket lives on the shared /var/run/wireguard, so the interface
// names differ per node: <prefix>1, <prefix>2.
func (b *bed) wireguardGo(ctx context.Context, bin string, n1, n2 *lab.Node) error {
	if bin == "" {
		return fmt.Errorf("no wireguard-go binary")
	}
	type node struct {
		n        *lab.Node
		ifname   string
		key, pub string
		proc     *process
	}
	nodes := []*node{{n: n1, ifname: b.prefix + "1"}, {n: n2, ifname: b.prefix + "2"}}
	for _, x := range nodes {
		priv, _, err := run(ctx, "", "wg", "genkey")
		if err != nil {
			return err
		}
		x.key = filepath.Join(b.tmp, x.ifname+".key")
		if err := os.WriteFile(x.key, priv, 0o600); err != nil {
			return fmt.Errorf("wireguard key: %w", err)
		}
		pub, err := pipe(ctx, string(priv), "wg", "pubkey")
		if err != nil {
			return err
		}
		x.pub = strings.TrimSpace(pub)

		logf, err := os.Create(filepath.Join(b.tmp, x.ifname+".log"))
		if err != nil {
			return fmt.Errorf("wireguard-go log: %w", err)
		}
		b.wgIfs = append(b.wgIfs, x.ifname)
		x.proc, err = startProcess("wireguard-go "+x.n.Name, logf, x.n.Netns, bin, "-f", x.ifname)
		logf.Close() // the child has its own copy
		if err != nil {
			return err
		}
		b.procs = append(b.procs, x.proc)
		if err := waitFor(ctx, 10*time.Second, func() error {
			if x.proc.exited() {
				return fmt.Errorf("wireguard-go %s exited: %v: %s", x.ifname, x.proc.err, fileTail(logf.Name()))
			}
			if _, err := os.Stat(filepath.Join(wgUAPIDir, x.ifname+".sock")); err != nil {
				return errNotYet
			}
			return nil
		}); err != nil {
			return err
		}
	}
	var cmds [][]string
	for i, x := range nodes {
		peer := nodes[1-i]
		ns := []string{"ip", "netns", "exec", x.n.Netns}
		cmds = append(cmds,
			append(ns, "wg", "set", x.ifname, "listen-port", wgPort, "private-key", x.key,
				"peer", peer.pub, "allowed-ips", peer.n.PodCIDR, "endpoint", peer.n.UnderlayAddr+":"+wgPort),
			append(ns, "ip", "link", "set", x.ifname, "mtu", fmt.Sprint(wgMTU), "up"),
			append(ns, "ip", "route", "add", peer.n.PodCIDR, "dev", x.ifname),
		)
	}
	if err := runAll(ctx, cmds); err != nil {
		return err
	}
	if err := b.pods(ctx, WireGuardGo, wgMTU, n1, n2); err != nil {
		return err
	}
	b.paths[len(b.paths)-1].daemons = []int{nodes[0].proc.pid(), nodes[1].proc.pid()}
	return nil
}

// weft uses the lab's own pods (made by weft-cni) and weftd.
func (b *bed) weft(ctx context.Context, n1, n2 *lab.Node) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.lab.WaitConverged(wctx); err != nil {
		return fmt.Errorf("lab %s: %w", b.prefix, err)
	}
	p1, p2 := b.lab.PodsOn(n1.Name), b.lab.PodsOn(n2.Name)
	if len(p1) == 0 || len(p2) == 0 {
		return fmt.Errorf("lab %s: no pods", b.prefix)
	}
	dp, transport, addr := WeftVXLAN, "vxlan", p2[0].Address
	switch b.kind {
	case bedWeftWG:
		dp, transport = WeftWireGuard, "wireguard"
	case bedWeftVXLAN6:
		dp, addr = WeftVXLAN6, p2[0].Address6
	case bedWeftWG6:
		dp, transport, addr = WeftWireGuard6, "wireguard", p2[0].Address6
	}
	if addr == "" {
		return fmt.Errorf("lab %s: pod %s has no address for %s", b.prefix, p2[0].Name, dp)
	}
	// The figures must be those of the transport named in the row: check
	// what weftd reports it uses toward the other node.
	var seen string
	if err := waitFor(ctx, 10*time.Second, func() error {
		st, err := b.lab.Status(ctx, n1.Name)
		if err != nil {
			return err
		}
		for _, peer := range st.Peers {
			if peer.Name == n2.Name {
				seen = peer.Transport
			}
		}
		if seen != transport {
			return errNotYet
		}
		return nil
	}); err != nil {
		return fmt.Errorf("lab %s: weftd on %s uses transport %q toward %s, want %q: %w", b.prefix, n1.Name, seen, n2.Name, transport, err)
	}
	b.paths = append(b.paths, &path{
		datapath: dp, clientNS: p1[0].Netns, serverNS: p2[0].Netns, addr: addr,
		daemons: []int{n1.WeftdPID, n2.WeftdPID},
	})
	return nil
}

// pods makes one pod on each node the way weft-cni does (Calico/ptp
// style): pod eth0 with 10.244.i.2/32, a link route to the gateway
// 10.244.i.1 and a default via it; host side a veth holding the gateway
// address, with a /32 route to the pod. Only the node's routing differs
// between datapaths. Pod namespaces are <prefix>-<node>-p1, so the lab's
// Cleanup by prefix removes them.
func (b *bed) pods(ctx context.Context, datapath string, mtu int, n1, n2 *lab.Node) error {
	var addrs [2]string
	var netns [2]string
	for i, n := range []*lab.Node{n1, n2} {
		base := strings.TrimSuffix(n.PodCIDR, ".0/24")
		gw, addr := base+".1", base+".2"
		pod := b.prefix + "-" + n.Name + "-p1"
		m := fmt.Sprint(mtu)
		if err := runAll(ctx, [][]string{{"ip", "netns", "add", pod}}); err != nil {
			return err
		}
		if err := setSysctls(pod, map[string]string{
			"net.ipv4.conf.all.rp_filter":     "0",
			"net.ipv4.conf.default.rp_filter": "0",
		}); err != nil {
			return err
		}
		if err := runAll(ctx, [][]string{
			{"ip", "-n", pod, "link", "set", "lo", "up"},
			{"ip", "-n", n.Netns, "link", "add", podVeth, "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", pod},
			{"ip", "-n", n.Netns, "addr", "add", gw + "/32", "dev", podVeth},
			{"ip", "-n", n.Netns, "link", "set", podVeth, "up"},
			{"ip", "-n", n.Netns, "route", "add", addr + "/32", "dev", podVeth, "scope", "link"},
			{"ip", "-n", pod, "addr", "add", addr + "/32", "dev", "eth0"},
			{"ip", "-n", pod, "link", "set", "eth0", "up"},
			{"ip", "-n", pod, "route", "add", gw + "/32", "dev", "eth0", "scope", "link"},
			{"ip", "-n", pod, "route", "add", "default", "via", gw, "dev", "eth0"},
		}); err != nil {
			return err
		}
		addrs[i], netns[i] = addr, pod
	}
	b.paths = append(b.paths, &path{datapath: datapath, clientNS: netns[0], serverNS: netns[1], addr: addrs[1]})
	return nil
}

// startServer runs a persistent iperf3 server in the path's server
// namespace and waits until it listens.
func (b *bed) startServer(ctx context.Context, p *path) error {
	logf, err := os.Create(filepath.Join(b.tmp, p.datapath+"-iperf3.log"))
	if err != nil {
		return fmt.Errorf("iperf3 log: %w", err)
	}
	defer logf.Close()
	srv, err := startProcess("iperf3 server "+p.datapath, logf, p.serverNS, "iperf3", "-s", "-p", fmt.Sprint(iperfPort))
	if err != nil {
		return err
	}
	b.procs = append(b.procs, srv)
	p.server = srv
	return waitFor(ctx, 10*time.Second, func() error {
		if srv.exited() {
			return fmt.Errorf("iperf3 server for %s exited: %v: %s", p.datapath, srv.err, fileTail(logf.Name()))
		}
		if !listening(srv.pid(), iperfPort) {
			return errNotYet
		}
		return nil
	})
}

// waitPing waits until one ping gets through: ARP, and wireguard's
// handshake, happen here rather than in the first measurement.
func waitPing(ctx context.Context, p *path) error {
	var last error
	err := waitFor(ctx, readyLimit, func() error {
		_, _, last = run(ctx, p.clientNS, "ping", "-n", "-c", "1", "-W", "1", p.addr)
		if last != nil {
			return errNotYet
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("no ping %s → %s: %w (last: %v)", p.clientNS, p.addr, err, last)
	}
	return nil
}

// close stops this bed's processes by PID, takes the lab down, and removes
// by prefix the namespaces made here (pods) and what wireguard-go left.
func (b *bed) close() error {
	var errs []error
	for i := len(b.procs) - 1; i >= 0; i-- {
		if err := b.procs[i].stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.lab != nil {
		if err := b.lab.Down(); err != nil {
			errs = append(errs, fmt.Errorf("lab down %s: %w", b.prefix, err))
		}
	}
	if err := lab.Cleanup(b.prefix, b.dir); err != nil {
		errs = append(errs, fmt.Errorf("cleanup %s: %w", b.prefix, err))
	}
	for _, ifname := range b.wgIfs {
		if err := os.Remove(filepath.Join(wgUAPIDir, ifname+".sock")); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

var errNotYet = errors.New("not yet")

// waitFor polls f every 50 ms until it returns something other than
// errNotYet, or d passes.
func waitFor(ctx context.Context, d time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if err := f(); !errors.Is(err, errNotYet) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %v: %w", d, ctx.Err())
		case <-t.C:
		}
	}
}

func runAll(ctx context.Context, cmds [][]string) error {
	for _, c := range cmds {
		if _, _, err := run(ctx, "", c...); err != nil {
			return err
		}
	}
	return nil
}

// pipe runs args with input on stdin and returns stdout.
func pipe(ctx context.Context, input string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// setSysctls writes /proc/sys values on a thread inside netns
// (/proc/sys/net follows the writer's namespace).
func setSysctls(netns string, kv map[string]string) error {
	return ns.WithNetNSPath(filepath.Join("/run/netns", netns), func(ns.NetNS) error {
		for k, v := range kv {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", k, v, netns, err)
			}
		}
		return nil
	})
}

func fileTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return tailString(string(b), 500)
}

// logWriter turns the lab's progress lines into debug records.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(b []byte) (int, error) {
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		w.log.Debug("lab: " + sc.Text())
	}
	return len(b), nil
}

var _ io.Writer = logWriter{}
