package cni

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/ipam"
)

// Add wires the pod: allocates its address, creates the veth pair, and
// configures both ends. On failure it undoes what it did.
func Add(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkArgs(args, true); err != nil {
		return err
	}
	node, err := readNode(conf.RunDir)
	if err != nil {
		return err
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "weft-cni: open netns", err.Error())
	}
	defer netns.Close()

	store, err := ipam.Open(conf.DataDir)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "weft-cni: open ipam store", err.Error())
	}
	defer store.Close()
	owner := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	// A retried ADD finds its addresses held already; rolling back must
	// then leave them alone, since the first attempt may be in use.
	_, held, err := store.Lookup(owner)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "weft-cni: ipam lookup", err.Error())
	}
	// undo frees what this ADD allocated (everything the owner holds,
	// since it held nothing before).
	undo := func() error {
		if held {
			return nil
		}
		return store.Release(owner)
	}
	// One address per family of the node's pod CIDRs, IPv4 first.
	var podIPs []netip.Addr
	for _, v6 := range []bool{false, true} {
		if _, ok := node.CIDROf(v6); !ok {
			continue
		}
		a, err := allocate(store, node, owner, v6)
		if err != nil {
			if rerr := undo(); rerr != nil {
				return types.NewError(types.ErrIOFailure, "weft-cni: release after a failed allocation", fmt.Sprintf("%v (allocating: %v)", rerr, err))
			}
			return err
		}
		podIPs = append(podIPs, a)
	}
	crashPoint(CrashAfterAlloc)

	res, err := wire(netns, args, node, podIPs)
	if err != nil {
		if rerr := undo(); rerr != nil {
			err = fmt.Errorf("%w (and release %v: %v)", err, podIPs, rerr)
		}
		return types.NewError(types.ErrInternal, "weft-cni: wire pod", err.Error())
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// allocate takes an address from the node's pod CIDR of one family,
// never its gateway.
func allocate(store *ipam.Store, node NodeState, owner ipam.Owner, v6 bool) (netip.Addr, error) {
	var lastErr error
	for _, p := range node.PodCIDRs {
		if p.Addr().Is6() != v6 {
			continue
		}
		a, err := store.Allocate(p, []netip.Addr{node.GatewayOf(v6)}, owner)
		if err == nil {
			return a, nil
		}
		if !errors.Is(err, ipam.ErrExhausted) {
			return netip.Addr{}, types.NewError(types.ErrIOFailure, "weft-cni: allocate address", err.Error())
		}
		lastErr = err
	}
	if lastErr == nil {
		return netip.Addr{}, types.NewError(types.ErrInvalidNetworkConfig, "weft-cni: no pod CIDR to allocate from",
			fmt.Sprintf("no pod CIDR of the family in %v", node.PodCIDRs))
	}
	// Try again later (11): the condition clears as soon as a pod on the
	// node is deleted, and the runtime retries sandbox creation anyway.
	return netip.Addr{}, types.NewError(types.ErrTryAgainLater, "weft-cni: pod CIDR exhausted", lastErr.Error())
}

// wire creates and configures the veth pair and returns the CNI result,
// one IP config per address (one per family). It runs with the calling
// thread in the host (node) netns. On error, the host veth is deleted if
// this call created it; deleting one end of a veth removes the pod end and
// both ends' routes with it.
func wire(netns ns.NetNS, args *skel.CmdArgs, node NodeState, podIPs []netip.Addr) (_ *types100.Result, err error) {
	hostName := HostVethName(args.ContainerID, args.IfName)
	// The name belongs to this attachment alone; if it exists, a previous
	// ADD is still wired and must not be torn down by our rollback.
	if _, lerr := netlinksafe.LinkByName(hostName); lerr == nil {
		return nil, fmt.Errorf("host veth %s already exists", hostName)
	}
	defer func() {
		if err != nil {
			if derr := ip.DelLinkByName(hostName); derr != nil && !errors.Is(derr, ip.ErrLinkNotFound) {
				err = fmt.Errorf("%w (and delete veth %s: %v)", err, hostName, derr)
			}
		}
	}()

	var hostIf, podIf net.Interface
	err = netns.Do(func(hostNS ns.NetNS) error {
		var err error
		hostIf, podIf, err = ip.SetupVethWithName(args.IfName, hostName, node.MTU, "", hostNS)
		if err != nil {
			return fmt.Errorf("create veth %s/%s: %w", args.IfName, hostName, err)
		}
		crashPoint(CrashAfterVeth)
		return configurePod(args.IfName, podIPs, node)
	})
	if err != nil {
		return nil, err
	}
	if err := configureHost(hostName, podIPs); err != nil {
		return nil, err
	}
	crashPoint(CrashAfterHost)

	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
			{Name: podIf.Name, Mac: podIf.HardwareAddr.String(), Mtu: podIf.MTU, Sandbox: args.Netns},
		},
	}
	for _, a := range podIPs {
		gw := podGateway(node, a).AsSlice()
		bits := a.BitLen()
		res.IPs = append(res.IPs, &types100.IPConfig{
			Interface: types100.Int(1),
			Address:   net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)},
			Gateway:   gw,
		})
		res.Routes = append(res.Routes, &types.Route{
			Dst: net.IPNet{IP: make(net.IP, len(gw)), Mask: net.CIDRMask(0, bits)},
			GW:  gw,
		})
	}
	return res, nil
}

