package main

// The datapath: the TUN device and its host routes, the WireGuard device
// (when the policy asks for one), the VXLAN sender and the router, started
// in that order by startDatapath and stopped by one Close.

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/encap/wireguard"
	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/peer"
)

// datapathFlags is the part of weftd's config this file owns; embedded in
// config.
type datapathFlags struct {
	VXLANPort   int
	VNI         uint32
	UnderlayMTU int
	TUN         string
	TUNQueueLen int
	RemoteCsum  bool    // --remote-checksum
	VTEPMAC     [6]byte // zero: derived from the gateway address

	Policy    overlay.Policy
	WireGuard bool   // this node runs a WireGuard device (capability)
	WGPort    int    // WireGuard UDP port
	WGName    string // UAPI name: `wg show <WGName>`
	WGKeyFile string // private key, mode 0600, created on first start

	vni         uint   // --vni, checked into VNI
	mac, policy string // --vtep-mac, --transport-policy
	noWireGuard bool
}

func (d *datapathFlags) registerFlags(fs *flag.FlagSet) {
	fs.IntVar(&d.VXLANPort, "vxlan-port", vxlan.DefaultPort, "VXLAN UDP port (flannel uses 8472)")
	fs.UintVar(&d.vni, "vni", 1, "VXLAN network identifier (1..16777215)")
	fs.IntVar(&d.UnderlayMTU, "underlay-mtu", 1500, "MTU of the underlay path; the pod MTU is this minus the largest overhead of the transports in use over the underlay's family (VXLAN 50, WireGuard 60 over IPv4; 70 and 80 over IPv6)")
	fs.StringVar(&d.TUN, "tun", "weft0", "name of the TUN device")
	fs.BoolVar(&d.RemoteCsum, "remote-checksum", true, "announce and use VXLAN remote checksum offload between weft nodes: TCP segments travel with partial checksums that the receiver finishes (README: Wire format)")
	fs.IntVar(&d.TUNQueueLen, "tun-queue-len", 16000, "packets the TUN device queues for weftd (txqueuelen): what arrives while weftd is off the CPU or restarting waits here instead of being dropped; a full queue of MTU-sized packets holds about 40 MB of kernel memory (README: Benchmarks)")
	fs.StringVar(&d.mac, "vtep-mac", "", "VTEP MAC address (default: 0a:58 followed by the gateway IPv4 address)")
	fs.StringVar(&d.policy, "transport-policy", string(overlay.PolicyVXLAN), "cluster-wide transport: vxlan, wireguard, or wireguard-across-sites (VXLAN inside a site, WireGuard between sites)")
	fs.BoolVar(&d.noWireGuard, "no-wireguard", false, "run no WireGuard device even if the policy asks for one (peers then reach this node over VXLAN)")
	fs.IntVar(&d.WGPort, "wg-port", wireguard.DefaultPort, "WireGuard UDP port")
	fs.StringVar(&d.WGName, "wg-name", "weft-wg", "WireGuard UAPI name, for `wg show` (unique per host: the socket is /var/run/wireguard/<name>.sock)")
	fs.StringVar(&d.WGKeyFile, "wg-key-file", "", "WireGuard private key file (default <state-dir>/wireguard.key; created with mode 0600)")
}

