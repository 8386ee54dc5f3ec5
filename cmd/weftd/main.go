// Command weftd is weft's node daemon: it gossips this node's record,
// learns every peer's pod CIDRs, and carries pod traffic between the TUN
// device and the underlay in VXLAN-format UDP.
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/cni"
	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/encap/wireguard"
	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

// config is weftd's whole configuration, filled from flags.
type config struct {
	Name         string
	UnderlayAddr netip.Addr
	PodCIDR      netip.Prefix
	ClusterCIDR  netip.Prefix
	Seeds        []string
	GossipPort   int
	VXLANPort    int
	VNI          uint32
	UnderlayMTU  int
	TUN          string
	TUNQueueLen  int
	RemoteCsum   bool // --remote-checksum
	RunDir       string
	StateDir     string
	Site         string
	VTEPMAC      [6]byte // zero: derived from the gateway address
	StaticPeers  []overlay.Peer
	LogLevel     slog.Level
	Procs        int // --procs: 0 means procsDefault

	Policy    overlay.Policy
	WireGuard bool   // this node runs a WireGuard device (capability)
	WGPort    int    // WireGuard UDP port
	WGName    string // UAPI name: `wg show <WGName>`
	WGKeyFile string // private key, mode 0600, created on first start

	controlPlane // gossip keys, node-CIDR claims (gossip.go)
	kubeFlags    // Kubernetes mode, health endpoints (kube.go)
}

// staticPeers collects repeated --static-peer flags.
type staticPeers []overlay.Peer

