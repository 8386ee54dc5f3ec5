package main

// Static peers (--static-peer): nodes that do not gossip, such as a kernel
// vxlan node or a plain WireGuard node. They are routed from the start
// (startDatapath) and on every change of the gossiped set (pipeline.go).

import (
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/encap/vxlan"
	"github.com/weftnet/weft/encap/wireguard"
	"github.com/weftnet/weft/overlay"
)

// statics is the part of weftd's config this file owns; embedded in
// config.
type statics struct {
	StaticPeers staticPeers
}

func (s *statics) registerFlags(fs *flag.FlagSet) {
	fs.Var(&s.StaticPeers, "static-peer", "a peer that does not gossip, e.g. a kernel vxlan node: name=N,addr=IP[:PORT],cidr=CIDR,mac=MAC (repeatable)")
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
