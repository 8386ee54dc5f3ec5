package e2e

// Services and DNS across the two nodes, on top of the cluster
// TestKubernetes builds: what a normal cluster needs from its network
// besides pod-to-pod. c.servicesAndDNS runs it all as one subtest of
// TestKubernetes, for when kube-proxy (iptables mode) runs on both nodes,
// the API server keeps its normal endpoint reconciler, the kubelets hand
// pods clusterDNS 10.96.0.10 in cluster.local and the conflist chains
// portmap:
//
//	c.serviceImages()                      agnhost and CoreDNS images into both nodes
//	c.deployCoreDNS()                      CoreDNS behind kube-dns (testdata/coredns.yaml)
//	t.Run("ClusterIP", c.checkClusterIP)   pod on n1 → Service → pod on n2
//	t.Run("DualStack", c.checkDualStack)   the same over both families (dualstack_linux_test.go)
//	t.Run("NodePort", c.checkNodePort)     n1's host → NodePort on n1 and on n2 → pod on n2
//	t.Run("HeadlessDNS", c.checkHeadlessDNS) CoreDNS answers a headless name with both pods' IPs
//	t.Run("KubernetesDefault", c.checkKubernetesDefault) pod → https://kubernetes.default
//	t.Run("HostPort", c.checkHostPort)     n1's host and a pod on n1 → n2:hostPort (portmap)
//
// The pods run agnhost (netexec serves /hostname; the image has curl and
// dig), not the busybox image of runPod, which has neither.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	kubeDNSIP        = "10.96.0.10"
	kubernetesSvcIP  = "10.96.0.1"
	clusterDomain    = "cluster.local"
	corednsManifest  = "testdata/coredns.yaml"
	svcCheckHostPort = 28481 // below the NodePort range (30000-32767): hostPort is portmap's, not kube-proxy's
)

// use makes t the test c's helpers (c.eventually, c.mustKubectl) fail,
// until the returned func puts the previous one back: a subtest must not
// fail its parent from its own goroutine. Subtests here run one at a time.
func (c *cluster) use(t *testing.T) (restore func()) {
	prev := c.t
	c.t = t
	return func() { c.t = prev }
}

// servicesAndDNS is the Services/DNS subtest of TestKubernetes:
//
//	t.Run("ServicesAndDNS", c.servicesAndDNS)
func (c *cluster) servicesAndDNS(t *testing.T) {
	defer c.use(t)()
	c.serviceImages(t)
	c.deployCoreDNS()
	t.Run("ClusterIP", c.checkClusterIP)
	t.Run("DualStack", c.checkDualStack)
	t.Run("NodePort", c.checkNodePort)
	t.Run("HeadlessDNS", c.checkHeadlessDNS)
	t.Run("KubernetesDefault", c.checkKubernetesDefault)
	t.Run("HostPort", c.checkHostPort)
	t.Run("KubeProxyNFTables", c.kubeProxyNFTables)
}

// kubeProxyNFTables switches both nodes' kube-proxy to nftables mode
// (the iptables mode's rules cleaned up first, `kube-proxy --cleanup`)
// and runs the Service checks again on fresh pods: ClusterIP, NodePort
// and the kubernetes Service, now through kube-proxy's nftables table.
func (c *cluster) kubeProxyNFTables(t *testing.T) {
	defer c.use(t)()
	c.mustKubectl("", "delete", "pods", "--all", "-n", "default", "--grace-period=1", "--wait=true", "--timeout=90s")
	for _, n := range []string{"n1", "n2"} {
		c.kubeProxy[n].name += "-stopped"
		c.kubeProxy[n].stop()
		if out, err := c.inNode(n, filepath.Join(c.kbin, "kube-proxy"), "--cleanup", "--config", filepath.Join(c.nodeDir(n), "kube-proxy-iptables.yaml")); err != nil {
			t.Fatalf("%s: kube-proxy --cleanup: %v: %s", n, err, out)
		}
		c.startKubeProxy(n, "nftables")
		c.eventually("kube-proxy "+n+" in nftables mode", 60*time.Second, func() error {
			nft, err := c.inNode(n, "nft", "list", "table", "ip", "kube-proxy")
			if err != nil || !strings.Contains(string(nft), kubernetesVIP) {
				return fmt.Errorf("nft table ip kube-proxy without %s (%v): %.200s", kubernetesVIP, err, nft)
			}
			ipt, err := c.inNode(n, "iptables-save", "-t", "nat")
			if err != nil || strings.Contains(string(ipt), "KUBE-SERVICES") {
				return fmt.Errorf("iptables still holds kube-proxy's chains (%v)", err)
			}
			return nil
		})
	}
	t.Run("ClusterIP", c.checkClusterIP)
	t.Run("NodePort", c.checkNodePort)
	t.Run("KubernetesDefault", c.checkKubernetesDefault)
}

