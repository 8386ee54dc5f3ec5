package control

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weftnet/weft/overlay"
	"github.com/weftnet/weft/peer"
)

func sampleStatus() Status {
	return Status{
		Counters: map[string]uint64{"tx_packets": 7, "drop_no_route": 3, "drop_not_local": 1, "gossip_keys": 2, "something_new": 5},
		Peers: []Node{
			{Name: "n2", State: peer.StateAlive, Transport: "vxlan"},
			{Name: "n3", State: peer.StateAlive, Transport: "wireguard", WGPublicKey: "k3", WGLastHandshake: time.Unix(1700000100, 0), WGRxBytes: 4096, WGTxBytes: 1024},
			{Name: "n4", State: peer.StateDead, Transport: "-"},
		},
		Process: Process{Started: time.Unix(1700000000, 0), Start: "warm"},
	}
}

// TestMetricsFromStatus: counters, drops by reason, peers by state and
// transport, start time and build info, in the exposition format a
// Prometheus server reads, and lint-clean.
func TestMetricsFromStatus(t *testing.T) {
	c := NewCollector(sampleStatus, "v1.2.3")
	want := `
# HELP weft_drops_total Packets dropped by weftd, by reason (the drop_* counters of weftctl status).
# TYPE weft_drops_total counter
weft_drops_total{reason="no_route"} 3
weft_drops_total{reason="not_local"} 1
# HELP weft_peers Peers this node knows, by state and transport.
# TYPE weft_peers gauge
weft_peers{state="alive",transport="vxlan"} 1
weft_peers{state="alive",transport="wireguard"} 1
weft_peers{state="dead",transport="-"} 1
# HELP weft_tx_packets_total Packets carried outbound (TUN to wire).
# TYPE weft_tx_packets_total counter
weft_tx_packets_total 7
# HELP weft_gossip_keys Gossip keys installed.
# TYPE weft_gossip_keys gauge
weft_gossip_keys 2
# HELP weft_something_new weftctl status counter something_new.
# TYPE weft_something_new gauge
weft_something_new 5
# HELP weft_wireguard_last_handshake_seconds When this node's WireGuard device last completed a handshake with the peer, in seconds since the Unix epoch (absent before the first).
# TYPE weft_wireguard_last_handshake_seconds gauge
weft_wireguard_last_handshake_seconds{peer="n3"} 1.7000001e+09
# HELP weft_wireguard_received_bytes_total Bytes this node's WireGuard device received from the peer (since the device started).
# TYPE weft_wireguard_received_bytes_total counter
weft_wireguard_received_bytes_total{peer="n3"} 4096
# HELP weft_wireguard_sent_bytes_total Bytes this node's WireGuard device sent to the peer (since the device started).
# TYPE weft_wireguard_sent_bytes_total counter
weft_wireguard_sent_bytes_total{peer="n3"} 1024
# HELP weft_process_start_time_seconds When this weftd started, in seconds since the Unix epoch.
# TYPE weft_process_start_time_seconds gauge
weft_process_start_time_seconds 1.7e+09
# HELP weft_build_info Always 1; the labels say weftd's version and how this process started.
# TYPE weft_build_info gauge
weft_build_info{start="warm",version="v1.2.3"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	if err := prometheus.NewPedanticRegistry().Register(c); err != nil {
		t.Fatal(err)
	}
}

// TestMetricsCoverEveryCounter: every counter the router reports has a
// named metric (drops through weft_drops_total), none only the generic
// fallback.
func TestMetricsCoverEveryCounter(t *testing.T) {
	var s overlay.Stats
	for name := range s.Snapshot() {
		if strings.HasPrefix(name, "drop_") {
			continue
		}
		if _, ok := counterMetrics[name]; !ok {
			t.Errorf("router counter %s has no metric in counterMetrics", name)
		}
	}
}
