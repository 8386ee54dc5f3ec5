package e2e

// NetworkPolicy across the two nodes (weftd --network-policy, on in the
// DaemonSet), as one subtest of TestKubernetes:
//
//	t.Run("NetworkPolicy", c.networkPolicy)
//
// A server on n2 in namespace np-a, clients on the same node and on the
// other one, in np-a and np-b. Each case applies policies and checks what
// the clients reach (agnhost connect, over kubectl exec): default deny,
// podSelector, namespaceSelector with podSelector, ipBlock with except, a
// named port, an endPort range, UDP, egress, and that the node itself
// still reaches its pods (kubelet probes). The cluster is dual-stack: the
// server's IPv6 address is probed beside its IPv4 one where a policy
// selects by pod (no policy, default deny, a pod selector, removal). The drop counters show up in
// weftctl status and the metrics.

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

type npPod struct {
	ns, name, node string
	labels         map[string]string
}

func (c *cluster) npPod(t *testing.T, p npPod) string {
	t.Helper()
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": p.name, "namespace": p.ns, "labels": p.labels},
		"spec": map[string]any{
			"nodeSelector":                  map[string]string{"kubernetes.io/hostname": p.node},
			"tolerations":                   []map[string]string{{"operator": "Exists"}},
			"terminationGracePeriodSeconds": 1,
			"containers": []any{map[string]any{
				"name": "c", "image": agnhostUpstreamImage, "imagePullPolicy": "Never",
				"args": []string{"netexec", "--http-port=8080", "--udp-port=8081"},
				"ports": []map[string]any{
					{"name": "http", "containerPort": 8080, "protocol": "TCP"},
					{"name": "udp", "containerPort": 8081, "protocol": "UDP"},
				},
			}},
		},
	}
	b, _ := json.Marshal(pod)
	c.mustKubectl(string(b), "apply", "-f", "-")
	var ip string
	c.eventually("pod "+p.ns+"/"+p.name, 120*time.Second, func() error {
		out, err := c.kubectl("", "-n", p.ns, "get", "pod", p.name, "-o", "jsonpath={.status.phase} {.status.podIP} {.status.containerStatuses[0].ready}")
		if err != nil {
			return err
		}
		if f := strings.Fields(out); len(f) == 3 && f[0] == "Running" && f[2] == "true" {
			ip = f[1]
			return nil
		}
		return fmt.Errorf("pod %s/%s: %q", p.ns, p.name, out)
	})
	return ip
}

// reach reports whether pod ns/name connects to addr over proto.
func (c *cluster) reach(ns, name, proto, addr string) bool {
	_, err := c.kubectl("", "-n", ns, "exec", name, "--", "/agnhost", "connect", addr, "--timeout=1s", "--protocol="+proto)
	return err == nil
}

type npProbe struct {
	ns, from, proto, to string
	want                bool
}