func (s *staticPeers) String() string { return fmt.Sprint(len(*s), " static peers") }
func (s *staticPeers) Set(v string) error {
	p, err := parseStaticPeer(v)
	if err != nil {
		return err
	}
	*s = append(*s, p)
	return nil
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	host := defaultName() // $NODE_NAME, else the hostname (kube.go)
	var (
		c                                          config
		underlay, podCIDR, clusterCIDR, seeds, mac string
		vni                                        uint
		statics                                    staticPeers
		level                                      string
		policy                                     string
		noWireGuard                                bool
	)
	fs.StringVar(&c.Name, "name", host, "node name, unique in the cluster (default $NODE_NAME, else the hostname); the Node name in Kubernetes mode")
	fs.StringVar(&underlay, "underlay-addr", "", "underlay address to gossip and carry traffic on (default: the source address of the default route, else the first global IPv4 address)")
	fs.StringVar(&underlay, "advertise-addr", "", "alias of --underlay-addr")
	fs.StringVar(&podCIDR, "pod-cidr", "", "this node's pod CIDR, e.g. 10.244.1.0/24 (required unless --node-cidr-size)")
	fs.StringVar(&clusterCIDR, "cluster-cidr", "10.244.0.0/16", "the cluster's pod CIDR; routed to the TUN device")
	fs.StringVar(&seeds, "seeds", "", "comma-separated gossip seeds, host or host:port; one live node is enough")
	fs.IntVar(&c.GossipPort, "gossip-port", 7946, "memberlist TCP and UDP port")
	fs.IntVar(&c.VXLANPort, "vxlan-port", vxlan.DefaultPort, "VXLAN UDP port (flannel uses 8472)")
	fs.UintVar(&vni, "vni", 1, "VXLAN network identifier (1..16777215)")
	fs.IntVar(&c.UnderlayMTU, "underlay-mtu", 1500, "MTU of the underlay path; the pod MTU is this minus the VXLAN overhead")
	fs.StringVar(&c.TUN, "tun", "weft0", "name of the TUN device")
	fs.BoolVar(&c.RemoteCsum, "remote-checksum", true, "announce and use VXLAN remote checksum offload between weft nodes: TCP segments travel with partial checksums that the receiver finishes (README: Wire format)")
	fs.IntVar(&c.TUNQueueLen, "tun-queue-len", 2000, "packets the TUN device queues for weftd (txqueuelen; the kernel's default 500 drops UDP bursts, README: Benchmarks)")
	fs.StringVar(&c.RunDir, "run-dir", "/run/weft", "directory for the control socket and the CNI hand-off file node.json")
	fs.StringVar(&c.StateDir, "state-dir", "/var/lib/weft", "directory for state that survives restarts")
	fs.StringVar(&c.Site, "site", "", "site label gossiped with the node record")
	fs.StringVar(&mac, "vtep-mac", "", "VTEP MAC address (default: 0a:58 followed by the gateway IPv4 address)")
	fs.Var(&statics, "static-peer", "a peer that does not gossip, e.g. a kernel vxlan node: name=N,addr=IP[:PORT],cidr=CIDR,mac=MAC (repeatable)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&c.Procs, "procs", 0, "CPUs weftd's Go code runs on at once (GOMAXPROCS); 0: $GOMAXPROCS if set, else half the CPUs available to weftd, at least 1 (README: Benchmarks)")
	fs.StringVar(&policy, "transport-policy", string(overlay.PolicyVXLAN), "cluster-wide transport: vxlan, wireguard, or wireguard-across-sites (VXLAN inside a site, WireGuard between sites)")
	fs.BoolVar(&noWireGuard, "no-wireguard", false, "run no WireGuard device even if the policy asks for one (peers then reach this node over VXLAN)")
	fs.IntVar(&c.WGPort, "wg-port", wireguard.DefaultPort, "WireGuard UDP port")
	fs.StringVar(&c.WGName, "wg-name", "weft-wg", "WireGuard UAPI name, for `wg show` (unique per host: the socket is /var/run/wireguard/<name>.sock)")
	fs.StringVar(&c.WGKeyFile, "wg-key-file", "", "WireGuard private key file (default <state-dir>/wireguard.key; created with mode 0600)")
	c.controlPlane.registerFlags(fs)
	c.kubeFlags.registerFlags(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var err error
	if err := c.LogLevel.UnmarshalText([]byte(level)); err != nil {
		return c, fmt.Errorf("--log-level: %w", err)
	}
	if c.TUNQueueLen < 1 || c.TUNQueueLen > 1<<20 {
		return c, fmt.Errorf("--tun-queue-len %d out of range 1..%d", c.TUNQueueLen, 1<<20)
	}
	if c.Procs < 0 || c.Procs > 4096 {
		return c, fmt.Errorf("--procs %d out of range 0..4096", c.Procs)
	}
	if c.Name == "" {
		return c, errors.New("--name is required (no hostname)")
	}
	if err := c.checkKube(podCIDR != ""); err != nil {
		return c, err
	}
	if podCIDR == "" && c.NodeCIDRBits == 0 && !c.kubeMode() {
		return c, errors.New("--pod-cidr is required (or --node-cidr-size to claim one over gossip)")
	}
	if c.ClusterCIDR, err = netip.ParsePrefix(clusterCIDR); err != nil {
		return c, fmt.Errorf("--cluster-cidr: %w", err)
	}
	if podCIDR != "" {
		if c.PodCIDR, err = netip.ParsePrefix(podCIDR); err != nil {
			return c, fmt.Errorf("--pod-cidr: %w", err)
		}
		if !c.PodCIDR.Addr().Is4() || c.PodCIDR != c.PodCIDR.Masked() || c.PodCIDR.Bits() > 30 {
			return c, fmt.Errorf("--pod-cidr %s: want a masked IPv4 prefix of /30 or larger", c.PodCIDR)
		}
		if !c.ClusterCIDR.Contains(c.PodCIDR.Addr()) || c.ClusterCIDR.Bits() > c.PodCIDR.Bits() {
			return c, fmt.Errorf("--pod-cidr %s is not inside --cluster-cidr %s", c.PodCIDR, c.ClusterCIDR)
		}
	}
	if err := c.checkControlPlane(podCIDR != ""); err != nil {
		return c, err
	}
	if underlay != "" {
		if c.UnderlayAddr, err = netip.ParseAddr(underlay); err != nil {
			return c, fmt.Errorf("--underlay-addr: %w", err)
		}
	} else if c.kubeMode() {
		// The Node's InternalIP, once the API server answers (kube.go).
	} else if c.UnderlayAddr, err = selectUnderlay(); err != nil {
		return c, fmt.Errorf("--underlay-addr not given and none found: %w", err)
	}
	if vni < 1 || vni > vxlan.MaxVNI {
		return c, fmt.Errorf("--vni %d out of range 1..%d", vni, vxlan.MaxVNI)
	}
	c.VNI = uint32(vni)
	for _, p := range []struct {
		name string
		v    int
	}{{"--gossip-port", c.GossipPort}, {"--vxlan-port", c.VXLANPort}} {
		if p.v < 1 || p.v > 65535 {
			return c, fmt.Errorf("%s %d out of range", p.name, p.v)
		}
	}
	if c.UnderlayMTU < 576+vxlan.OverheadIPv4 || c.UnderlayMTU > 65535 {
		return c, fmt.Errorf("--underlay-mtu %d out of range %d..65535", c.UnderlayMTU, 576+vxlan.OverheadIPv4)
	}
	if seeds != "" {
		c.Seeds = strings.Split(seeds, ",")
	}
	if mac != "" {
		if c.VTEPMAC, err = parseMAC(mac); err != nil {
			return c, fmt.Errorf("--vtep-mac: %w", err)
		}
	} else if c.kubeMode() {
		// Derived from the Node's pod CIDR once known (kube.go).
	} else if c.claimMode() {
		c.VTEPMAC = claimMAC(c.UnderlayAddr)
	} else {
		c.VTEPMAC = macFromAddr(gatewayOf(c.PodCIDR))
	}
	c.StaticPeers = statics
	if c.Policy, err = overlay.ParsePolicy(policy); err != nil {
		return c, fmt.Errorf("--transport-policy: %w", err)
	}
	c.WireGuard = c.Policy != overlay.PolicyVXLAN && !noWireGuard
	if c.WGPort < 1 || c.WGPort > 65535 || c.WGPort == c.VXLANPort {
		return c, fmt.Errorf("--wg-port %d: out of range or equal to --vxlan-port", c.WGPort)
	}
	if c.WGName == "" || len(c.WGName) > 15 || strings.ContainsAny(c.WGName, "/ ") {
		return c, fmt.Errorf("--wg-name %q: want 1..15 characters without '/' or spaces", c.WGName)
	}
	if c.WGKeyFile == "" {
		c.WGKeyFile = filepath.Join(c.StateDir, "wireguard.key")
	}
	return c, nil
}

// parseStaticPeer parses name=N,addr=IP[:PORT],cidr=CIDR[,cidr=CIDR],mac=MAC
// for a VXLAN peer, or name=N,addr=IP,cidr=CIDR,wg-key=BASE64[,wg-port=P]
// for a WireGuard peer (a plain WireGuard node, for instance).
func parseStaticPeer(v string) (overlay.Peer, error) {
	var p overlay.Peer
	wgPort := uint16(wireguard.DefaultPort)
	for _, kv := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return p, fmt.Errorf("static peer %q: %q is not key=value", v, kv)
		}
		switch k {
		case "name":
			p.Name = val
		case "addr":
			if ap, err := netip.ParseAddrPort(val); err == nil {
				p.Underlay = ap
			} else if a, err2 := netip.ParseAddr(val); err2 == nil {
				p.Underlay = netip.AddrPortFrom(a, vxlan.DefaultPort)
			} else {
				return p, fmt.Errorf("static peer %q: addr: %w", v, err2)
			}
		case "cidr":
			c, err := netip.ParsePrefix(val)
			if err != nil {
				return p, fmt.Errorf("static peer %q: cidr: %w", v, err)
			}
			p.PodCIDRs = append(p.PodCIDRs, c.Masked())
		case "mac":
			m, err := parseMAC(val)
			if err != nil {
				return p, fmt.Errorf("static peer %q: mac: %w", v, err)
			}
			p.VTEPMAC = m
		case "wg-key":
			k, err := wgtypes.ParseKey(val)
			if err != nil {
				return p, fmt.Errorf("static peer %q: wg-key: %w", v, err)
			}
			p.Transport = overlay.TransportWireGuard
			p.WireGuard.PublicKey = k
		case "wg-port":
			n, err := strconv.ParseUint(val, 10, 16)
			if err != nil || n == 0 {
				return p, fmt.Errorf("static peer %q: wg-port %q: want 1..65535", v, val)
			}
			wgPort = uint16(n)
		default:
			return p, fmt.Errorf("static peer %q: unknown key %q", v, k)
		}
	}
	if p.Transport == overlay.TransportWireGuard {
		if p.Name == "" || !p.Underlay.IsValid() || len(p.PodCIDRs) == 0 {
			return p, fmt.Errorf("static peer %q: name, addr, cidr and wg-key are all required", v)
		}
		p.WireGuard.Endpoint = netip.AddrPortFrom(p.Underlay.Addr(), wgPort)
		p.WireGuard.AllowedIPs = p.PodCIDRs
		return p, nil
	}
	if p.Name == "" || !p.Underlay.IsValid() || len(p.PodCIDRs) == 0 || p.VTEPMAC == ([6]byte{}) {
		return p, fmt.Errorf("static peer %q: name, addr, cidr and mac are all required", v)
	}
	return p, nil
}