// podGateway is the next hop of a pod address's family: the node's IPv4
// gateway on weft0, or PodGateway6 on the host veth.
func podGateway(node NodeState, a netip.Addr) netip.Addr {
	if a.Is6() {
		return PodGateway6
	}
	return node.Gateway
}

// configurePod runs inside the pod netns: the addresses, up, and the
// routes. IPv4: the gateway is on-link (a /32 route), and everything goes
// via it. IPv6: everything goes via PodGateway6, link-local and so on-link
// by itself. IPv6 addresses skip duplicate address detection: the address
// is the allocator's to give, and DAD would keep it tentative (unusable)
// for a second after ADD returns.
func configurePod(ifName string, podIPs []netip.Addr, node NodeState) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("pod link %s: %w", ifName, err)
	}
	for _, a := range podIPs {
		bits := a.BitLen()
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
		if a.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add %v to %s: %w", a, ifName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ifName, err)
	}
	idx := link.Attrs().Index
	for _, a := range podIPs {
		pod := a.AsSlice()
		gw := podGateway(node, a).AsSlice()
		bits := a.BitLen()
		var routes []*netlink.Route
		if a.Is4() {
			routes = append(routes, &netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(bits, bits)}, Scope: netlink.SCOPE_LINK, Src: pod})
		}
		routes = append(routes, &netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: make(net.IP, len(gw)), Mask: net.CIDRMask(0, bits)}, Gw: gw, Src: pod})
		for _, r := range routes {
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("pod route %v: %w", r.Dst, err)
			}
		}
	}
	return nil
}

// configureHost runs in the node netns on the host end. IPv4: proxy_arp
// lets the node answer the pod's ARP for any address it routes, not only
// the gateway on weft0. IPv6: the host end carries PodGateway6 (no DAD:
// the pod may solicit it at once). A host route per address is how the
// node reaches the pod.
func configureHost(hostName string, podIPs []netip.Addr) error {
	link, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host link %s: %w", hostName, err)
	}
	for _, a := range podIPs {
		if a.Is4() {
			if _, err := sysctl.Sysctl("net/ipv4/conf/"+hostName+"/proxy_arp", "1"); err != nil {
				return fmt.Errorf("proxy_arp on %s: %w", hostName, err)
			}
			continue
		}
		gw := &netlink.Addr{IPNet: &net.IPNet{IP: PodGateway6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(link, gw); err != nil {
			return fmt.Errorf("add %v to %s: %w", PodGateway6, hostName, err)
		}
	}
	for _, a := range podIPs {
		bits := a.BitLen()
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)},
			Scope:     netlink.SCOPE_LINK,
		}
		if a.Is6() {
			r.Scope = netlink.SCOPE_UNIVERSE
		}
		// Replace, not add: a route left by a pod whose veth is gone
		// would otherwise block the address's next owner.
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("host route %v dev %s: %w", r.Dst, hostName, err)
		}
	}
	return nil
}