// serviceImages makes the images of the Services checks and of the
// conformance run (conformanceImageSpecs: agnhost, CoreDNS and the
// stand-ins) and imports them into both nodes' containerd, unless both
// have them already.
func (c *cluster) serviceImages(t *testing.T) {
	t.Helper()
	if c.hasImage("n1", corednsImage) && c.hasImage("n2", corednsImage) && c.hasImage("n1", agnhostTestImage) && c.hasImage("n2", agnhostTestImage) {
		return
	}
	specs, err := conformanceImageSpecs(agnhostBinary(t), corednsBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(c.dir, "images", "services.tar")
	if err := os.MkdirAll(filepath.Dir(tarball), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeImages(tarball, specs...); err != nil {
		t.Fatal(err)
	}
	c.importImages(tarball)
	t.Logf("imported on both nodes: %s", strings.Join(imageRefs(specs), " "))
}

// containerdSock is node n's containerd socket (startNode's config).
func (c *cluster) containerdSock(n string) string {
	return filepath.Join(c.nodeDir(n), "containerd", "containerd.sock")
}

// hasImage reports whether node n's containerd holds ref for the kubelet.
func (c *cluster) hasImage(n, ref string) bool {
	out, err := exec.Command("ctr", "--address", c.containerdSock(n), "-n", "k8s.io", "images", "ls", "-q").Output()
	return err == nil && slices.Contains(strings.Fields(string(out)), ref)
}

// importImages loads a docker-archive into every node's containerd.
func (c *cluster) importImages(tarball string) {
	c.t.Helper()
	for _, n := range []string{"n1", "n2"} {
		if out, err := exec.Command("ctr", "--address", c.containerdSock(n), "-n", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
			c.t.Fatalf("ctr import %s on %s: %v: %s", tarball, n, err, out)
		}
	}
}

// deployCoreDNS applies testdata/coredns.yaml (its image must already be
// in both nodes' containerd: importImages) and waits until CoreDNS is
// ready and kube-dns has its endpoint.
func (c *cluster) deployCoreDNS() {
	c.t.Helper()
	c.mustKubectl("", "apply", "-f", mustAbs(c.t, corednsManifest))
	c.eventually("CoreDNS ready", 120*time.Second, func() error {
		out, err := c.kubectl("", "-n", "kube-system", "get", "deployment", "coredns", "-o", "jsonpath={.status.readyReplicas}")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "1" {
			return fmt.Errorf("ready replicas %q", out)
		}
		return nil
	})
	c.eventually("kube-dns endpoints", 30*time.Second, func() error {
		out, err := c.kubectl("", "-n", "kube-system", "get", "endpointslices", "-l", "kubernetes.io/service-name=kube-dns", "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) == "" {
			return fmt.Errorf("no endpoint addresses")
		}
		return nil
	})
}

// testPod is a pod of the Services checks.
type testPod struct {
	name, node string
	labels     map[string]string
	image      string   // default agnhostUpstreamImage
	command    []string // replaces the image's entrypoint when set
	args       []string
	hostPort   int // with containerPort 8080, when set
	done       bool
	cidr       netip.Prefix // its IP must lie in it
	subdomain  string       // with hostname = name, for headless records
}

// netexec is agnhost's argument list for a server: HTTP on 8080
// (/hostname answers the pod's name) and UDP on 8081.
var netexec = []string{"netexec", "--http-port=8080", "--udp-port=8081"}

// startPod creates p and waits for it to be Ready (done: Succeeded),
// returning its IP. Failure of a done pod fails the test with its log.
func (c *cluster) startPod(t *testing.T, p testPod) string {
	t.Helper()
	image := p.image
	if image == "" {
		image = agnhostUpstreamImage
	}
	ctr := map[string]any{"name": "c", "image": image, "imagePullPolicy": "Never", "command": p.command, "args": p.args}
	if p.hostPort != 0 {
		ctr["ports"] = []map[string]any{{"containerPort": 8080, "hostPort": p.hostPort, "protocol": "TCP"}}
	}
	restart := "Always"
	if p.done {
		restart = "Never"
	}
	spec := map[string]any{
		"nodeSelector":                  map[string]string{"kubernetes.io/hostname": p.node},
		"tolerations":                   []map[string]string{{"operator": "Exists"}},
		"restartPolicy":                 restart,
		"terminationGracePeriodSeconds": 1,
		"containers":                    []any{ctr},
	}
	if p.subdomain != "" {
		spec["hostname"], spec["subdomain"] = p.name, p.subdomain
	}
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": p.name, "namespace": "default", "labels": p.labels},
		"spec":     spec,
	}
	b, _ := json.Marshal(pod)
	c.mustKubectl(string(b), "apply", "-f", "-")
	var ip string
	c.eventually("pod "+p.name, 120*time.Second, func() error {
		out, err := c.kubectl("", "get", "pod", p.name, "-o", "jsonpath={.status.phase} {.status.podIP} {.spec.nodeName} {.status.containerStatuses[0].ready}")
		if err != nil {
			return err
		}
		f := strings.Fields(out)
		if len(f) < 4 {
			return fmt.Errorf("pod %s: %q", p.name, out)
		}
		if f[0] == "Failed" {
			logs, _ := c.kubectl("", "logs", p.name)
			t.Fatalf("pod %s failed: %s; logs:\n%s", p.name, out, logs)
		}
		if (p.done && f[0] != "Succeeded") || (!p.done && (f[0] != "Running" || f[3] != "true")) {
			return fmt.Errorf("pod %s: %q", p.name, out)
		}
		if f[2] != p.node {
			t.Fatalf("pod %s on %s, want %s", p.name, f[2], p.node)
		}
		ip = f[1]
		return nil
	})
	if a, err := netip.ParseAddr(ip); err != nil || !p.cidr.Contains(a) {
		t.Fatalf("pod %s IP %q is not in %s's pod CIDR %s", p.name, ip, p.node, p.cidr)
	}
	return ip
}

// podLogs returns a pod's log, trimmed.
func (c *cluster) podLogs(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimSpace(c.mustKubectl("", "logs", name))
}

// retried is a pod command that runs a shell command in a loop: up to 60 tries 0.5 s apart,
// exit 0 after the first success, else print the last output and exit 1.
func retried(cmd string) []string {
	return []string{"/bin/sh", "-c", `i=0; while [ $i -lt 60 ]; do if out=$(` + cmd + ` 2>&1); then echo "$out"; exit 0; fi; i=$((i+1)); sleep 0.5; done; echo "$out"; exit 1`}
}

// nodeCIDRs reads the pod CIDR of each Node.
func (c *cluster) nodeCIDRs(t *testing.T) map[string]netip.Prefix {
	t.Helper()
	cidrs := map[string]netip.Prefix{}
	for _, n := range []string{"n1", "n2"} {
		p, err := netip.ParsePrefix(strings.TrimSpace(c.mustKubectl("", "get", "node", n, "-o", "jsonpath={.spec.podCIDR}")))
		if err != nil {
			t.Fatalf("Node %s pod CIDR: %v", n, err)
		}
		cidrs[n] = p
	}
	return cidrs
}

// service applies a Service in default selecting app=selector.
func (c *cluster) service(t *testing.T, name, selector, typ string, headless bool) {
	t.Helper()
	spec := map[string]any{
		"selector": map[string]string{"app": selector},
		"ports":    []map[string]any{{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}},
	}
	if typ != "" {
		spec["type"] = typ
	}
	if headless {
		spec["clusterIP"] = "None"
	}
	b, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Service", "metadata": map[string]any{"name": name, "namespace": "default"}, "spec": spec})
	c.mustKubectl(string(b), "apply", "-f", "-")
}

// waitEndpoints waits until the Service's EndpointSlices hold exactly ips
// (ready), so that a failure later is the datapath's, not the controller's.
func (c *cluster) waitEndpoints(t *testing.T, svc string, ips ...string) {
	t.Helper()
	want := slices.Clone(ips)
	slices.Sort(want)
	c.eventually("endpoints of "+svc, 60*time.Second, func() error {
		out, err := c.kubectl("", "get", "endpointslices", "-l", "kubernetes.io/service-name="+svc, "-o", `jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{" "}{end}`)
		if err != nil {
			return err
		}
		got := strings.Fields(out)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("ready endpoints %v, want %v", got, want)
		}
		return nil
	})
}

