package main

// The status view: what GET /v1/status answers (weftctl status). The
// control plane (plane.annotate) and Kubernetes mode (kubeMode.annotate)
// overlay their states on it.

import (
	"net"
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

func macString(m [6]byte) string { return net.HardwareAddr(m[:]).String() }

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// status assembles the control API's answer.
func status(c config, dp *datapath, members *peer.Membership) control.Status {
	self := members.Self()
	st := control.Status{
		Self: control.Node{
			Name: self.Name, Site: self.Site, UnderlayAddr: self.Underlay.String(),
			PodCIDRs: prefixStrings(self.PodCIDRs), VTEPMAC: macString(self.VTEPMAC),
			Transport: string(c.Policy), State: peer.StateAlive, MTU: dp.mtu, PublicAddr: addrString(self.Public),
		},
		Counters: dp.router.Stats().Snapshot(),
	}
	st.Self.WGPublicKey, st.Self.WGEndpoint = wgFields(self)
	st.Self.AltUnderlayAddr = altString(self)
	for k, v := range members.Counters() {
		st.Counters[k] = v
	}
	inUse := make(map[string]overlay.Peer)
	via := make(map[string]string) // relayed peer → relay
	for _, p := range dp.router.Peers() {
		inUse[p.Name] = p
		for _, n := range p.Relayed {
			via[n] = p.Name
		}
	}
	for _, p := range members.Peers() {
		transport, path := "-", "-" // not routed: gone, no common transport, or unreachable
		if op, ok := inUse[p.Record.Name]; ok {
			transport, path = op.Transport.String(), pathOf(op, p.Record)
		} else if r, ok := via[p.Record.Name]; ok {
			transport, path = inUse[r].Transport.String(), "relay "+r
		}
		st.Peers = append(st.Peers, control.Node{
			Name: p.Record.Name, Site: p.Record.Site, UnderlayAddr: p.Record.Underlay.String(), PublicAddr: addrString(p.Record.Public),
			PodCIDRs: prefixStrings(p.Record.PodCIDRs), VTEPMAC: macString(p.Record.VTEPMAC),
			Transport: transport, Path: path, State: p.State, LastSeen: p.LastSeen,
		})
		last := &st.Peers[len(st.Peers)-1]
		last.WGPublicKey, last.WGEndpoint = wgFields(p.Record)
		last.AltUnderlayAddr = altString(p.Record)
		if transport == "-" && p.State == peer.StateAlive {
			last.Unreachable = unreachableWhy(self, p.Record)
		}
	}
	if dp.wg != nil {
		if stats, err := dp.wg.Stats(); err == nil {
			for i := range st.Peers {
				k, err := wgtypes.ParseKey(st.Peers[i].WGPublicKey)
				if s, ok := stats[k]; err == nil && ok {
					st.Peers[i].WGLastHandshake, st.Peers[i].WGRxBytes, st.Peers[i].WGTxBytes = s.LastHandshake, s.RxBytes, s.TxBytes
					if s.Endpoint.IsValid() {
						st.Peers[i].WGEndpoint = s.Endpoint.String() // where the device sends now
					}
				}
			}
		}
	}
	for _, p := range c.StaticPeers {
		n := control.Node{
			Name: p.Name, UnderlayAddr: p.Underlay.String(), PodCIDRs: prefixStrings(p.PodCIDRs),
			VTEPMAC: macString(p.VTEPMAC), Transport: p.Transport.String(), State: peer.StateStatic,
		}
		if p.Transport == overlay.TransportWireGuard {
			n.WGPublicKey, n.WGEndpoint = p.WireGuard.PublicKey.String(), p.WireGuard.Endpoint.String()
		}
		st.Peers = append(st.Peers, n)
	}
	return st
}

// altString renders a record's second underlay address, ip:port.
func altString(r peer.Record) string {
	if !r.AltUnderlay.IsValid() {
		return ""
	}
	return netip.AddrPortFrom(r.AltUnderlay, r.Underlay.Port()).String()
}

// unreachableWhy says why a live peer the router does not carry is not
// reached, as far as the reach plan tells (reach.go); admission and
// transport refusals are in weftd's log and counters.
func unreachableWhy(self, r peer.Record) string {
	rc := reachOf(self, r)
	switch {
	case rc.why != "":
		return rc.why
	case rc.noRelay:
		return "both behind NAT in different sites, and no relay"
	}
	return ""
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// pathOf says how the router reaches a routed peer (control.Node.Path).
func pathOf(op overlay.Peer, r peer.Record) string {
	switch {
	case op.Transport == overlay.TransportWireGuard && !op.WireGuard.Endpoint.IsValid():
		return "learned"
	case r.Public.IsValid() && op.Underlay.Addr() == r.Public:
		return "public"
	}
	return "internal"
}

// wgFields renders a record's WireGuard identity for status output.
func wgFields(r peer.Record) (publicKey, endpoint string) {
	if !r.HasWGKey() {
		return "", ""
	}
	return wgtypes.Key(r.WGPublicKey).String(), netip.AddrPortFrom(r.Underlay.Addr(), r.WGPort).String()
}