// checkDatapath checks the datapath flags; called after checkNode and
// checkUnderlay, as the VTEP MAC derives from the pod CIDR or the
// underlay address.
func (c *config) checkDatapath() error {
	if c.TUNQueueLen < 1 || c.TUNQueueLen > 1<<20 {
		return fmt.Errorf("--tun-queue-len %d out of range 1..%d", c.TUNQueueLen, 1<<20)
	}
	if c.vni < 1 || c.vni > vxlan.MaxVNI {
		return fmt.Errorf("--vni %d out of range 1..%d", c.vni, vxlan.MaxVNI)
	}
	c.VNI = uint32(c.vni)
	if c.VXLANPort < 1 || c.VXLANPort > 65535 {
		return fmt.Errorf("--vxlan-port %d out of range", c.VXLANPort)
	}
	if c.UnderlayMTU < 576+vxlan.OverheadIPv4 || c.UnderlayMTU > 65535 {
		return fmt.Errorf("--underlay-mtu %d out of range %d..65535", c.UnderlayMTU, 576+vxlan.OverheadIPv4)
	}
	var err error
	switch {
	case c.mac != "":
		if c.VTEPMAC, err = parseMAC(c.mac); err != nil {
			return fmt.Errorf("--vtep-mac: %w", err)
		}
	case c.kubeMode():
		// Derived from the Node's pod CIDR once known (kube.go).
	case c.claimMode():
		c.VTEPMAC = claimMAC(c.UnderlayAddr)
	default:
		c.VTEPMAC = macFromAddr(gatewayOf(c.PodCIDR))
	}
	if c.Policy, err = overlay.ParsePolicy(c.policy); err != nil {
		return fmt.Errorf("--transport-policy: %w", err)
	}
	c.WireGuard = c.Policy != overlay.PolicyVXLAN && !c.noWireGuard
	if c.WGPort < 1 || c.WGPort > 65535 || c.WGPort == c.VXLANPort {
		return fmt.Errorf("--wg-port %d: out of range or equal to --vxlan-port", c.WGPort)
	}
	if c.WGName == "" || len(c.WGName) > 15 || strings.ContainsAny(c.WGName, "/ ") {
		return fmt.Errorf("--wg-name %q: want 1..15 characters without '/' or spaces", c.WGName)
	}
	if c.WGKeyFile == "" {
		c.WGKeyFile = filepath.Join(c.StateDir, "wireguard.key")
	}
	return nil
}

// vxlanSourcePorts is how many sockets (outer UDP source ports) VXLAN
// sends spread flows over.
const vxlanSourcePorts = 8

// datapath is the running datapath. Close stops what startDatapath
// started, in reverse order.
type datapath struct {
	router  *overlay.Router
	wg      *wireguard.Device // nil without WireGuard
	mtu     int               // the pod MTU
	gateway netip.Addr        // the pods' gateway, on the TUN
	// gateway6 is the IPv6 gateway address on the TUN (dual-stack;
	// invalid: none): the source of ICMPv6 errors and of this node's
	// traffic to remote pods. Pods route via fe80::1 (package cni).
	gateway6 netip.Addr
	// vxlanSocket is the VXLAN socket a hand-off passed, until start.
	vxlanSocket *os.File

	closers []func() error // in start order
}

// startDatapath creates the TUN device for c.PodCIDR (or adopts the one a
// running weftd hands off, tk), configures the host for it, and builds the
// WireGuard device and the router; start then starts the router once its
// first peer table is in. resuming: that table comes from this node's
// previous weftd (wireguard.Config.Resuming). On error, everything started
// so far is stopped again.
//
// In a hand-off the donor reads on until the last moment: with WireGuard
// it pauses here, just before the port is bound; with VXLAN alone in
// start, once this router reads.
func startDatapath(c config, log *slog.Logger, tk *takeover, resuming bool) (dp *datapath, err error) {
	dp = &datapath{mtu: c.podMTU(), gateway: gatewayOf(c.PodCIDR)}
	if c.PodCIDR6.IsValid() {
		dp.gateway6 = gatewayOf(c.PodCIDR6)
	}
	defer func() {
		if err != nil {
			dp.Close()
			dp = nil
		}
	}()
	dev, err := openTUN(c, dp.mtu, tk)
	if err != nil {
		return dp, err
	}
	// Closing the TUN twice is harmless (the router closes it too), and
	// this closer covers a failure before the router owns it. The device
	// persists: closing detaches, its route keeps pod traffic in it.
	dp.closers = append(dp.closers, dev.Close)
	if err := overlay.ConfigureHost(overlay.HostConfig{TUN: c.TUN, MTU: dp.mtu, Gateway: dp.gateway, ClusterCIDR: c.ClusterCIDR,
		Gateway6: dp.gateway6, ClusterCIDR6: c.ClusterCIDR6, TxQueueLen: c.TUNQueueLen}); err != nil {
		return dp, err
	}
	stopMasq, err := startMasquerade(c, log)
	if err != nil {
		return dp, err
	}
	dp.closers = append(dp.closers, stopMasq)
	rcfg := overlay.Config{VNI: c.VNI, LocalMAC: c.VTEPMAC, PodCIDRs: c.podCIDRs(), PathMTU: overlay.KernelPathMTU,
		ICMPSource: dp.gateway, ICMPSource6: dp.gateway6, Logger: log}
	sender, err := vxlan.NewSender(vxlanSourcePorts)
	if err != nil {
		return dp, err
	}
	dp.closers = append(dp.closers, sender.Close)
	rcfg.Sender = sender
	if c.WireGuard {
		key, err := wireguard.LoadOrCreateKey(c.WGKeyFile)
		if err != nil {
			return dp, err
		}
		// In a hand-off the device starts on a port of the kernel's
		// choosing while the donor forwards, and moves to --wg-port
		// once the donor has paused and closed it.
		wcfg := wireguard.Config{Name: c.WGName, PrivateKey: key, ListenPort: uint16(c.WGPort), TUN: dev, Logger: log,
			Resuming: resuming, LateUAPI: tk != nil}
		if tk != nil {
			wcfg.ListenPort = 0
		}
		if dp.wg, err = wireguard.New(wcfg); err != nil {
			return dp, err
		}
		dp.closers = append(dp.closers, dp.wg.Close)
		if tk != nil {
			if err := tk.pause(); err != nil {
				return dp, err
			}
			if err := dp.wg.SetListenPort(uint16(c.WGPort)); err != nil {
				return dp, err
			}
		}
		rcfg.WireGuard = dp.wg
	}
	dp.vxlanSocket = tk.file(fdVXLAN)
	rcfg.VXLANSocket = dp.vxlanSocket
	dp.router = overlay.New(rcfg, dev, conn.NewStdNetBind())
	return dp, nil
}

