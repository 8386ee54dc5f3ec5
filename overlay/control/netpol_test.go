package control

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestNetworkPolicyMetrics: the enforcement's status becomes weft_netpol_*
// metrics, drops by policy and direction; without it there are none.
func TestNetworkPolicyMetrics(t *testing.T) {
	st := Status{Counters: map[string]uint64{}, NetworkPolicy: &NetworkPolicy{
		Synced: true, Policies: 3, Selecting: 1, Rules: 7, Applies: 4, LastApplyMillis: 2,
		Drops: []PolicyDrops{{Policy: "a/deny", Ingress: 5, Egress: 1}},
	}}
	c := NewCollector(func() Status { return st }, "v")
	want := `
# HELP weft_netpol_dropped_packets_total Packets dropped on this node by NetworkPolicy, by policy and direction.
# TYPE weft_netpol_dropped_packets_total counter
weft_netpol_dropped_packets_total{direction="egress",policy="a/deny"} 1
weft_netpol_dropped_packets_total{direction="ingress",policy="a/deny"} 5
# HELP weft_netpol_rules nftables rules of NetworkPolicy in force on this node.
# TYPE weft_netpol_rules gauge
weft_netpol_rules 7
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "weft_netpol_dropped_packets_total", "weft_netpol_rules"); err != nil {
		t.Error(err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Error(err)
	}
	st.NetworkPolicy = nil
	if n := testutil.CollectAndCount(c, "weft_netpol_rules"); n != 0 {
		t.Errorf("%d weft_netpol_rules without enforcement", n)
	}
}
