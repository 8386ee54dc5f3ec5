package e2e

// The dual-stack checks of TestKubernetes's Services subtest. The cluster
// is dual-stack (kube_linux_test.go: clusterCIDR6, serviceCIDR6) over an
// IPv4 underlay: every Node has a pod CIDR per family, weftd routes both,
// and pods get one address of each.
//
//	t.Run("DualStack", c.checkDualStack)

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// nodeCIDRs2 reads both pod CIDRs of each Node (spec.podCIDRs), IPv4
// first, and fails unless there is exactly one per family.
func (c *cluster) nodeCIDRs2(t *testing.T) map[string][2]netip.Prefix {
	t.Helper()
	out := map[string][2]netip.Prefix{}
	for _, n := range []string{"n1", "n2"} {
		f := strings.Fields(c.mustKubectl("", "get", "node", n, "-o", `jsonpath={.spec.podCIDRs[*]}`))
		var v4, v6 netip.Prefix
		for _, s := range f {
			p, err := netip.ParsePrefix(s)
			switch {
			case err != nil:
				t.Fatalf("Node %s pod CIDR %q: %v", n, s, err)
			case p.Addr().Is4() && !v4.IsValid():
				v4 = p
			case p.Addr().Is6() && !v6.IsValid():
				v6 = p
			default:
				t.Fatalf("Node %s spec.podCIDRs %v: want one per family", n, f)
			}
		}
		if !v4.IsValid() || !v6.IsValid() || !netip.MustParsePrefix(clusterCIDR6).Contains(v6.Addr()) {
			t.Fatalf("Node %s spec.podCIDRs %v: want one IPv4 and one IPv6 inside %s", n, f, clusterCIDR6)
		}
		out[n] = [2]netip.Prefix{v4, v6}
	}
	return out
}

// podIPs reads the status.podIPs of pod ns/name as one address per family.
func (c *cluster) podIPs(t *testing.T, ns, name string) (v4, v6 netip.Addr) {
	t.Helper()
	for _, s := range strings.Fields(c.mustKubectl("", "-n", ns, "get", "pod", name, "-o", `jsonpath={.status.podIPs[*].ip}`)) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatalf("pod %s podIP %q: %v", name, s, err)
		}
		if a.Is4() {
			v4 = a
		} else {
			v6 = a
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		t.Fatalf("pod %s has podIPs %v %v: want one per family", name, v4, v6)
	}
	return v4, v6
}

// checkDualStack: weftd on each node runs both of its Node's pod CIDRs;
// a pod on n2 gets an address of each family inside them; a
// RequireDualStack Service in front of it gets a ClusterIP of each
// family and an EndpointSlice of each; a pod on n1 reaches it through
// both ClusterIPs, by its AAAA name and at its IPv6 pod address directly,
// and over IPv6 the server sees the client's own IPv6 pod address (pod to
// pod across weft, no masquerade).
func (c *cluster) checkDualStack(t *testing.T) {
	defer c.use(t)()
	cidrs := c.nodeCIDRs2(t)
	for _, n := range []string{"n1", "n2"} {
		got := c.status(n).Self.PodCIDRs
		if want := []string{cidrs[n][0].String(), cidrs[n][1].String()}; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("weftd %s runs pod CIDRs %v, Node has %v", n, got, want)
		}
	}
	c.startPod(t, testPod{name: "ds-web", node: "n2", labels: map[string]string{"app": "ds-web"}, args: netexec, cidr: cidrs["n2"][0]})
	web4, web6 := c.podIPs(t, "default", "ds-web")
	if !cidrs["n2"][1].Contains(web6) {
		t.Fatalf("ds-web's IPv6 address %s is not in n2's IPv6 pod CIDR %s", web6, cidrs["n2"][1])
	}
	svc := map[string]any{"apiVersion": "v1", "kind": "Service", "metadata": map[string]any{"name": "ds-web", "namespace": "default"}, "spec": map[string]any{
		"selector":       map[string]string{"app": "ds-web"},
		"ipFamilyPolicy": "RequireDualStack",
		"ipFamilies":     []string{"IPv4", "IPv6"},
		"ports":          []map[string]any{{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}},
	}}
	b, _ := json.Marshal(svc)
	c.mustKubectl(string(b), "apply", "-f", "-")
	c.waitEndpoints(t, "ds-web", web4.String(), web6.String())
	vips := strings.Fields(c.mustKubectl("", "get", "service", "ds-web", "-o", "jsonpath={.spec.clusterIPs[*]}"))
	if len(vips) != 2 {
		t.Fatalf("Service ds-web has clusterIPs %v, want one per family", vips)
	}
	vip4, err4 := netip.ParseAddr(vips[0])
	vip6, err6 := netip.ParseAddr(vips[1])
	if err4 != nil || err6 != nil || !netip.MustParsePrefix(serviceCIDR).Contains(vip4) || !netip.MustParsePrefix(serviceCIDR6).Contains(vip6) {
		t.Fatalf("Service ds-web clusterIPs %v: want one in %s and one in %s", vips, serviceCIDR, serviceCIDR6)
	}

	// One client pod, each request retried on its own; each prints one line.
	name := "ds-web.default.svc." + clusterDomain
	reqs := []struct{ what, cmd, want string }{
		{"IPv4 ClusterIP " + vip4.String(), "curl -sS --max-time 3 http://" + vip4.String() + "/hostname", "ds-web"},
		{"IPv6 ClusterIP " + vip6.String(), "curl -sS -g --max-time 3 http://[" + vip6.String() + "]/hostname", "ds-web"},
		{"AAAA name " + name, "curl -sS -6 --max-time 3 http://" + name + "/hostname", "ds-web"},
		{"IPv6 pod address " + web6.String(), "curl -sS -g --max-time 3 http://[" + web6.String() + "]:8080/hostname", "ds-web"},
		{"client address over the IPv6 ClusterIP", "curl -sS -g --max-time 3 http://[" + vip6.String() + "]/clientip", ""},
	}
	// Each retried loop exits its shell (0 after the first answer, which
	// it prints on a line), so each runs in a subshell: ( loop ) || exit 1.
	var sh strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&sh, "( %s ) || exit 1\n", retried(r.cmd)[2])
	}
	c.startPod(t, testPod{name: "ds-client", node: "n1", command: []string{"/bin/sh", "-c", sh.String()}, done: true, cidr: cidrs["n1"][0]})
	_, client6 := c.podIPs(t, "default", "ds-client")
	lines := strings.Fields(c.podLogs(t, "ds-client"))
	if len(lines) != len(reqs) {
		t.Fatalf("ds-client printed %q, want %d answers", lines, len(reqs))
	}
	for i, r := range reqs[:len(reqs)-1] {
		if lines[i] != r.want {
			t.Errorf("pod on n1 → %s answered %q, want %q (the pod on n2)", r.what, lines[i], r.want)
		}
	}
	ap, err := netip.ParseAddrPort(lines[len(lines)-1])
	if err != nil || ap.Addr() != client6 {
		t.Errorf("over the IPv6 ClusterIP the server saw the client as %q, want the client pod's IPv6 address %s", lines[len(lines)-1], client6)
	}
	t.Logf("pod on n1 (%s) → ds-web on n2 (%s, %s) over ClusterIPs %s and %s, the AAAA name and the pod address; seen as %s", client6, web4, web6, vip4, vip6, lines[len(lines)-1])
}