// Del unwires the pod and frees its address. Everything already gone (netns,
// veth, allocation) counts as done, so DEL can be repeated; it needs neither
// the pod netns nor node.json.
func Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkArgs(args, false); err != nil {
		return err
	}
	// The pod end goes with the host end, and the kernel drops routes
	// through a deleted link, so one delete unwires both sides.
	hostName := HostVethName(args.ContainerID, args.IfName)
	if err := ip.DelLinkByName(hostName); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
		// A deleted pod netns takes the veth with it asynchronously; a
		// delete racing that teardown fails, but the link is gone.
		if _, lerr := netlinksafe.LinkByName(hostName); !errors.As(lerr, new(netlink.LinkNotFoundError)) {
			return types.NewError(types.ErrInternal, "weft-cni: delete host veth", err.Error())
		}
	}
	// Release only after the link is gone, so the address is never handed
	// to a new pod while the old one still answers on it.
	store, err := ipam.Open(conf.DataDir)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "weft-cni: open ipam store", err.Error())
	}
	defer store.Close()
	if err := store.Release(ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return types.NewError(types.ErrIOFailure, "weft-cni: release address", err.Error())
	}
	return nil
}

// Check verifies the attachment is still as ADD left it: an address held in
// the store, the pod interface up with that /32, the node's MTU and the
// default route via the gateway; the host veth up with proxy_arp and the /32
// route. A prevResult, when given, must name the same address.
func Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkArgs(args, true); err != nil {
		return err
	}
	node, err := readNode(conf.RunDir)
	if err != nil {
		return err
	}
	store, err := ipam.Open(conf.DataDir)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "weft-cni: open ipam store", err.Error())
	}
	defer store.Close()
	podIPs, err := store.Addresses(ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return types.NewError(types.ErrIOFailure, "weft-cni: ipam lookup", err.Error())
	}
	if len(podIPs) == 0 {
		return types.NewError(types.ErrUnknownContainer, "weft-cni: no address allocated",
			fmt.Sprintf("container %s interface %s", args.ContainerID, args.IfName))
	}
	if conf.RawPrevResult != nil {
		if err := checkPrevResult(&conf, args, podIPs); err != nil {
			return types.NewError(types.ErrInternal, "weft-cni: prevResult mismatch", err.Error())
		}
	}

	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "weft-cni: open netns", err.Error())
	}
	defer netns.Close()
	for _, podIP := range podIPs {
		if err := netns.Do(func(ns.NetNS) error { return checkPod(args.IfName, podIP, node) }); err != nil {
			return types.NewError(types.ErrInternal, "weft-cni: pod check failed", err.Error())
		}
		if err := checkHost(HostVethName(args.ContainerID, args.IfName), podIP, node.MTU); err != nil {
			return types.NewError(types.ErrInternal, "weft-cni: host check failed", err.Error())
		}
	}
	return nil
}

// checkPrevResult checks that each held address is in the prevResult.
func checkPrevResult(conf *Config, args *skel.CmdArgs, podIPs []netip.Addr) error {
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return err
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return err
	}
	for _, podIP := range podIPs {
		if !slices.ContainsFunc(prev.IPs, func(ipc *types100.IPConfig) bool {
			a, ok := netip.AddrFromSlice(ipc.Address.IP)
			return ok && a.Unmap() == podIP
		}) {
			return fmt.Errorf("address %v not in prevResult for %s", podIP, args.IfName)
		}
	}
	return nil
}

