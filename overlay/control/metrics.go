package control

// Prometheus metrics (weftd --metrics-addr): every status counter as a
// weft_* metric with a stable name and help text, peers by state and
// transport, and the process's start time and version. The collector reads
// a Status on each scrape, the same answer GET /v1/status gives, so the
// hot path does no work for it: its per-batch counters are only read.

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// counterMetric is how one status counter is exported.
type counterMetric struct {
	name  string
	help  string
	gauge bool // a level, not a running total
}

// counterMetrics maps the status counters to metrics. drop_* counters go
// to weft_drops_total{reason}; a counter missing here is exported as
// weft_<name> with a generic help, so a new one is never lost
// (TestMetricsCoverEveryCounter keeps this table complete).
var counterMetrics = map[string]counterMetric{
	"tx_packets":                {"weft_tx_packets_total", "Packets carried outbound (TUN to wire).", false},
	"tx_bytes":                  {"weft_tx_bytes_total", "Inner bytes carried outbound (TUN to wire).", false},
	"rx_packets":                {"weft_rx_packets_total", "Packets carried inbound (wire to TUN).", false},
	"rx_bytes":                  {"weft_rx_bytes_total", "Inner bytes carried inbound (wire to TUN).", false},
	"icmp_frag_needed_sent":     {"weft_icmp_frag_needed_sent_total", "ICMP fragmentation-needed messages sent back to pods.", false},
	"icmp6_packet_too_big_sent": {"weft_icmp6_packet_too_big_sent_total", "ICMPv6 packet-too-big messages sent back to pods.", false},
	"records_rejected":          {"weft_records_rejected_total", "Gossiped node records that did not decode or validate.", false},
	"records_refused_admission": {"weft_records_refused_admission_total", "Distinct node records refused by admission (conflicts, outside the cluster CIDR).", false},
	"records_refused_now":       {"weft_records_refused", "Peers whose current record admission refuses.", true},
	"peer_joins":                {"weft_peer_joins_total", "Peers that joined gossip.", false},
	"peer_updates":              {"weft_peer_updates_total", "Node record updates received over gossip.", false},
	"peer_leaves":               {"weft_peer_leaves_total", "Peers that left or died.", false},
	"peer_reconnects":           {"weft_peer_reconnects_total", "Reconnections to dead peers that answered again.", false},
	"snapshots_published":       {"weft_snapshots_published_total", "Peer snapshots handed to the router pipeline.", false},
	"seed_join_attempts":        {"weft_seed_join_attempts_total", "Attempts to join the gossip seeds.", false},
	"seed_join_failures":        {"weft_seed_join_failures_total", "Seed join attempts that reached no seed.", false},
	"gossip_encrypted":          {"weft_gossip_encrypted", "1 if gossip is encrypted (keyring), else 0.", true},
	"gossip_keys":               {"weft_gossip_keys", "Gossip keys installed.", true},
	"gossip_tagged_packets":     {"weft_gossip_tagged_packets_total", "Gossip packets received with the sender's name in front (how a node behind NAT is located).", false},
	"gossip_bad_tags":           {"weft_gossip_bad_tags_total", "Gossip packets dropped for a malformed sender tag.", false},
	"gossip_nat_keepalives":     {"weft_gossip_nat_keepalives_total", "Keepalives this node behind NAT sent to public peers of other sites.", false},
	"gossip_no_path":            {"weft_gossip_no_path_total", "Gossip sends skipped: a node behind NAT in another site not seen yet.", false},
}

var (
	dropsDesc       = prometheus.NewDesc("weft_drops_total", "Packets dropped by weftd, by reason (the drop_* counters of weftctl status).", []string{"reason"}, nil)
	peersDesc       = prometheus.NewDesc("weft_peers", "Peers this node knows, by state and transport.", []string{"state", "transport"}, nil)
	startDesc       = prometheus.NewDesc("weft_process_start_time_seconds", "When this weftd started, in seconds since the Unix epoch.", nil, nil)
	wgHandshakeDesc = prometheus.NewDesc("weft_wireguard_last_handshake_seconds", "When this node's WireGuard device last completed a handshake with the peer, in seconds since the Unix epoch (absent before the first).", []string{"peer"}, nil)
	wgRxDesc        = prometheus.NewDesc("weft_wireguard_received_bytes_total", "Bytes this node's WireGuard device received from the peer (since the device started).", []string{"peer"}, nil)
	wgTxDesc        = prometheus.NewDesc("weft_wireguard_sent_bytes_total", "Bytes this node's WireGuard device sent to the peer (since the device started).", []string{"peer"}, nil)
	buildInfoDesc   = prometheus.NewDesc("weft_build_info", "Always 1; the labels say weftd's version and how this process started.", []string{"version", "start"}, nil)
)

// Collector exports a Status as Prometheus metrics.
type Collector struct {
	status  func() Status
	version string
}

// NewCollector returns a collector that reads status on every scrape;
// version is weftd's (weft_build_info).
func NewCollector(status func() Status, version string) *Collector {
	return &Collector{status: status, version: version}
}

// Describe sends the descriptors of what Collect sends.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

// Collect sends one scrape's metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	for name, v := range st.Counters {
		if reason, ok := strings.CutPrefix(name, "drop_"); ok {
			ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(v), reason)
			continue
		}
		m, ok := counterMetrics[name]
		if !ok {
			m = counterMetric{name: "weft_" + name, help: "weftctl status counter " + name + ".", gauge: true}
		}
		kind := prometheus.CounterValue
		if m.gauge {
			kind = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(m.name, m.help, nil, nil), kind, float64(v))
	}
	type key struct{ state, transport string }
	peers := map[key]int{}
	for _, p := range st.Peers {
		peers[key{string(p.State), p.Transport}]++
	}
	for k, n := range peers {
		ch <- prometheus.MustNewConstMetric(peersDesc, prometheus.GaugeValue, float64(n), k.state, k.transport)
	}
	for _, p := range st.Peers {
		if p.WGPublicKey == "" || p.WGRxBytes == 0 && p.WGTxBytes == 0 && p.WGLastHandshake.IsZero() {
			continue
		}
		if !p.WGLastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(wgHandshakeDesc, prometheus.GaugeValue, float64(p.WGLastHandshake.UnixNano())/1e9, p.Name)
		}
		ch <- prometheus.MustNewConstMetric(wgRxDesc, prometheus.CounterValue, float64(p.WGRxBytes), p.Name)
		ch <- prometheus.MustNewConstMetric(wgTxDesc, prometheus.CounterValue, float64(p.WGTxBytes), p.Name)
	}
	if !st.Process.Started.IsZero() {
		ch <- prometheus.MustNewConstMetric(startDesc, prometheus.GaugeValue, float64(st.Process.Started.UnixNano())/1e9)
	}
	collectNetworkPolicy(st.NetworkPolicy, ch)
	ch <- prometheus.MustNewConstMetric(buildInfoDesc, prometheus.GaugeValue, 1, c.version, st.Process.Start)
}
