package main

// The underlay address: the one this node gossips and carries traffic on.

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// underlayFlags is the part of weftd's config this file owns; embedded in
// config.
type underlayFlags struct {
	// UnderlayAddr is the node's internal address: bound, and used by
	// the nodes of its site.
	UnderlayAddr netip.Addr
	// AltUnderlayAddr is the node's internal address of the other family
	// (the second of --underlay-addr), invalid for none: peers with only
	// that family reach the node there (reach.go, peer.Record.AltUnderlay).
	AltUnderlayAddr netip.Addr
	underlay        string // --underlay-addr or --advertise-addr
	// PublicAddr is where nodes of other sites reach this one (a cloud's
	// 1:1 NAT address); invalid means none (README: Across clouds and NAT
	// has the order of its sources).
	PublicAddr netip.Addr
	public     string // --public-addr
}

func (u *underlayFlags) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&u.underlay, "underlay-addr", "", "internal underlay address, IPv4 or IPv6, or one of each comma-separated: bound, gossiped, and used by the nodes of this node's site (default: the source address of the IPv4 default route, else of the IPv6 one, else the first global address, IPv4 first)")
	fs.StringVar(&u.underlay, "advertise-addr", "", "alias of --underlay-addr")
	fs.StringVar(&u.public, "public-addr", "", "public address where nodes of other sites reach this one, on the same ports (a cloud's 1:1 NAT address: elastic IP, external IP); not bound. Default: none, unless the Node has the weft.dev/public-addr annotation or an ExternalIP (Kubernetes); a node without one is reached through the NAT mappings it keeps open, or a relay")
}

// checkUnderlay parses --underlay-addr, or picks an address when it is
// not given, except in Kubernetes mode: there the default is the Node's
// InternalIP, known once the API server answers (kube.go).
func (c *config) checkUnderlay() error {
	var err error
	switch {
	case c.underlay != "":
		if c.UnderlayAddr, c.AltUnderlayAddr, err = parseUnderlay(c.underlay); err != nil {
			return fmt.Errorf("--underlay-addr: %w", err)
		}
	case c.kubeMode():
	default:
		if c.UnderlayAddr, err = selectUnderlay(); err != nil {
			return fmt.Errorf("--underlay-addr not given and none found: %w", err)
		}
	}
	if c.public != "" {
		if c.PublicAddr, err = parsePublic(c.public); err != nil {
			return fmt.Errorf("--public-addr: %w", err)
		}
	}
	return nil
}

// parseUnderlay parses --underlay-addr: one address, or two of different
// families separated by a comma.
func parseUnderlay(s string) (first, second netip.Addr, err error) {
	parts := strings.Split(s, ",")
	if len(parts) > 2 {
		return first, second, fmt.Errorf("%q: at most two addresses, one per family", s)
	}
	var addrs []netip.Addr
	for _, p := range parts {
		a, err := netip.ParseAddr(strings.Trim(strings.TrimSpace(p), "[]"))
		if err != nil {
			return first, second, err
		}
		a = a.Unmap()
		if err := usableUnderlay(a); err != nil {
			return first, second, err
		}
		addrs = append(addrs, a)
	}
	if len(addrs) == 2 {
		if addrs[0].Is4() == addrs[1].Is4() {
			return first, second, fmt.Errorf("%s and %s: two addresses must be of different families (one IPv4, one IPv6)", addrs[0], addrs[1])
		}
		second = addrs[1]
	}
	return addrs[0], second, nil
}

// parsePublic parses a public address (flag or annotation): a unicast
// address, not loopback, link-local or unspecified.
func parsePublic(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	a = a.Unmap()
	if !a.IsGlobalUnicast() || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s is not a global unicast address", a)
	}
	return a, nil
}

// selectUnderlay picks the underlay address when neither --underlay-addr
// nor --advertise-addr is given: the preferred source of the default
// route, else the first global address of the interface holding that
// route, else the first global address on any up interface; IPv4 first at
// each step, then IPv6, so a dual-stack host keeps the IPv4 underlay it
// had and a host with only IPv6 gets its IPv6 address. The default
// route's interface is the one traffic to other hosts leaves by, which on
// a multi-homed host is rarely the first one listed.
func selectUnderlay() (netip.Addr, error) {
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		a, err := defaultRouteAddr(fam)
		if err == nil {
			return a, nil
		}
		errs = append(errs, fmt.Errorf("default route: %w", err))
	}
	a, err := firstGlobalAddr()
	if err == nil {
		return a, nil
	}
	return netip.Addr{}, errors.Join(append(errs, err)...)
}

// familyName names a netlink address family in messages.
func familyName(fam int) string {
	if fam == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

// defaultRouteAddr is the address of fam the default route of fam
// leaves with (see selectUnderlay).
func defaultRouteAddr(fam int) (netip.Addr, error) {
	routes, err := netlink.RouteList(nil, fam)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list %s routes: %w", familyName(fam), err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if src, ok := netip.AddrFromSlice(r.Src); ok && usableUnderlay(src.Unmap()) == nil {
			return src.Unmap(), nil
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(link, fam)
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			// A tentative or deprecated IPv6 address cannot be bound or
			// should not be picked for new traffic.
			if ad.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DEPRECATED|unix.IFA_F_DADFAILED) != 0 {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ad.IP); ok && usableUnderlay(ip.Unmap()) == nil {
				return ip.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("no %s default route with a global address", familyName(fam))
}

// firstGlobalAddr returns the first global unicast address on an up,
// non-loopback interface, IPv4 before IPv6.
func firstGlobalAddr() (netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list interfaces: %w", err)
	}
	var first6 netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || usableUnderlay(ip.Unmap()) != nil {
				continue
			}
			if ip = ip.Unmap(); ip.Is4() {
				return ip, nil
			}
			if !first6.IsValid() {
				first6 = ip
			}
		}
	}
	if first6.IsValid() {
		return first6, nil
	}
	return netip.Addr{}, errors.New("no global IPv4 or IPv6 address on any up interface")
}

// usableUnderlay says why a cannot be an underlay address, or nil. It must
// be reachable from other hosts without a zone: memberlist and the node
// record carry no zone, so an IPv6 link-local address (fe80::/10) is out.
// Loopback is allowed, for single-host tests.
func usableUnderlay(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("no address")
	case a.Zone() != "":
		return fmt.Errorf("%s: an address with a zone is not carried in gossip", a)
	case a.IsUnspecified(), a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return fmt.Errorf("%s is not a unicast address", a)
	case a.IsLinkLocalUnicast():
		return fmt.Errorf("%s is link-local: peers on other links cannot reach it", a)
	case a.IsLoopback():
		return nil
	case !a.IsGlobalUnicast():
		return fmt.Errorf("%s is not a global unicast address", a)
	}
	return nil
}