func checkPod(ifName string, podIP netip.Addr, node NodeState) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifName, err)
	}
	attrs := link.Attrs()
	if attrs.Flags&net.FlagUp == 0 {
		return fmt.Errorf("link %s is down", ifName)
	}
	if attrs.MTU != node.MTU {
		return fmt.Errorf("link %s mtu %d, want %d", ifName, attrs.MTU, node.MTU)
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", ifName, err)
	}
	want := netip.PrefixFrom(podIP, podIP.BitLen())
	if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return ipNetPrefix(a.IPNet) == want }) {
		return fmt.Errorf("link %s lacks %v", ifName, want)
	}
	routes, err := netlinksafe.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("routes of %s: %w", ifName, err)
	}
	gw := podGateway(node, podIP)
	gwHost := netip.PrefixFrom(gw, gw.BitLen())
	if podIP.Is4() && !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.Dst != nil && ipNetPrefix(r.Dst) == gwHost && r.Scope == netlink.SCOPE_LINK
	}) {
		return fmt.Errorf("no on-link route to gateway %v on %s", gw, ifName)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		g, _ := netip.AddrFromSlice(r.Gw)
		return (r.Dst == nil || ipNetPrefix(r.Dst).Bits() == 0) && g.Unmap() == gw && len(r.Gw) > 0 && (g.Unmap().Is6() == podIP.Is6())
	}) {
		return fmt.Errorf("no default route via %v on %s", gw, ifName)
	}
	return nil
}

func checkHost(hostName string, podIP netip.Addr, mtu int) error {
	link, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host link %s: %w", hostName, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host link %s is down", hostName)
	}
	if link.Attrs().MTU != mtu {
		return fmt.Errorf("host link %s mtu %d, want %d", hostName, link.Attrs().MTU, mtu)
	}
	if podIP.Is4() {
		v, err := sysctl.Sysctl("net/ipv4/conf/" + hostName + "/proxy_arp")
		if err != nil {
			return fmt.Errorf("proxy_arp on %s: %w", hostName, err)
		}
		if strings.TrimSpace(v) != "1" {
			return fmt.Errorf("proxy_arp on %s is %q", hostName, v)
		}
	} else {
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", hostName, err)
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return ipNetPrefix(a.IPNet).Addr() == PodGateway6 }) {
			return fmt.Errorf("host link %s lacks the pods' gateway %v", hostName, PodGateway6)
		}
	}
	routes, err := netlinksafe.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("routes of %s: %w", hostName, err)
	}
	want := netip.PrefixFrom(podIP, podIP.BitLen())
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Dst != nil && ipNetPrefix(r.Dst) == want }) {
		return fmt.Errorf("no route %v dev %s", want, hostName)
	}
	return nil
}

func ipNetPrefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	a = a.Unmap()
	if a.Is4() && ones > 32 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones)
}

// checkArgs rejects what skel lets through: empty values for variables the
// command needs.
func checkArgs(args *skel.CmdArgs, needNetns bool) error {
	var missing []string
	if args.ContainerID == "" {
		missing = append(missing, "CNI_CONTAINERID")
	}
	if args.IfName == "" {
		missing = append(missing, "CNI_IFNAME")
	}
	if needNetns && args.Netns == "" {
		missing = append(missing, "CNI_NETNS")
	}
	if strings.ContainsRune(args.ContainerID, '\n') || strings.ContainsRune(args.IfName, '\n') {
		missing = append(missing, "line break in CNI_CONTAINERID or CNI_IFNAME")
	}
	if len(missing) > 0 {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: missing or bad environment",
			strings.Join(missing, ", "))
	}
	return nil
}

// readNode maps node.json failures to CNI codes: a missing file means weftd
// has not come up yet, which the runtime should retry.
func readNode(runDir string) (NodeState, error) {
	st, err := ReadNodeState(runDir)
	switch {
	case err == nil:
		return st, nil
	case errors.Is(err, os.ErrNotExist):
		return NodeState{}, types.NewError(types.ErrTryAgainLater, "weft-cni: node state not ready (is weftd running?)", err.Error())
	case errors.As(err, new(*fs.PathError)):
		return NodeState{}, types.NewError(types.ErrIOFailure, "weft-cni: read node state", err.Error())
	default:
		return NodeState{}, types.NewError(types.ErrDecodingFailure, "weft-cni: bad node state", err.Error())
	}
}