// checkClusterIP: a pod on n1 reaches a pod on n2 through its Service's
// ClusterIP, by address and by name (CoreDNS), and the answer is the
// n2 pod's.
func (c *cluster) checkClusterIP(t *testing.T) {
	defer c.use(t)()
	cidrs := c.nodeCIDRs(t)
	ip := c.startPod(t, testPod{name: "svc-web", node: "n2", labels: map[string]string{"app": "svc-web"}, args: netexec, cidr: cidrs["n2"]})
	c.service(t, "svc-web", "svc-web", "", false)
	c.waitEndpoints(t, "svc-web", ip)
	vip := strings.TrimSpace(c.mustKubectl("", "get", "service", "svc-web", "-o", "jsonpath={.spec.clusterIP}"))
	for name, target := range map[string]string{"svc-client-vip": vip, "svc-client-dns": "svc-web.default.svc." + clusterDomain} {
		c.startPod(t, testPod{name: name, node: "n1", command: retried("curl -sS --max-time 3 http://" + target + "/hostname"), done: true, cidr: cidrs["n1"]})
		if got := c.podLogs(t, name); got != "svc-web" {
			t.Fatalf("http://%s/hostname from n1 answered %q, want svc-web (the pod on n2)", target, got)
		}
		t.Logf("pod on n1 → http://%s (ClusterIP %s) → svc-web on n2 (%s)", target, vip, ip)
	}
}

