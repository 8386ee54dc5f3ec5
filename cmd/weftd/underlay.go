package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

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
