package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// HostConfig is the node-side kernel state the router needs: the TUN link
// carries the node's gateway address and one route for the whole cluster
// CIDR. Per-peer churn never touches the kernel; it only swaps the router's
// table.
type HostConfig struct {
	TUN         string       // link name, e.g. weft0
	MTU         int          // pod MTU: underlay MTU minus the transport overhead
	Gateway     netip.Addr   // first host of the node's pod CIDR; also the source for node → remote pod traffic
	ClusterCIDR netip.Prefix // routed to the TUN
	// Gateway6 and ClusterCIDR6 are the IPv6 half of a dual-stack node
	// (invalid: none): the first host of the IPv6 pod CIDR, a /128 on the
	// TUN, and the IPv6 cluster range routed to the TUN from it.
	Gateway6     netip.Addr
	ClusterCIDR6 netip.Prefix
	// TxQueueLen is how many packets the TUN holds for weftd to read
	// (txqueuelen); 0 leaves the kernel's default (500), which a burst
	// overflows while weftd waits for a CPU.
	TxQueueLen int
}

// ConfigureHost applies c idempotently: address, MTU, queue length, link up, the cluster
// route with the gateway as preferred source (so a node talking to a remote
// pod uses an address the remote node accepts as ours), for IPv4 and, on a
// dual-stack node, for IPv6, and forwarding for each.
func ConfigureHost(c HostConfig) error {
	link, err := netlink.LinkByName(c.TUN)
	if err != nil {
		return fmt.Errorf("find link %s: %w", c.TUN, err)
	}
	if err := netlink.LinkSetMTU(link, c.MTU); err != nil {
		return fmt.Errorf("set mtu %d on %s: %w", c.MTU, c.TUN, err)
	}
	if c.TxQueueLen > 0 && link.Attrs().TxQLen != c.TxQueueLen {
		if err := netlink.LinkSetTxQLen(link, c.TxQueueLen); err != nil {
			return fmt.Errorf("set txqueuelen %d on %s: %w", c.TxQueueLen, c.TUN, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", c.TUN, err)
	}
	if err := routeFamily(link, c.TUN, c.Gateway, c.ClusterCIDR); err != nil {
		return err
	}
	if c.Gateway6.IsValid() {
		// Forwarding before the route that brings remote pods' packets.
		// (It also makes the kernel ignore router advertisements on
		// links with accept_ra 1: an underlay configured by SLAAC needs
		// accept_ra 2, README: Dual-stack.)
		if err := writeSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
		if err := routeFamily(link, c.TUN, c.Gateway6, c.ClusterCIDR6); err != nil {
			return err
		}
	}
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	// Packets from remote pods arrive on the TUN and leave on pod veths;
	// strict reverse-path filtering on the TUN would be fine today, but
	// loose mode keeps asymmetric paths (multiple CIDRs, host-network
	// sources) working.
	if err := writeSysctl("net/ipv4/conf/"+c.TUN+"/rp_filter", "2"); err != nil {
		return err
	}
	// A relay (a node that carries traffic between two peers behind NAT)
	// turns packets around on the TUN: in from one peer, out to the other.
	// The kernel would answer each with an ICMP redirect toward the
	// sender's pod, which has no better route to take.
	if err := writeSysctl("net/ipv4/conf/"+c.TUN+"/send_redirects", "0"); err != nil {
		return err
	}
	// weftd writes ICMP "fragmentation needed" into the TUN from the
	// gateway address, which is local; without accept_local the kernel
	// drops those as martians and the pod never learns the path MTU.
	return writeSysctl("net/ipv4/conf/"+c.TUN+"/accept_local", "1")
}

// routeFamily puts gw on the TUN link (a host address; IPv6 without
// duplicate address detection, which a TUN cannot do and which would keep
// the address tentative, unusable as a source, for a second) and routes
// cluster to the link from gw, with the fallback behind it.
func routeFamily(link netlink.Link, name string, gw netip.Addr, cluster netip.Prefix) error {
	bits := gw.BitLen()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
	if gw.Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add address %s to %s: %w", gw, name, err)
	}
	cidr := cluster.Masked()
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: cidr.Addr().AsSlice(), Mask: net.CIDRMask(cidr.Bits(), cidr.Addr().BitLen())},
		Src:       gw.AsSlice(),
		Scope:     netlink.SCOPE_LINK,
	}
	if gw.Is6() {
		route.Scope = netlink.SCOPE_UNIVERSE // IPv6 routes carry no scope
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("route %s dev %s: %w", cidr, name, err)
	}
	return InstallFallback(cidr)
}