// checkNodePort: n1's host reaches the pod on n2 through the NodePort of
// the Service on n1's own address (kube-proxy on n1 sends it across weft)
// and on n2's.
func (c *cluster) checkNodePort(t *testing.T) {
	defer c.use(t)()
	cidrs := c.nodeCIDRs(t)
	ip := c.startPod(t, testPod{name: "np-web", node: "n2", labels: map[string]string{"app": "np-web"}, args: netexec, cidr: cidrs["n2"]})
	c.service(t, "np-web", "np-web", "NodePort", false)
	c.waitEndpoints(t, "np-web", ip)
	port := strings.TrimSpace(c.mustKubectl("", "get", "service", "np-web", "-o", "jsonpath={.spec.ports[0].nodePort}"))
	for _, n := range []string{"n1", "n2"} {
		addr := c.lab.Node(n).UnderlayAddr + ":" + port
		c.eventually("NodePort "+addr+" from n1's host", 30*time.Second, func() error {
			got, err := c.hostGet("n1", "http://"+addr+"/hostname")
			if err != nil {
				return err
			}
			if got != "np-web" {
				return fmt.Errorf("answer %q, want np-web", got)
			}
			return nil
		})
		t.Logf("n1's host → NodePort %s → np-web on n2 (%s)", addr, ip)
	}
}