func parseMAC(s string) ([6]byte, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return [6]byte{}, err
	}
	if len(hw) != 6 {
		return [6]byte{}, fmt.Errorf("%s is not a 48-bit MAC", s)
	}
	return [6]byte(hw), nil
}

// vxlanSourcePorts is how many sockets (outer UDP source ports) VXLAN
// sends spread flows over.
const vxlanSourcePorts = 8

// gatewayOf is the first host of an IPv4 pod CIDR: it lives on the TUN and
// every pod on the node routes through it.
func gatewayOf(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// macFromAddr derives a stable, locally administered MAC from an IPv4
// address, so a restarted node keeps its VTEP MAC without any state.
func macFromAddr(a netip.Addr) [6]byte {
	b := a.As4()
	return [6]byte{0x0a, 0x58, b[0], b[1], b[2], b[3]}
}

// firstGlobalAddr returns the first global unicast IPv4 address on an up,
// non-loopback interface.
func firstGlobalAddr() (netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() && ip.IsGlobalUnicast() {
					return ip.Unmap(), nil
				}
			}
		}
	}
	return netip.Addr{}, errors.New("no global IPv4 address on any up interface")
}

func main() {
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
	if err := run(ctx, c, log); err != nil {
		log.Error("weftd failed", "err", err)
		os.Exit(1)
	}
}