// FallbackMetric is the metric of the blackhole route for the cluster CIDR
// that weft leaves on a node: worse than the TUN's route (metric 0), so it
// decides only while the TUN device is gone (deleted by hand, or a node
// booted and weftd not started yet). Pod traffic to other nodes is then
// dropped on the node instead of following the default route to the
// underlay in the clear. The route outlives weftd on purpose.
const FallbackMetric = 4242

// InstallFallback adds (idempotently) the blackhole route for cidr at
// FallbackMetric in the main table.
func InstallFallback(cidr netip.Prefix) error {
	cidr = cidr.Masked()
	route := &netlink.Route{
		Dst:      &net.IPNet{IP: cidr.Addr().AsSlice(), Mask: net.CIDRMask(cidr.Bits(), cidr.Addr().BitLen())},
		Type:     unix.RTN_BLACKHOLE,
		Priority: FallbackMetric,
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("fallback route blackhole %s metric %d: %w", cidr, FallbackMetric, err)
	}
	return nil
}

// OpenTUN creates the TUN device name, or attaches to it when it exists
// (a persistent device a previous weftd left), and makes it persistent:
// the device, its addresses and its route outlive this process, so while
// no weftd runs the kernel queues pod packets for it (txqueuelen) instead
// of routing them elsewhere. A device still held by a process that is
// exiting (its threads close it within tens of milliseconds after a
// SIGKILL) answers EBUSY: OpenTUN retries for up to busyWait.
func OpenTUN(name string, mtu int, busyWait time.Duration) (tun.Device, error) {
	deadline := time.Now().Add(busyWait)
	for {
		dev, err := tun.CreateTUN(name, mtu)
		if err == nil {
			if err := persist(dev); err != nil {
				dev.Close()
				return nil, fmt.Errorf("tun %s: %w", name, err)
			}
			return dev, nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return nil, fmt.Errorf("create tun %s: %w", name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// persist sets TUNSETPERSIST on the device's descriptor, through the raw
// connection so that the descriptor stays non-blocking (File.Fd would make
// it blocking, which the fast path must not see).
func persist(dev tun.Device) error {
	nt, ok := dev.(interface{ File() *os.File })
	if !ok {
		return errors.New("not a kernel TUN device")
	}
	rc, err := nt.File().SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 1) }); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", ierr)
	}
	return nil
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// ErrNotRoot is returned where host configuration needs CAP_NET_ADMIN.
var ErrNotRoot = errors.New("needs CAP_NET_ADMIN (run as root)")

// CheckPrivileges reports ErrNotRoot early, before any half-done setup.
func CheckPrivileges() error {
	if unix.Geteuid() != 0 {
		return ErrNotRoot
	}
	return nil
}

// KernelPathMTU returns the kernel's path MTU toward dst: the MTU of the
// route the kernel would use, including what it learned from ICMP
// "fragmentation needed" messages. 0 means the route carries no MTU.
func KernelPathMTU(dst netip.Addr) (int, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return 0, fmt.Errorf("route get %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return 0, nil
	}
	if routes[0].MTU != 0 {
		return routes[0].MTU, nil
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return 0, nil
	}
	return link.Attrs().MTU, nil
}