// hostGet fetches url from node n's network namespace (the node itself,
// not a pod) with the host's static busybox.
func (c *cluster) hostGet(n, url string) (string, error) {
	// curl, not busybox wget: Debian's static busybox wget crashes
	// resolving a numeric host outside loopback.
	out, err := exec.Command("nsenter", "--net=/run/netns/"+prefix+"-"+n, "--", "curl", "-sS", "-m", "3", url).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("curl %s from %s: %v: %s", url, n, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// checkHeadlessDNS: CoreDNS, asked through kube-dns's ClusterIP from a pod
// on n1, answers a headless Service's name with the IPs of its two pods,
// one per node, and each pod's own hostname record.
func (c *cluster) checkHeadlessDNS(t *testing.T) {
	defer c.use(t)()
	cidrs := c.nodeCIDRs(t)
	c.service(t, "hl", "hl", "", true)
	ips := map[string]string{}
	for _, n := range []string{"n1", "n2"} {
		ips[n] = c.startPod(t, testPod{name: "hl-" + n, node: n, labels: map[string]string{"app": "hl"}, args: netexec, cidr: cidrs[n], subdomain: "hl"})
	}
	c.waitEndpoints(t, "hl", ips["n1"], ips["n2"])
	fqdn := "hl.default.svc." + clusterDomain
	// dig through the pod's resolv.conf (clusterDNS) and explicitly at
	// kube-dns; each must list both addresses.
	check := `a=$(dig +short ` + fqdn + ` | sort | tr '\n' ' ') && b=$(dig +short @` + kubeDNSIP + ` ` + fqdn + ` | sort | tr '\n' ' ') && h=$(dig +short hl-n2.` + fqdn + `) && echo "$a|$b|$h" && [ "$a" = "$b" ] && [ -n "$h" ] && echo "$a" | grep -qw ` + ips["n1"] + ` && echo "$a" | grep -qw ` + ips["n2"]
	c.startPod(t, testPod{name: "hl-client", node: "n1", command: retried(check), done: true, cidr: cidrs["n1"]})
	got := c.podLogs(t, "hl-client")
	f := strings.Split(got, "|")
	if len(f) != 3 || strings.TrimSpace(f[2]) != ips["n2"] {
		t.Fatalf("dig answers %q: want both pods (%s, %s) for %s and %s for hl-n2.%s", got, ips["n1"], ips["n2"], fqdn, ips["n2"], fqdn)
	}
	t.Logf("CoreDNS: %s → %s; hl-n2.%s → %s", fqdn, strings.TrimSpace(f[0]), fqdn, f[2])
}

// checkKubernetesDefault: a pod on each node reaches the API server
// through the kubernetes Service, by name (kubernetes.default through the
// pod's search path) and by ClusterIP, over HTTPS; /version answers
// (anonymous: system:public-info-viewer) with the cluster's version.
func (c *cluster) checkKubernetesDefault(t *testing.T) {
	defer c.use(t)()
	cidrs := c.nodeCIDRs(t)
	for _, n := range []string{"n1", "n2"} {
		for _, target := range []string{"kubernetes.default", kubernetesSvcIP + ":443"} {
			name := "kube-default-" + n
			if target != "kubernetes.default" {
				name = "kube-vip-" + n
			}
			c.startPod(t, testPod{name: name, node: n, command: retried("curl -sSk --max-time 3 https://" + target + "/version"), done: true, cidr: cidrs[n]})
			var v struct {
				GitVersion string `json:"gitVersion"`
			}
			logs := c.podLogs(t, name)
			if err := json.Unmarshal([]byte(logs), &v); err != nil || v.GitVersion != k8sVersion {
				t.Fatalf("https://%s/version from a pod on %s: %q (%v), want gitVersion %s", target, n, logs, err, k8sVersion)
			}
			t.Logf("pod on %s → https://%s/version: %s", n, target, v.GitVersion)
		}
	}
}

// checkHostPort: a pod on n2 with hostPort (the chained portmap plugin's
// DNAT on n2) is reached at n2's address from n1's host and from a pod on
// n1, and the answer is that pod's.
func (c *cluster) checkHostPort(t *testing.T) {
	defer c.use(t)()
	cidrs := c.nodeCIDRs(t)
	c.startPod(t, testPod{name: "hp-web", node: "n2", args: netexec, hostPort: svcCheckHostPort, cidr: cidrs["n2"]})
	addr := fmt.Sprintf("%s:%d", c.lab.Node("n2").UnderlayAddr, svcCheckHostPort)
	c.eventually("hostPort "+addr+" from n1's host", 30*time.Second, func() error {
		got, err := c.hostGet("n1", "http://"+addr+"/hostname")
		if err != nil {
			return err
		}
		if got != "hp-web" {
			return fmt.Errorf("answer %q, want hp-web", got)
		}
		return nil
	})
	c.startPod(t, testPod{name: "hp-client", node: "n1", command: retried("curl -sS --max-time 3 http://" + addr + "/hostname"), done: true, cidr: cidrs["n1"]})
	if got := c.podLogs(t, "hp-client"); got != "hp-web" {
		t.Fatalf("hostPort %s from a pod on n1 answered %q, want hp-web", addr, got)
	}
	t.Logf("n1's host and a pod on n1 → hostPort %s → hp-web on n2", addr)
}