// start starts the router's loops (the peer table is in: Start's loops
// forward at once) and, in a VXLAN-only hand-off, then pauses the donor.
func (dp *datapath) start(c config, tk *takeover) error {
	if dp.vxlanSocket != nil {
		defer dp.vxlanSocket.Close() // the router's receiver holds its own
	}
	if err := dp.router.Start(uint16(c.VXLANPort)); err != nil {
		return err
	}
	dp.closers = append(dp.closers, dp.router.Close)
	if dp.wg != nil {
		dp.wg.SetDivert(dp.router.Divert()) // the device reads the TUN from now on
		return nil
	}
	return tk.pause()
}

// openTUN opens the TUN device, or adopts the descriptor a hand-off
// passed (the same device, still attached: no packet is dropped).
func openTUN(c config, mtu int, tk *takeover) (tun.Device, error) {
	f := tk.file(fdTUN)
	if f == nil {
		return overlay.OpenTUN(c.TUN, mtu, 2*time.Second)
	}
	dev, err := tun.CreateTUNFromFile(f, mtu)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("hand-off: adopt tun: %w", err)
	}
	if name, err := dev.Name(); err != nil || name != c.TUN {
		dev.Close()
		return nil, fmt.Errorf("hand-off: the passed device is %q, --tun is %q", name, c.TUN)
	}
	return dev, nil
}

// Close stops the router, the sender, the WireGuard device and the TUN,
// in that order. It is idempotent.
func (dp *datapath) Close() error {
	var errs []error
	for i := len(dp.closers) - 1; i >= 0; i-- {
		errs = append(errs, dp.closers[i]())
	}
	dp.closers = nil
	return errors.Join(errs...)
}

// podMTU is the pod MTU: the underlay MTU minus the overhead of the
// transports in use, over this node's underlay family, or over IPv6 when
// it has an address in each (the larger overhead: one MTU for all peers).
func (c *config) podMTU() int {
	return c.Policy.PodMTU(c.UnderlayMTU, c.WireGuard, c.UnderlayAddr.Is6() || c.AltUnderlayAddr.Is6())
}

// vxlanCaps are the capability bits of this node's VXLAN side.
func (c *config) vxlanCaps() uint32 {
	caps := peer.CapVXLAN
	if c.RemoteCsum {
		caps |= peer.CapRemoteChecksum
	}
	return caps
}

// gatewayOf is the first host of a pod CIDR: it lives on the TUN; every
// pod on the node routes through the IPv4 one.
func gatewayOf(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// macFromAddr derives a stable, locally administered MAC from an IPv4
// address, so a restarted node keeps its VTEP MAC without any state.
func macFromAddr(a netip.Addr) [6]byte {
	b := a.As4()
	return [6]byte{0x0a, 0x58, b[0], b[1], b[2], b[3]}
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