// vxlanCaps are the capability bits of this node's VXLAN side.
func (c *config) vxlanCaps() uint32 {
	caps := peer.CapVXLAN
	if c.RemoteCsum {
		caps |= peer.CapRemoteChecksum
	}
	return caps
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

func run(ctx context.Context, c config, log *slog.Logger) error {
	if err := overlay.CheckPrivileges(); err != nil {
		return err
	}
	for _, dir := range []string{c.RunDir, c.StateDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	keys, err := gossipKeys(c, log)
	if err != nil {
		return err
	}
	var members *peer.Membership // joined early only in claim mode (claim.go)
	if c.claimMode() {
		if members, c.PodCIDR, err = joinAndClaim(ctx, c, keys, log); err != nil {
			return err
		}
		defer members.Close()
	}
	// Kubernetes mode: the pod CIDR, seeds and underlay come from the
	// Node objects; the health endpoints start here in every mode.
	ctx, kube, err := startKube(ctx, &c, log)
	if err != nil {
		return err
	}
	defer kube.Close()
	mtu := c.Policy.PodMTU(c.UnderlayMTU, c.WireGuard)
	gw := gatewayOf(c.PodCIDR)

	dev, err := tun.CreateTUN(c.TUN, mtu)
	if err != nil {
		return fmt.Errorf("create tun %s: %w", c.TUN, err)
	}
	if err := overlay.ConfigureHost(overlay.HostConfig{TUN: c.TUN, MTU: mtu, Gateway: gw, ClusterCIDR: c.ClusterCIDR, TxQueueLen: c.TUNQueueLen}); err != nil {
		dev.Close()
		return err
	}
	var wg *wireguard.Device
	if c.WireGuard {
		key, err := wireguard.LoadOrCreateKey(c.WGKeyFile)
		if err != nil {
			dev.Close()
			return err
		}
		wg, err = wireguard.New(wireguard.Config{Name: c.WGName, PrivateKey: key, ListenPort: uint16(c.WGPort), TUN: dev, Logger: log})
		if err != nil {
			dev.Close()
			return err
		}
		defer wg.Close()
	}
	rcfg := overlay.Config{VNI: c.VNI, LocalMAC: c.VTEPMAC, PodCIDRs: []netip.Prefix{c.PodCIDR}, PathMTU: overlay.KernelPathMTU, ICMPSource: gw, Logger: log}
	if wg != nil {
		rcfg.WireGuard = wg
	}
	sender, err := vxlan.NewSender(vxlanSourcePorts)
	if err != nil {
		dev.Close()
		return err
	}
	defer sender.Close()
	rcfg.Sender = sender
	router := overlay.New(rcfg, dev, conn.NewStdNetBind())
	if err := router.Start(uint16(c.VXLANPort)); err != nil {
		dev.Close()
		return err
	}
	defer router.Close()
	if wg != nil {
		wg.SetDivert(router.Divert()) // the device reads the TUN from now on
	}
	if err := router.SetPeers(c.StaticPeers); err != nil {
		return err
	}

	self := peer.Record{
		Name:       c.Name,
		Underlay:   netip.AddrPortFrom(c.UnderlayAddr, uint16(c.VXLANPort)),
		PodCIDRs:   []netip.Prefix{c.PodCIDR},
		VTEPMAC:    c.VTEPMAC,
		Site:       c.Site,
		Caps:       c.vxlanCaps(),
		Generation: uint64(time.Now().UnixNano()),
	}
	if wg != nil {
		self.Caps |= peer.CapWireGuard
		self.WGPublicKey = wg.PublicKey()
		self.WGPort = uint16(c.WGPort)
	}
	if members == nil {
		if members, err = peer.Join(membershipConfig(c, keys, log), self); err != nil {
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
		NodeName: c.Name, PodCIDRs: []netip.Prefix{c.PodCIDR}, Gateway: gw, MTU: mtu, ClusterCIDR: c.ClusterCIDR,
	}); err != nil {
		return err
	}

	sock := filepath.Join(c.RunDir, "weftd.sock")
	served := make(chan error, 1)
	go func() {
		served <- control.Serve(ctx, sock, control.API{
			Status: func() control.Status {
				st := status(c, mtu, members, router)
				plane.annotate(&st)
				kube.annotate(&st)
				return st
			},
			Actions: plane.withKeyActions(map[string]func(map[string]string) (any, error){
				"wireguard/rotate-key": func(map[string]string) (any, error) { return rotateKey(c, wg, members) },
			}),
		})
	}()
	log.Info("weftd running", "name", c.Name, "underlay", self.Underlay, "podCIDR", c.PodCIDR, "tun", c.TUN, "mtu", mtu, "vni", c.VNI, "socket", sock, "procs", runtime.GOMAXPROCS(0))

	chooser := newTransportChooser(c.Policy, log)
	updates := kube.peerUpdates(ctx, members) // filtered by the Node set in Kubernetes mode
	for {
		select {
		case snap := <-updates:
			snap, err := plane.admit(snap)
			if err != nil {
				return plane.giveUp(err)
			}
			peers := append([]overlay.Peer(nil), c.StaticPeers...)
			for _, p := range snap {
				op, err := chooser.peer(members.Self(), p.Record)
				if err != nil {
					log.Warn("peer unreachable: no common transport", "peer", p.Record.Name, "err", err)
					continue
				}
				peers = append(peers, op)
			}
			if err := router.SetPeers(peers); err != nil {
				log.Warn("some peers skipped", "err", err)
			}
			log.Info("peer set changed", "peers", len(peers))
		case err := <-served:
			if err != nil {
				return fmt.Errorf("control socket: %w", err)
			}
		case <-ctx.Done():
			log.Info("leaving the cluster")
			if err := members.Leave(2 * time.Second); err != nil {
				log.Warn("graceful leave failed", "err", err)
			}
			return nil
		}
	}
}

func macString(m [6]byte) string { return net.HardwareAddr(m[:]).String() }

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// status assembles the control API's answer.
func status(c config, mtu int, members *peer.Membership, router *overlay.Router) control.Status {
	self := members.Self()
	st := control.Status{
		Self: control.Node{
			Name: self.Name, Site: self.Site, UnderlayAddr: self.Underlay.String(),
			PodCIDRs: prefixStrings(self.PodCIDRs), VTEPMAC: macString(self.VTEPMAC),
			Transport: string(c.Policy), State: "alive", MTU: mtu,
		},
		Counters: router.Stats().Snapshot(),
	}
	st.Self.WGPublicKey, st.Self.WGEndpoint = wgFields(self)
	for k, v := range members.Counters() {
		st.Counters[k] = v
	}
	inUse := make(map[string]overlay.Transport)
	for _, p := range router.Peers() {
		inUse[p.Name] = p.Transport
	}
	for _, p := range members.Peers() {
		transport := "-" // not routed: gone, or no common transport
		if t, ok := inUse[p.Record.Name]; ok {
			transport = t.String()
		}
		st.Peers = append(st.Peers, control.Node{
			Name: p.Record.Name, Site: p.Record.Site, UnderlayAddr: p.Record.Underlay.String(),
			PodCIDRs: prefixStrings(p.Record.PodCIDRs), VTEPMAC: macString(p.Record.VTEPMAC),
			Transport: transport, State: p.State, LastSeen: p.LastSeen,
		})
		last := &st.Peers[len(st.Peers)-1]
		last.WGPublicKey, last.WGEndpoint = wgFields(p.Record)
	}
	for _, p := range c.StaticPeers {
		n := control.Node{
			Name: p.Name, UnderlayAddr: p.Underlay.String(), PodCIDRs: prefixStrings(p.PodCIDRs),
			VTEPMAC: macString(p.VTEPMAC), Transport: p.Transport.String(), State: "static",
		}
		if p.Transport == overlay.TransportWireGuard {
			n.WGPublicKey, n.WGEndpoint = p.WireGuard.PublicKey.String(), p.WireGuard.Endpoint.String()
		}
		st.Peers = append(st.Peers, n)
	}
	return st
}