// expect waits until every probe gives its answer, and then checks them
// all once more: the policy is in force, not on its way.
func (c *cluster) expect(t *testing.T, what string, probes []npProbe) {
	t.Helper()
	check := func() error {
		var bad []string
		for _, p := range probes {
			if got := c.reach(p.ns, p.from, p.proto, p.to); got != p.want {
				bad = append(bad, fmt.Sprintf("%s/%s → %s %s: reached %v, want %v", p.ns, p.from, p.proto, p.to, got, p.want))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("%s", strings.Join(bad, "; "))
		}
		return nil
	}
	d := c.eventually(what, 30*time.Second, check)
	if err := check(); err != nil {
		t.Fatalf("%s: not stable: %v", what, err)
	}
	t.Logf("%s: %d probes as expected after %s", what, len(probes), d.Round(10*time.Millisecond))
}

func (c *cluster) applyPolicies(t *testing.T, yaml string) {
	t.Helper()
	c.mustKubectl("", "delete", "networkpolicy", "--all", "-n", "np-a", "--wait=true")
	c.mustKubectl("", "delete", "networkpolicy", "--all", "-n", "np-b", "--wait=true")
	if yaml != "" {
		c.mustKubectl(yaml, "apply", "-f", "-")
	}
}

func (c *cluster) networkPolicy(t *testing.T) {
	defer c.use(t)()
	start := time.Now()
	c.serviceImages(t)
	for _, ns := range []string{"np-a", "np-b"} {
		c.kubectl("", "delete", "namespace", ns, "--wait=true", "--timeout=60s")
		c.mustKubectl("", "create", "namespace", ns)
		c.mustKubectl("", "label", "namespace", ns, "team="+strings.TrimPrefix(ns, "np-"))
	}
	defer func() {
		for _, ns := range []string{"np-a", "np-b"} {
			c.kubectl("", "delete", "namespace", ns, "--wait=true", "--timeout=90s")
		}
	}()
	srv := c.npPod(t, npPod{"np-a", "srv", "n2", map[string]string{"app": "srv"}})
	same := c.npPod(t, npPod{"np-a", "same", "n2", map[string]string{"role": "client"}})
	other := c.npPod(t, npPod{"np-a", "other", "n1", map[string]string{"role": "client"}})
	stranger := c.npPod(t, npPod{"np-a", "stranger", "n1", map[string]string{"role": "none"}})
	c.npPod(t, npPod{"np-b", "b", "n1", map[string]string{"role": "client"}})
	tcp, udp := srv+":8080", srv+":8081"
	// The cluster is dual-stack: srv's IPv6 address is under the same
	// policies (weft's inet table), never a way around them.
	_, srv6 := c.podIPs(t, "np-a", "srv")
	tcp6 := "[" + srv6.String() + "]:8080"
	probes := func(want map[string]bool, proto, to string) []npProbe {
		var ps []npProbe
		for _, who := range []string{"same", "other", "stranger", "b"} {
			ns := "np-a"
			if who == "b" {
				ns = "np-b"
			}
			ps = append(ps, npProbe{ns, who, proto, to, want[who]})
		}
		return ps
	}
	all := map[string]bool{"same": true, "other": true, "stranger": true, "b": true}
	none := map[string]bool{}
	c.expect(t, "no policy: everyone reaches srv", append(probes(all, "tcp", tcp), probes(all, "tcp", tcp6)...))

	t.Run("DefaultDenyIngress", func(t *testing.T) {
		defer c.use(t)()
		applied := time.Now()
		c.applyPolicies(t, `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny","namespace":"np-a"},"spec":{"podSelector":{},"policyTypes":["Ingress"]}}`)
		c.eventually("first probe blocked", 30*time.Second, func() error {
			if c.reach("np-a", "other", "tcp", tcp) {
				return fmt.Errorf("other still reaches srv")
			}
			return nil
		})
		t.Logf("kubectl apply of default deny to first refused connection: %s (probe timeout 1 s included)", time.Since(applied).Round(10*time.Millisecond))
		c.expect(t, "default deny, over IPv4 and IPv6", append(append(probes(none, "tcp", tcp), probes(none, "udp", udp)...), probes(none, "tcp", tcp6)...))
		// The node itself reaches its pods: kubelet probes.
		c.eventually("n2's host reaches srv", 10*time.Second, func() error {
			_, err := c.hostGet("n2", "http://"+tcp+"/hostname")
			return err
		})
		st := c.status("n2").NetworkPolicy
		if st == nil || st.Policies != 1 || st.Rules == 0 {
			t.Fatalf("n2's status: network policy %+v, want 1 policy with rules", st)
		}
		var dropped uint64
		for _, d := range st.Drops {
			if d.Policy == "np-a/deny" {
				dropped = d.Ingress
			}
		}
		if dropped == 0 {
			t.Errorf("n2 counted no drops for np-a/deny: %+v", st.Drops)
		}
		if m := c.metric("n2", `weft_netpol_dropped_packets_total{direction="ingress",policy="np-a/deny"}`); m == 0 {
			t.Errorf("weft_netpol_dropped_packets_total for np-a/deny is 0")
		}
		t.Logf("n2: %d policies, %d rules, %d packets dropped by np-a/deny", st.Policies, st.Rules, dropped)
	})

	t.Run("PodSelectorNamedPort", func(t *testing.T) {
		defer c.use(t)()
		c.applyPolicies(t, `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"clients","namespace":"np-a"},"spec":{"podSelector":{"matchLabels":{"app":"srv"}},
			"ingress":[{"from":[{"podSelector":{"matchLabels":{"role":"client"}}}],"ports":[{"port":"http"}]}]}}`)
		clients := map[string]bool{"same": true, "other": true}
		c.expect(t, "role=client of np-a on port http, over IPv4 and IPv6", append(append(probes(clients, "tcp", tcp), probes(none, "udp", udp)...), probes(clients, "tcp", tcp6)...))
	})

	t.Run("NamespaceAndPodSelector", func(t *testing.T) {
		defer c.use(t)()
		c.applyPolicies(t, `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"team-b","namespace":"np-a"},"spec":{"podSelector":{"matchLabels":{"app":"srv"}},
			"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"b"}},"podSelector":{"matchLabels":{"role":"client"}}}]}]}}`)
		c.expect(t, "role=client of team=b only", probes(map[string]bool{"b": true}, "tcp", tcp))
	})

	t.Run("IPBlockExceptEndPortUDP", func(t *testing.T) {
		defer c.use(t)()
		c.applyPolicies(t, `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"block","namespace":"np-a"},"spec":{"podSelector":{"matchLabels":{"app":"srv"}},
			"ingress":[{"from":[{"ipBlock":{"cidr":"10.244.0.0/16","except":["`+other+`/32"]}}],"ports":[{"protocol":"UDP","port":8000,"endPort":8090}]}]}}`)
		want := map[string]bool{"same": true, "stranger": true, "b": true}
		c.expect(t, "UDP 8000-8090 from the cluster CIDR except other", append(probes(want, "udp", udp), probes(none, "tcp", tcp)...))
	})

	t.Run("Egress", func(t *testing.T) {
		defer c.use(t)()
		c.applyPolicies(t, `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"out","namespace":"np-a"},"spec":{"podSelector":{"matchLabels":{"role":"client"}},"policyTypes":["Egress"],
			"egress":[{"to":[{"podSelector":{"matchLabels":{"app":"srv"}}}],"ports":[{"protocol":"TCP","port":8080}]}]}}`)
		c.expect(t, "clients of np-a reach only srv:8080", []npProbe{
			{"np-a", "other", "tcp", tcp, true}, {"np-a", "same", "tcp", tcp, true},
			{"np-a", "other", "tcp", same + ":8080", false}, {"np-a", "same", "tcp", stranger + ":8080", false},
			{"np-a", "other", "udp", udp, false}, {"np-a", "stranger", "tcp", other + ":8080", true},
		})
	})

	t.Run("Removed", func(t *testing.T) {
		defer c.use(t)()
		c.applyPolicies(t, "")
		c.expect(t, "no policy again", append(probes(all, "tcp", tcp), probes(all, "tcp", tcp6)...))
	})
	t.Logf("NetworkPolicy checks took %s", time.Since(start).Round(time.Second))
}
