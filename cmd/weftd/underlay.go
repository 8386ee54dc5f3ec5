package main

// The underlay address: the one this node gossips and carries traffic on.

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// underlayFlags is the part of weftd's config this file owns; embedded in
// config.
type underlayFlags struct {
	// UnderlayAddr is the node's internal address: bound, and used by
	// the nodes of its site.
	UnderlayAddr netip.Addr
	underlay     string // --underlay-addr or --advertise-addr
	// PublicAddr is where nodes of other sites reach this one (a cloud's
	// 1:1 NAT address); invalid means none (README: Across clouds and NAT
	// has the order of its sources).
	PublicAddr netip.Addr
	public     string // --public-addr
}

func (u *underlayFlags) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&u.underlay, "underlay-addr", "", "internal underlay address: bound, gossiped, and used by the nodes of this node's site (default: the source address of the default route, else the first global IPv4 address)")
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
		if c.UnderlayAddr, err = netip.ParseAddr(c.underlay); err != nil {
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
// nor --advertise-addr is given: the preferred source of the IPv4 default
// route, else the first global address of the interface holding that
// route, else the first global IPv4 address on any up interface. The
// default route's interface is the one traffic to other hosts leaves by,
// which on a multi-homed host is rarely the first one listed.
func selectUnderlay() (netip.Addr, error) {
	a, rerr := defaultRouteAddr()
	if rerr == nil {
		return a, nil
	}
	a, ferr := firstGlobalAddr()
	if ferr != nil {
		return netip.Addr{}, errors.Join(fmt.Errorf("default route: %w", rerr), ferr)
	}
	return a, nil
}

func defaultRouteAddr() (netip.Addr, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if src, ok := netip.AddrFromSlice(r.Src); ok && src.Unmap().IsGlobalUnicast() {
			return src.Unmap(), nil
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap().IsGlobalUnicast() {
				return ip.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, errors.New("no IPv4 default route with a global address")
}

// firstGlobalAddr returns the first global unicast IPv4 address on an up,
// non-loopback interface.
func firstGlobalAddr() (netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list interfaces: %w", err)
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
