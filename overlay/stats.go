package overlay

import "sync/atomic"

// verdict is what the packet path decided for one packet.
type verdict uint8

const (
	pass verdict = iota
	dropNoRoute
	dropNotIP
	dropSendError
	dropShort
	dropFlags
	dropVNI
	dropEtherType
	dropInnerIP
	dropDstMAC
	dropUnknownPeer
	dropSpoofedSource
	dropTunWrite
	dropWrongTransport
	dropTooBig
	dropBadOffload
	dropInnerLength
	dropNotLocal
	dropBadChecksum
	numVerdicts
)

// verdictNames are the stable counter names shown by `weftctl status`.
var verdictNames = [numVerdicts]string{
	pass:               "",
	dropNoRoute:        "drop_no_route",         // outbound: no peer owns the destination
	dropNotIP:          "drop_not_ip",           // outbound: not an IPv4/IPv6 packet
	dropSendError:      "drop_send_error",       // outbound: the UDP send failed
	dropShort:          "drop_short",            // inbound: shorter than VXLAN + Ethernet headers
	dropFlags:          "drop_bad_flags",        // inbound: VXLAN flags other than I (and RCO from a non-weft peer)
	dropVNI:            "drop_bad_vni",          // inbound: VNI is not ours
	dropEtherType:      "drop_bad_ethertype",    // inbound: inner frame is not IPv4/IPv6
	dropInnerIP:        "drop_bad_inner_ip",     // inbound: inner IP header malformed (version, IHL, fragment fields, TCP offset)
	dropDstMAC:         "drop_bad_dst_mac",      // inbound: inner Ethernet dst is not our VTEP
	dropUnknownPeer:    "drop_unknown_peer",     // inbound: sender is no live peer
	dropSpoofedSource:  "drop_spoofed_source",   // inbound: inner source outside the sender's pod CIDRs
	dropTunWrite:       "drop_tun_write",        // inbound: the TUN write failed
	dropWrongTransport: "drop_wrong_transport",  // inbound: VXLAN from a peer we reach over WireGuard
	dropTooBig:         "drop_too_big",          // outbound: does not fit the path MTU after encapsulation, or a segment longer than a packet buffer
	dropBadOffload:     "drop_bad_offload",      // a TUN packet (outbound) or coalesced run (inbound) that does not match its virtio (offload) header
	dropInnerLength:    "drop_bad_inner_length", // inbound: inner IP/UDP lengths disagree with the bytes present (truncated, padded, jumbo)
	dropNotLocal:       "drop_not_local",        // inbound: inner destination outside this node's pod CIDRs
	dropBadChecksum:    "drop_bad_checksum",     // inbound: inner IPv4 header checksum wrong
}

// Stats counts what the router moved and what it dropped, by reason.
type Stats struct {
	TxPackets, TxBytes atomic.Uint64 // outbound: TUN → wire
	RxPackets, RxBytes atomic.Uint64 // inbound: wire → TUN
	ICMPFragNeeded     atomic.Uint64 // "fragmentation needed" sent back to pods
	ICMPPacketTooBig   atomic.Uint64 // ICMPv6 "packet too big" sent back to pods
	drops              [numVerdicts]atomic.Uint64
}

// batchCounts is what one loop iteration adds to Stats, once per batch.
type batchCounts struct {
	packets, bytes uint64
	drops          [numVerdicts]uint64
}

func (c *batchCounts) reset() { *c = batchCounts{} }

// Drops returns the count for one drop reason by its status name.
func (s *Stats) Drops(name string) uint64 {
	for v, n := range verdictNames {
		if n == name && v != int(pass) {
			return s.drops[v].Load()
		}
	}
	return 0
}

func (s *Stats) addDrops(c *batchCounts) {
	for v := verdict(1); v < numVerdicts; v++ {
		if c.drops[v] != 0 {
			s.drops[v].Add(c.drops[v])
		}
	}
}

// Snapshot returns every counter by its stable name.
func (s *Stats) Snapshot() map[string]uint64 {
	m := map[string]uint64{
		"tx_packets": s.TxPackets.Load(),
		"tx_bytes":   s.TxBytes.Load(),
		"rx_packets": s.RxPackets.Load(),
		"rx_bytes":   s.RxBytes.Load(),

		"icmp_frag_needed_sent":     s.ICMPFragNeeded.Load(),
		"icmp6_packet_too_big_sent": s.ICMPPacketTooBig.Load(),
	}
	for v := verdict(1); v < numVerdicts; v++ {
		m[verdictNames[v]] = s.drops[v].Load()
	}
	return m
}
