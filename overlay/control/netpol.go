package control

// NetworkPolicy's part of the status (weftd --network-policy) and its
// metrics.

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// NetworkPolicy is the enforcement on this node.
type NetworkPolicy struct {
	Synced    bool      `json:"synced"`    // applied at least once by this weftd
	Policies  int       `json:"policies"`  // NetworkPolicies in force (cluster-wide, compiled)
	Selecting int       `json:"selecting"` // of them, those selecting a pod on this node
	Rules     int       `json:"rules"`     // nftables rules in force on this node
	Pods      int       `json:"pods"`      // pods known (cluster-wide)
	Applies   uint64    `json:"applies"`   // successful applies of the table
	Failures  uint64    `json:"failures"`  // failed applies
	Invalid   int       `json:"invalid"`   // policies left out (cannot be compiled)
	LastApply time.Time `json:"lastApply,omitzero"`
	// LastApplyMillis is how long the last compile and apply took.
	LastApplyMillis float64 `json:"lastApplyMillis"`
	LastError       string  `json:"lastError,omitempty"`
	// Drops are the packets dropped on this node, by policy.
	Drops []PolicyDrops `json:"drops,omitempty"`
}

// PolicyDrops counts the packets a policy dropped here, by direction.
type PolicyDrops struct {
	Policy  string `json:"policy"` // namespace/name
	Ingress uint64 `json:"ingress"`
	Egress  uint64 `json:"egress"`
}

var (
	npPoliciesDesc = prometheus.NewDesc("weft_netpol_policies", "NetworkPolicies in force (compiled, cluster-wide).", nil, nil)
	npSelectDesc   = prometheus.NewDesc("weft_netpol_policies_selecting", "NetworkPolicies selecting a pod on this node.", nil, nil)
	npRulesDesc    = prometheus.NewDesc("weft_netpol_rules", "nftables rules of NetworkPolicy in force on this node.", nil, nil)
	npAppliesDesc  = prometheus.NewDesc("weft_netpol_applies_total", "Applies of the NetworkPolicy table, by result.", []string{"result"}, nil)
	npInvalidDesc  = prometheus.NewDesc("weft_netpol_invalid_policies", "NetworkPolicies that could not be compiled, left out.", nil, nil)
	npApplyDesc    = prometheus.NewDesc("weft_netpol_last_apply_seconds", "How long the last compile and apply of the NetworkPolicy table took.", nil, nil)
	npDropsDesc    = prometheus.NewDesc("weft_netpol_dropped_packets_total", "Packets dropped on this node by NetworkPolicy, by policy and direction.", []string{"policy", "direction"}, nil)
)

func collectNetworkPolicy(np *NetworkPolicy, ch chan<- prometheus.Metric) {
	if np == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(npPoliciesDesc, prometheus.GaugeValue, float64(np.Policies))
	ch <- prometheus.MustNewConstMetric(npSelectDesc, prometheus.GaugeValue, float64(np.Selecting))
	ch <- prometheus.MustNewConstMetric(npRulesDesc, prometheus.GaugeValue, float64(np.Rules))
	ch <- prometheus.MustNewConstMetric(npAppliesDesc, prometheus.CounterValue, float64(np.Applies), "ok")
	ch <- prometheus.MustNewConstMetric(npAppliesDesc, prometheus.CounterValue, float64(np.Failures), "failed")
	ch <- prometheus.MustNewConstMetric(npInvalidDesc, prometheus.GaugeValue, float64(np.Invalid))
	ch <- prometheus.MustNewConstMetric(npApplyDesc, prometheus.GaugeValue, np.LastApplyMillis/1000)
	for _, d := range np.Drops {
		ch <- prometheus.MustNewConstMetric(npDropsDesc, prometheus.CounterValue, float64(d.Ingress), d.Policy, "ingress")
		ch <- prometheus.MustNewConstMetric(npDropsDesc, prometheus.CounterValue, float64(d.Egress), d.Policy, "egress")
	}
}
