package e2e

// TestKubernetes installs weft as shipped on two real kubelets and runs
// pod traffic over it.
//
// Topology (all in namespaces this test makes, TEST-NET addresses only):
//
//	wk8s-rtr  router + control plane: etcd, kube-apiserver (0.0.0.0:6443,
//	          advertised as 192.0.2.1, the router's site1 address, with its
//	          normal endpoint reconciler), kube-controller-manager
//	          (--allocate-node-cidrs), kube-scheduler
//	wk8s-n1   192.0.2.11 (site1): containerd, kube-proxy, kubelet
//	wk8s-n2   198.51.100.12 (site2): containerd, kube-proxy, kubelet
//
// The lab (deploy/lab) makes the network namespaces with n1 and n2 as
// external nodes (no lab weftd). Each node's processes run in its network
// namespace and in a mount namespace of its own (mountns_linux_test.go),
// entered with `nsenter` (not `ip netns exec`, which remounts /sys and
// hides the cgroup mounts the kubelet needs).
//
// weft is installed as a user installs it: its image, built as `make image`
// builds it, is imported into each node's containerd, and `kubectl apply
// -k` applies an overlay of deploy/ that changes only the image tag and the
// gossip key. The kubelets run the DaemonSet: the init container (`weftctl
// install-cni`) installs weft-cni and the shipped conflist, weftd reaches
// the API server through the `kubernetes` Service (kube-proxy, iptables
// mode) with its ServiceAccount, and the probes pass.
//
// What it proves, in order: the Nodes are not Ready until weft is
// installed, and are once it is; weftd adopts the CIDRs the controller
// manager assigned (node.json, annotations, NetworkUnavailable=False) with
// no more rights than deploy/rbac.yaml gives; 10.96.0.1:443 reaches the API
// server from both nodes and from a pod; pods on each node get addresses
// from those CIDRs and talk across the nodes over VXLAN, over WireGuard
// between two zones and VXLAN inside one (wireguard-across-sites), then
// over WireGuard, each policy set in the ConfigMap and rolled out with
// `kubectl rollout restart`; deleting Node n2 (its weftd still gossiping)
// takes n2 out of n1's routes within seconds. `kubectl apply
// --dry-run=server -k deploy/` passes against the same API server.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/deploy/image"
	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

const (
	prefix      = "wk8s"
	labDir      = "/run/weft-kube-e2e"
	dataDir     = "/var/lib/weft-kube-e2e" // containerd roots: images need disk, not tmpfs
	clusterCIDR = "10.244.0.0/16"
	// The cluster is dual-stack: kube-controller-manager's --cluster-cidr
	// and kube-proxy's clusterCIDR hold both families, the API server has
	// a Service range per family, and the test's overlay sets weft's
	// cluster-cidr to both (weft-config). The underlay stays IPv4.
	clusterCIDR6 = "fd00:10:244::/56"
	serviceCIDR  = "10.96.0.0/16"
	serviceCIDR6 = "fd00:10:96::/112"
	adminToken   = "weft-e2e-admin-token"
	// The kubernetes Service's ClusterIP: the first address of
	// --service-cluster-ip-range, where in-cluster clients (weftd) go.
	kubernetesVIP = "10.96.0.1"
	// weftd's WireGuard UAPI name: the DaemonSet keeps weftd's default.
	wgName = "weft-wg"
)

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

type cluster struct {
	t       *testing.T
	lab     *lab.Lab
	kbin    string // Kubernetes + etcd binaries
	wbin    string // weft binaries
	dir     string // control plane files
	started []*proc
	kubelet map[string]*proc
	// kubeProxy is each node's kube-proxy.
	kubeProxy map[string]*proc
	kcm       *proc // kube-controller-manager
	// root is TestKubernetes's own t: processes stop when it ends, not
	// with the subtest that started them (c.t, see c.use).
	root    *testing.T
	mntns   map[string]string // node → its mount namespace file
	images  images
	overlay string // the test's kustomization of deploy/
}

func needRoot(t *testing.T) {
	t.Helper()
	prereqtest.Netns(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "mount", "gcc", "libc6-dev", "busybox-static", "ip", "wg", "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore", "curl", "nft")
}

// start runs bin inside netns (and the mount namespace file mntns, if
// set), logging to <name>.log; it is stopped (by PID: SIGTERM, then
// SIGKILL) when the test ends, in reverse start order.
func (c *cluster) start(name, netns, mntns string, bin string, args ...string) *proc {
	c.t.Helper()
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	ns := []string{"--net=/run/netns/" + netns}
	if mntns != "" {
		ns = append(ns, "--mount="+mntns)
	}
	cmd := exec.Command("nsenter", append(append(ns, "--", bin), args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	c.started = append(c.started, p)
	owner := c.t
	if c.root != nil {
		owner = c.root
	}
	owner.Cleanup(func() {
		start := time.Now()
		p.stop()
		if d := time.Since(start); d > 3*time.Second {
			c.t.Logf("%s took %s to stop", p.name, d.Round(100*time.Millisecond))
		}
	})
	return p
}

// inNode runs a command in node n's network and mount namespaces.
func (c *cluster) inNode(n string, args ...string) ([]byte, error) {
	ns := []string{"--net=/run/netns/" + prefix + "-" + n}
	if f := c.mntns[n]; f != "" {
		ns = append(ns, "--mount="+f)
	}
	return exec.Command("nsenter", append(append(ns, "--"), args...)...).CombinedOutput()
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kubectl runs kubectl in the router namespace against the API server.
func (c *cluster) kubectl(stdin string, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + prefix + "-rtr", "--", filepath.Join(c.kbin, "kubectl"), "--kubeconfig", filepath.Join(c.dir, "admin.kubeconfig")}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (c *cluster) mustKubectl(stdin string, args ...string) string {
	c.t.Helper()
	out, err := c.kubectl(stdin, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// eventually retries f every 250 ms until it returns nil or d passes.
func (c *cluster) eventually(what string, d time.Duration, f func() error) time.Duration {
	c.t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < d {
		if err = f(); err == nil {
			return time.Since(start)
		}
		for _, p := range c.started {
			if !p.alive() && (strings.HasPrefix(p.name, "weftd") || strings.HasPrefix(p.name, "kube") || p.name == "etcd") && !strings.Contains(p.name, "stopped") {
				c.t.Fatalf("%s: %s exited; log:\n%s", what, p.name, tailFile(filepath.Join(c.dir, p.name+".log"), 30))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.t.Fatalf("%s: not after %s: %v", what, d, err)
	return 0
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func writeFile(t *testing.T, path, body string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

func kubeconfig(server, caFile string) string {
	return `apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: ` + server + `
    certificate-authority: ` + caFile + `
users:
- name: admin
  user:
    token: ` + adminToken + `
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`
}

// hostPathsKubeletTouches are paths the kubelet and containerd create
// whatever their flags say, and the host-side mount points of the nodes'
// own paths (nodePaths); the ones that did not exist before the test are
// removed after it.
var hostPathsKubeletTouches = []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd", "/etc/cni", "/opt/cni", "/run/weft", "/var/lib/weft", "/run/wireguard"}

func TestKubernetes(t *testing.T) {
	needRoot(t)
	total := time.Now()
	kbin := kubeBinaries(t)
	wbin := weftBinaries(t)
	t.Logf("binaries ready after %s", time.Since(total).Round(time.Second))

	var fresh []string
	for _, p := range hostPathsKubeletTouches {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			fresh = append(fresh, p)
		}
	}
	// containerd makes each pod's netns file in /run/netns (shared) and
	// mounts it in the node's own mount namespace: the files of sandboxes
	// still up when the nodes stop stay behind, empty, on the host.
	netnsBefore, _ := filepath.Glob("/run/netns/cni-*")
	t.Cleanup(func() {
		after, _ := filepath.Glob("/run/netns/cni-*")
		for _, f := range after {
			if !slices.Contains(netnsBefore, f) {
				unix.Unmount(f, unix.MNT_DETACH)
				os.Remove(f)
			}
		}
		for _, p := range fresh {
			unmountUnder(p)
			os.RemoveAll(p)
		}
		for _, node := range []string{"n1", "n2"} {
			removeCgroups("/weft-e2e-" + node)
		}
		unmountUnder(dataDir)
		os.RemoveAll(dataDir)
		cleanupMountNS()
	})
	// The host-side mount points of the nodes' paths.
	for _, p := range nodePaths {
		if err := os.MkdirAll(p.host, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	lab.Cleanup(prefix, labDir) // leftovers of a crashed run
	cleanupMountNS()
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Prefix: prefix, Dir: labDir, BinDir: wbin, Nodes: 2, Sites: 2, External: []string{"n1", "n2"}, Transport: "vxlan"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		start := time.Now()
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		t.Logf("lab down in %s", time.Since(start).Round(100*time.Millisecond))
	})
	if err := setupMountNSDir(); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, root: t, lab: l, kbin: kbin, wbin: wbin, dir: filepath.Join(labDir, "k8s"), kubelet: map[string]*proc{}, kubeProxy: map[string]*proc{}, mntns: map[string]string{}}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.started {
				t.Logf("--- %s (last lines)\n%s", p.name, tailFile(filepath.Join(c.dir, p.name+".log"), 15))
			}
			if out, err := c.kubectl("", "get", "pods", "-A", "-o", "wide"); err == nil {
				t.Logf("--- pods\n%s", out)
			}
			if out, err := c.kubectl("", "logs", "-n", "weft-system", "--tail=20", "-l", "app.kubernetes.io/name=weft", "--all-containers", "--prefix"); err == nil {
				t.Logf("--- weft pods (last lines)\n%s", out)
			}
		}
	})

	c.controlPlane()
	t.Logf("control plane ready after %s", time.Since(total).Round(time.Second))
	t.Run("DryRunManifests", c.dryRun)

	imgDir := filepath.Join(c.dir, "images")
	os.MkdirAll(imgDir, 0o755)
	version := os.Getenv("WEFT_VERSION") // make test-kube: the Makefile's VERSION
	if version == "" {
		version = "e2e"
	}
	start := time.Now()
	c.images, err = buildImages(imgDir, mustAbs(t, "../.."), version)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(c.images.tarballs[2]); err == nil {
		t.Logf("images built in %s; %s is %.1f MB", time.Since(start).Round(100*time.Millisecond), c.images.weftRef, float64(fi.Size())/1e6)
	}

	for _, n := range []string{"n1", "n2"} {
		c.startNode(n)
	}
	// Before weft: the kubelets run and the Nodes exist, without pod
	// CIDRs yet (no node IPAM so far); no CNI config is installed, so
	// neither Node is Ready.
	for _, n := range []string{"n1", "n2"} {
		c.eventually("Node "+n+" registered, not Ready for want of a CNI", 60*time.Second, func() error {
			out, err := c.kubectl("", "get", "node", n, "-o", `jsonpath={.spec.podCIDR}|{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].message}`)
			if err != nil {
				return err
			}
			cidr, ready, _ := strings.Cut(out, "|")
			if cidr != "" {
				t.Fatalf("Node %s has pod CIDR %s before node IPAM runs", n, cidr)
			}
			if !strings.HasPrefix(ready, "False ") || !strings.Contains(strings.ToLower(ready), "cni") {
				return fmt.Errorf("Ready condition %q", ready)
			}
			return nil
		})
	}
	for _, n := range []string{"n1", "n2"} {
		c.eventually("kube-proxy "+n+" programs the kubernetes Service", 60*time.Second, func() error {
			out, err := c.inNode(n, "iptables-save", "-t", "nat")
			if err != nil {
				return fmt.Errorf("iptables-save: %v: %s", err, out)
			}
			if !strings.Contains(string(out), "-d "+kubernetesVIP+"/32") {
				return fmt.Errorf("no rule for %s in the nat table yet", kubernetesVIP)
			}
			return nil
		})
		out, err := c.inNode(n, "/bin/busybox", "sh", "-c", probeScript("/bin/busybox nc", kubernetesVIP, "443", "HTTPS server"))
		if err != nil {
			t.Fatalf("node %s to %s:443 (the kubernetes Service): %v: %s", n, kubernetesVIP, err, out)
		}
		t.Logf("node %s reaches the API server at %s:443: %s", n, kubernetesVIP, strings.TrimSpace(string(out)))
	}
	t.Logf("nodes up, weft not yet installed, after %s", time.Since(total).Round(time.Second))

	c.install()
	// weftd runs on both nodes, but their Nodes have no pod CIDR: it
	// waits, not ready (readiness probe, /readyz 503), and weft-cni
	// STATUS fails, so the runtime would wire no pod.
	for _, n := range []string{"n1", "n2"} {
		c.eventually("weftd running on "+n, 90*time.Second, func() error {
			out, err := c.kubectl("", "get", "pods", "-n", "weft-system", "--field-selector", "spec.nodeName="+n, "-o",
				`jsonpath={.items[0].status.initContainerStatuses[0].state.terminated.exitCode} {.items[0].status.containerStatuses[0].state.running.startedAt} {.items[0].status.containerStatuses[0].ready}`)
			if err != nil {
				return err
			}
			if f := strings.Fields(out); len(f) != 3 || f[0] != "0" || f[2] != "false" {
				return fmt.Errorf("weft pod: install-cni exit, weftd running since, ready: %q", out)
			}
			return c.readyzIs(n, http.StatusServiceUnavailable)
		})
		if err := c.cniStatus(n); err == nil {
			t.Fatalf("%s: weft-cni STATUS succeeded before weftd knew the pod CIDR", n)
		}
	}
	t.Logf("weftd waits for the pod CIDRs (not ready, /readyz 503, STATUS fails) after %s; node IPAM on", time.Since(total).Round(time.Second))
	c.startControllerManager(true)
	c.rollout()
	c.noRestarts()
	t.Logf("weft installed (DaemonSet rolled out) after %s", time.Since(total).Round(time.Second))

	cidrs := map[string]netip.Prefix{}
	shipped, err := os.ReadFile("../cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	plugin, err := os.ReadFile(filepath.Join(c.images.weftBin, "weft-cni"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		c.eventually("Node "+n+" Ready", 90*time.Second, func() error {
			out, err := c.kubectl("", "get", "node", n, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.podCIDR}`)
			if err != nil {
				return err
			}
			f := strings.Fields(out)
			if len(f) != 2 || f[0] != "True" {
				return fmt.Errorf("ready/podCIDR: %q", out)
			}
			cidrs[n] = netip.MustParsePrefix(f[1])
			return nil
		})
		// What the init container installed on this node: the image's
		// weft-cni, byte for byte, and the shipped conflist.
		got, err := os.ReadFile(filepath.Join(c.nodeDir(n), "cni-bin", "weft-cni"))
		if err != nil || !bytes.Equal(got, plugin) {
			t.Fatalf("%s: /opt/cni/bin/weft-cni is not the image's weft-cni (%v)", n, err)
		}
		var inst, ship any
		conf, err := os.ReadFile(filepath.Join(c.nodeDir(n), "net.d", "10-weft.conflist"))
		if err != nil || json.Unmarshal(conf, &inst) != nil || json.Unmarshal(shipped, &ship) != nil || !reflect.DeepEqual(inst, ship) {
			t.Fatalf("%s: /etc/cni/net.d/10-weft.conflist is not deploy/cni/10-weft.conflist (%v):\n%s", n, err, conf)
		}
		c.eventually("weftd "+n+" ready", 30*time.Second, func() error {
			if code := c.readyz(n); code != http.StatusOK {
				return fmt.Errorf("/readyz %d", code)
			}
			return c.cniStatus(n)
		})
		// The weftd running is the one built here: the version make
		// stamps in, read from its metrics (the DaemonSet's --metrics-addr).
		_, tag, _ := strings.Cut(c.images.weftRef, image.Repository+":")
		metrics, err := c.inNode(n, "/bin/busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:9995/metrics")
		if err != nil || !strings.Contains(string(metrics), `version="`+tag+`"`) {
			t.Fatalf("%s: weftd's metrics do not name version %s (%v):\n%s", n, tag, err, grepLines(string(metrics), "weft_build_info"))
		}
		st := c.status(n)
		if st.Self.PodCIDRs[0] != cidrs[n].String() {
			t.Fatalf("%s: weftd runs %v, Node has %s", n, st.Self.PodCIDRs, cidrs[n])
		}
		ann := c.mustKubectl("", "get", "node", n, "-o", `jsonpath={.metadata.annotations.weft\.dev/vtep-mac} {.metadata.annotations.weft\.dev/underlay-addr}`)
		if want := st.Self.VTEPMAC + " " + l.Node(n).UnderlayAddr; strings.TrimSpace(ann) != want {
			t.Fatalf("%s annotations %q, want %q", n, ann, want)
		}
		c.eventually("Node "+n+" NetworkUnavailable=False", 30*time.Second, func() error {
			out, err := c.kubectl("", "get", "node", n, "-o", `jsonpath={.status.conditions[?(@.type=="NetworkUnavailable")].status} {.status.conditions[?(@.type=="NetworkUnavailable")].reason}`)
			if err != nil {
				return err
			}
			if strings.TrimSpace(out) != "False WeftIsUp" {
				return fmt.Errorf("NetworkUnavailable: %q", out)
			}
			return nil
		})
	}
	t.Logf("nodes ready, pod CIDRs %v, after %s", cidrs, time.Since(total).Round(time.Second))
	// weftd did all of the above (read Nodes, patched its Node and its
	// status) as system:serviceaccount:weft-system:weft, the only
	// credentials its pod has; that identity may do nothing else.
	sa := "--as=system:serviceaccount:weft-system:weft"
	for _, q := range []struct {
		args []string
		want string
	}{
		{[]string{"patch", "nodes"}, "yes"},
		{[]string{"patch", "nodes", "--subresource=status"}, "yes"},
		{[]string{"delete", "nodes"}, "no"},
		// --network-policy (on in the DaemonSet) reads pods,
		// namespaces and policies, and changes none.
		{[]string{"watch", "pods", "-A"}, "yes"},
		{[]string{"list", "networkpolicies.networking.k8s.io", "-A"}, "yes"},
		{[]string{"delete", "pods", "-A"}, "no"},
		{[]string{"create", "networkpolicies.networking.k8s.io", "-A"}, "no"},
		{[]string{"get", "secrets", "-n", "weft-system"}, "no"},
		{[]string{"update", "nodes"}, "no"},
	} {
		out, _ := c.kubectl("", append([]string{"auth", "can-i", sa}, q.args...)...)
		if strings.TrimSpace(out) != q.want {
			t.Errorf("weft's ServiceAccount can-i %v: %q, want %s", q.args, strings.TrimSpace(out), q.want)
		}
	}
	c.eventually("default ServiceAccount", 30*time.Second, func() error {
		_, err := c.kubectl("", "get", "serviceaccount", "default")
		return err
	})

	webIP := c.runPod("web", "n2", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www", false, cidrs["n2"])
	// A pod reaches the API server through the kubernetes Service:
	// kube-proxy's DNAT, then weftd's masquerade (the API server's address
	// is outside the cluster CIDR).
	c.runPod("client-apiserver", "n1", probeScript("nc", kubernetesVIP, "443", "HTTPS server"), true, cidrs["n1"])

	t.Run("VXLAN", func(t *testing.T) {
		c.waitTransport("n1", "n2", "vxlan")
		c.waitTransport("n2", "n1", "vxlan")
		c.runPod("client-vxlan", "n1", fetch(webIP), true, cidrs["n1"])
	})

	// Sites from the Nodes' zone label (weftd --site-label's default):
	// wireguard-across-sites gives WireGuard between two zones and VXLAN
	// inside one.
	t.Run("SitesFromZones", func(t *testing.T) {
		for _, tc := range []struct {
			zone1, zone2, want string
		}{{"zone-a", "zone-b", "wireguard"}, {"zone-a", "zone-a", "vxlan"}} {
			c.mustKubectl("", "label", "--overwrite", "node", "n1", "topology.kubernetes.io/zone="+tc.zone1)
			c.mustKubectl("", "label", "--overwrite", "node", "n2", "topology.kubernetes.io/zone="+tc.zone2)
			c.setPolicy("wireguard-across-sites")
			if st := c.status("n1"); st.Self.Site != tc.zone1 {
				t.Fatalf("n1's site %q, want its zone %q", st.Self.Site, tc.zone1)
			}
			c.waitTransport("n1", "n2", tc.want)
			c.waitTransport("n2", "n1", tc.want)
			c.runPod("client-zones-"+tc.want, "n1", fetch(webIP), true, cidrs["n1"])
		}
	})

	t.Run("WireGuard", func(t *testing.T) {
		c.setPolicy("wireguard")
		c.waitTransport("n1", "n2", "wireguard")
		c.waitTransport("n2", "n1", "wireguard")
		key := c.mustKubectl("", "get", "node", "n1", "-o", `jsonpath={.metadata.annotations.weft\.dev/wg-public-key}`)
		if st := c.status("n1"); key == "" || key != st.Self.WGPublicKey {
			t.Fatalf("wg-public-key annotation %q, weftd has %q", key, st.Self.WGPublicKey)
		}
		// The metrics move with the traffic: n1's WireGuard bytes to n2.
		sentBefore := c.metric("n1", `weft_wireguard_sent_bytes_total{peer="n2"}`)
		c.runPod("client-wireguard", "n1", fetch(webIP), true, cidrs["n1"])
		c.eventually("n1's WireGuard bytes to n2 counted", 10*time.Second, func() error {
			if after := c.metric("n1", `weft_wireguard_sent_bytes_total{peer="n2"}`); after <= sentBefore {
				return fmt.Errorf("weft_wireguard_sent_bytes_total{peer=n2} %v, before the request %v", after, sentBefore)
			}
			return nil
		})
		c.noRestarts()
	})

	// A rolling update of the DaemonSet (hand-offs) under pod traffic.
	t.Run("RolloutUnderTraffic", func(t *testing.T) { c.rolloutUnderTraffic(t, cidrs) })

	t.Run("ServicesAndDNS", c.servicesAndDNS)
	t.Run("NetworkPolicy", c.networkPolicy)
	if conformanceWanted() {
		t.Run("Conformance", c.conformance)
	}

	// Pods go before the kubelets stop, so nothing is left in containerd.
	c.mustKubectl("", "delete", "pods", "--all", "--grace-period=1", "--wait=true", "--timeout=90s")

	t.Run("NodeDeletePurgesPeer", func(t *testing.T) {
		// The kubelet would register n2 again; stop it first. n2's weftd
		// (its DaemonSet pod's container) keeps running and gossiping:
		// only the Node object goes.
		c.kubelet["n2"].name += "-stopped"
		c.kubelet["n2"].stop()
		c.waitTransport("n1", "n2", "wireguard")
		n2Key := c.status("n2").Self.WGPublicKey
		if peers := c.wgPeers("n1"); !slices.Contains(peers, n2Key) {
			t.Fatalf("n1's WireGuard device lacks n2's key %s before the delete: %v", n2Key, peers)
		}
		start := time.Now()
		c.mustKubectl("", "delete", "node", "n2", "--wait=true")
		d := c.eventually("n2 gone from n1's routes", 15*time.Second, func() error {
			for _, p := range c.status("n1").Peers {
				if p.Name == "n2" && p.Transport != "-" {
					return fmt.Errorf("n2 still routed over %s (state %s)", p.Transport, p.State)
				}
			}
			return nil
		})
		for _, p := range c.status("n1").Peers {
			if p.Name == "n2" && p.State != "no-node" {
				t.Errorf("n2 state %q, want no-node", p.State)
			}
		}
		c.eventually("n2's key gone from n1's WireGuard device", 5*time.Second, func() error {
			if peers := c.wgPeers("n1"); slices.Contains(peers, n2Key) {
				return fmt.Errorf("wg peers %v", peers)
			}
			return nil
		})
		if _, err := c.tryStatus("n2"); err != nil {
			t.Fatalf("n2's weftd stopped answering (%v); the purge must come from the Node watch, not from gossip", err)
		}
		t.Logf("n2 purged from n1's routes %s after its Node was deleted (%s after the delete call)", d.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
	})
	t.Logf("TestKubernetes body took %s", time.Since(total).Round(time.Second))
}

// fetch is a client script: HTTP GET of the web pod with busybox nc
// (Debian's static busybox wget crashes in a rootfs without glibc's NSS
// files), retried for 20 s, exit 0 once the answer came back.
func fetch(ip string) string { return probeScript("nc", ip, "8080", "hello-from") }

// probeScript sends a plain HTTP/1.0 GET to host:port with nc (busybox's:
// "nc" in a pod, "/bin/busybox nc" on a node) until the answer contains
// want, for up to 20 s; it exits 0 then, and prints the matching line.
// Against the API server's TLS port the answer is Go's "Client sent an
// HTTP request to an HTTPS server.": proof that the connection reached the
// API server, without a TLS client in the pod. It writes no file.
func probeScript(nc, host, port, want string) string {
	return `i=0; while [ $i -lt 40 ]; do out=$(printf 'GET / HTTP/1.0\r\n\r\n' | ` + nc + ` -w 3 ` + host + ` ` + port + ` 2>&1); case "$out" in *'` + want + `'*) echo "$out" | grep '` + want + `'; exit 0;; esac; i=$((i+1)); sleep 0.5; done; echo "$out"; exit 1`
}

// pki writes a CA (ca.crt) and the API server's serving certificate
// signed by it (apiserver.crt, apiserver.key) into dir. The certificate
// names every address clients use: the kubernetes Service's ClusterIP
// (in-cluster clients: weftd), the router's site addresses (kubelets,
// kube-proxy) and 127.0.0.1 (kubectl in the router namespace). The CA is
// what kube-controller-manager publishes as kube-root-ca.crt, the ca.crt
// of every ServiceAccount token volume.
func pki(dir string, ips []net.IP) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft-e2e-ca"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: ips, DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	for name, b := range map[string]*pem.Block{"ca.crt": {Type: "CERTIFICATE", Bytes: caDER}, "apiserver.crt": {Type: "CERTIFICATE", Bytes: der}, "apiserver.key": {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// controlPlane starts etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler in the router namespace.
func (c *cluster) controlPlane() {
	t := c.t
	rtr := prefix + "-rtr"
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	writeFile(t, filepath.Join(c.dir, "sa.key"), string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})), 0o600)
	writeFile(t, filepath.Join(c.dir, "sa.pub"), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})), 0o644)
	writeFile(t, filepath.Join(c.dir, "tokens.csv"), adminToken+",admin,admin,system:masters\n", 0o600)
	pkiDir := filepath.Join(c.dir, "pki")
	os.MkdirAll(pkiDir, 0o755)
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(kubernetesVIP)}
	for _, s := range c.lab.Router.Sites {
		ips = append(ips, net.ParseIP(s.Gateway))
	}
	if err := pki(pkiDir, ips); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(pkiDir, "ca.crt")
	writeFile(t, filepath.Join(c.dir, "admin.kubeconfig"), kubeconfig("https://127.0.0.1:6443", ca), 0o600)

	c.start("etcd", rtr, "", filepath.Join(c.kbin, "etcd"), "--name", "default", "--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--unsafe-no-fsync")
	// The normal (lease) endpoint reconciler publishes the advertise
	// address, 192.0.2.1:6443, as the kubernetes Service's endpoint: the
	// router's site1 address, which both nodes reach (n1 on its link, n2
	// through the router).
	c.start("kube-apiserver", rtr, "", filepath.Join(c.kbin, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0", "--advertise-address="+c.lab.Router.Sites[0].Gateway, "--secure-port=6443",
		"--tls-cert-file="+filepath.Join(pkiDir, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(pkiDir, "apiserver.key"),
		"--token-auth-file="+filepath.Join(c.dir, "tokens.csv"),
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		"--service-account-key-file="+filepath.Join(c.dir, "sa.pub"), "--service-account-signing-key-file="+filepath.Join(c.dir, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range="+serviceCIDR+","+serviceCIDR6,
		"--kubelet-preferred-address-types=InternalIP")
	c.eventually("kube-apiserver /readyz", 90*time.Second, func() error {
		out, err := c.kubectl("", "get", "--raw", "/readyz")
		if err == nil && strings.TrimSpace(out) != "ok" {
			err = fmt.Errorf("readyz %q", out)
		}
		return err
	})
	c.eventually("kubernetes Service endpoint", 30*time.Second, func() error {
		out, err := c.kubectl("", "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes", "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}:{.items[*].ports[*].port}")
		if err == nil && strings.TrimSpace(out) != c.lab.Router.Sites[0].Gateway+":6443" {
			err = fmt.Errorf("endpoints %q", out)
		}
		return err
	})
	admin := filepath.Join(c.dir, "admin.kubeconfig")
	c.startControllerManager(false)
	c.start("kube-scheduler", rtr, "", filepath.Join(c.kbin, "kube-scheduler"), "--kubeconfig="+admin, "--leader-elect=false", "--bind-address=127.0.0.1")
}

// startControllerManager starts kube-controller-manager, with node IPAM
// (--allocate-node-cidrs) or without it: the test first runs every other
// controller (the DaemonSet's among them), so that weftd starts on Nodes
// that have no pod CIDR yet, and then restarts it with node IPAM.
func (c *cluster) startControllerManager(ipam bool) {
	if c.kcm != nil {
		c.kcm.name += "-stopped"
		c.kcm.stop()
	}
	name, controllers := "kube-controller-manager", "*"
	if !ipam {
		name, controllers = "kube-controller-manager-no-ipam", "*,-node-ipam-controller"
	}
	c.kcm = c.start(name, prefix+"-rtr", "", filepath.Join(c.kbin, "kube-controller-manager"), "--kubeconfig="+filepath.Join(c.dir, "admin.kubeconfig"),
		"--allocate-node-cidrs=true", "--cluster-cidr="+clusterCIDR+","+clusterCIDR6, "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64", "--controllers="+controllers,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--service-account-private-key-file="+filepath.Join(c.dir, "sa.key"),
		"--root-ca-file="+filepath.Join(c.dir, "pki", "ca.crt"))
}

func (c *cluster) dryRun(t *testing.T) {
	// Namespaced objects need their namespace to exist, also for a
	// server-side dry run; the namespace is the one object made for real.
	c.mustKubectl("", "create", "namespace", "weft-system")
	out, err := c.kubectl("", "apply", "--dry-run=server", "-k", mustAbs(t, "../"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"daemonset.apps/weft", "clusterrole.rbac.authorization.k8s.io/weft", "configmap/weft-config", "secret/weft-gossip-key", "serviceaccount/weft"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %s:\n%s", want, out)
		}
	}
	t.Logf("kubectl apply --dry-run=server -k deploy/:\n%s", out)
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (c *cluster) nodeDir(n string) string { return filepath.Join(dataDir, n) }

// install applies the test's overlay of deploy/ (kubectl apply -k): the
// image tag of the image built here, a gossip key of its own instead of
// the public placeholder, and cluster-cidr with both families (the
// cluster is dual-stack, as a user sets weft-config to match
// kube-controller-manager's --cluster-cidr); nothing else differs.
func (c *cluster) install() {
	t := c.t
	k, err := peer.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	c.overlay = filepath.Join(c.dir, "overlay")
	deploy, err := filepath.Rel(c.overlay, mustAbs(t, ".."))
	if err != nil {
		t.Fatal(err)
	}
	_, tag, _ := strings.Cut(c.images.weftRef, image.Repository+":")
	writeFile(t, filepath.Join(c.overlay, "kustomization.yaml"), `# test-kube's overlay of deploy/: the image built by this run, a test gossip key.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - `+deploy+`
images:
  - name: `+image.Repository+`
    newTag: "`+tag+`"
patches:
  - patch: |-
      apiVersion: v1
      kind: Secret
      metadata:
        name: weft-gossip-key
        namespace: weft-system
      stringData:
        gossip.key: "`+peer.EncodeKey(k)+`"
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: weft-config
        namespace: weft-system
      data:
        cluster-cidr: "`+clusterCIDR+","+clusterCIDR6+`"
`, 0o644)
	out := c.mustKubectl("", "apply", "-k", c.overlay)
	t.Logf("kubectl apply -k (overlay of deploy/):\n%s", out)
	got := c.mustKubectl("", "get", "daemonset", "weft", "-n", "weft-system", "-o", `jsonpath={.spec.template.spec.initContainers[0].image} {.spec.template.spec.containers[0].image}`)
	if want := c.images.weftRef + " " + c.images.weftRef; got != want {
		t.Fatalf("DaemonSet images %q, want %q", got, want)
	}
}

// rollout waits until the DaemonSet's pods are all updated and ready.
func (c *cluster) rollout() {
	c.t.Helper()
	start := time.Now()
	c.mustKubectl("", "rollout", "status", "daemonset/weft", "-n", "weft-system", "--timeout=180s")
	c.t.Logf("DaemonSet rolled out in %s", time.Since(start).Round(100*time.Millisecond))
}

// noRestarts fails unless every container of the DaemonSet's current pods
// has run without a restart (no crash, no failed liveness probe).
func (c *cluster) noRestarts() {
	c.t.Helper()
	out := c.mustKubectl("", "get", "pods", "-n", "weft-system", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[*].restartCount}{"\n"}{end}`)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) != 2 || f[1] != "0" {
			c.t.Fatalf("weft pod restarts (pod, weftd restarts): %q", out)
		}
	}
}

// setPolicy sets the ConfigMap's transport-policy and rolls the DaemonSet
// (`kubectl rollout restart`: its update strategy, one node at a time),
// waiting until both weftds are ready under the new policy.
func (c *cluster) setPolicy(policy string) {
	c.t.Helper()
	patch, _ := json.Marshal(map[string]any{"data": map[string]string{"transport-policy": policy}})
	c.mustKubectl("", "patch", "configmap", "weft-config", "-n", "weft-system", "--type=merge", "-p", string(patch))
	c.mustKubectl("", "rollout", "restart", "daemonset/weft", "-n", "weft-system")
	c.rollout()
	for _, n := range []string{"n1", "n2"} {
		c.eventually("weftd "+n+" ready again", 30*time.Second, func() error {
			if code := c.readyz(n); code != http.StatusOK {
				return fmt.Errorf("/readyz %d", code)
			}
			return nil
		})
	}
}

// startKubeProxy starts n's kube-proxy in mode (iptables or nftables).
// In a network namespace other than the host's the conntrack table size
// is the host's (read-only here), so the conntrack settings are left as
// they are (0).
func (c *cluster) startKubeProxy(n, mode string) {
	d := c.nodeDir(n)
	conf := filepath.Join(d, "kube-proxy-"+mode+".yaml")
	writeFile(c.t, conf, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: `+filepath.Join(d, "kubeconfig")+`
hostnameOverride: `+n+`
bindAddress: `+c.lab.Node(n).UnderlayAddr+`
clusterCIDR: `+clusterCIDR+","+clusterCIDR6+`
mode: `+mode+`
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, 0o644)
	c.kubeProxy[n] = c.start("kube-proxy-"+mode+"-"+n, prefix+"-"+n, c.mntns[n], filepath.Join(c.kbin, "kube-proxy"), "--config", conf)
}

// startNode gives n its mount namespace and starts containerd (images
// imported), kube-proxy and the kubelet there. The node's CNI bin dir
// holds the reference plugins a host provides (loopback, and the portmap
// and bandwidth the shipped conflist chains), linked from Debian's
// /usr/lib/cni; weft-cni and its conflist come from the DaemonSet.
func (c *cluster) startNode(n string) {
	t := c.t
	d := c.nodeDir(n)
	ns := prefix + "-" + n
	site := c.lab.Node(n).Site
	gw := ""
	for _, s := range c.lab.Router.Sites {
		if s.Name == site {
			gw = s.Gateway
		}
	}
	writeFile(t, filepath.Join(d, "kubeconfig"), kubeconfig("https://"+gw+":6443", filepath.Join(c.dir, "pki", "ca.crt")), 0o600)
	mnt := c.mountNS(n)
	c.mntns[n] = mnt
	for _, p := range []string{"loopback", "portmap", "bandwidth"} {
		if err := os.Symlink("/usr/lib/cni/"+p, filepath.Join(d, "cni-bin", p)); err != nil {
			t.Fatal(err)
		}
	}

	sock := filepath.Join(d, "containerd", "containerd.sock")
	writeFile(t, filepath.Join(d, "containerd", "config.toml"), fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[6]q
        SystemdCgroup = false
  # The standard paths, which in the node's mount namespace are its own.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
`, filepath.Join(d, "containerd", "root"), filepath.Join(d, "containerd", "state"), sock, filepath.Join(d, "containerd", "opt"),
		pauseImage, filepath.Join(d, "containerd", "runc")), 0o644)
	c.start("containerd-"+n, ns, mnt, "containerd", "--config", filepath.Join(d, "containerd", "config.toml"))
	c.eventually("containerd "+n, 30*time.Second, func() error {
		_, err := os.Stat(sock)
		return err
	})
	// Registered after containerd's own stop, so it runs before it: the
	// containers the kubelet left (the DaemonSet's pod; n2's, whose Node
	// is deleted while its weftd runs) end by their IDs, through this
	// node's containerd.
	t.Cleanup(func() { removeContainers(t, sock) })
	for _, tarball := range c.images.tarballs {
		if out, err := exec.Command("ctr", "--address", sock, "-n", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
			t.Fatalf("ctr import %s: %v: %s", tarball, err, out)
		}
	}
	if out, err := exec.Command("ctr", "--address", sock, "-n", "k8s.io", "images", "ls", "-q").CombinedOutput(); err != nil || !strings.Contains(string(out), c.images.weftRef) {
		t.Fatalf("%s: containerd does not list %s after the import (%v): %s", n, c.images.weftRef, err, out)
	}
	ip := c.lab.Node(n).UnderlayAddr

	c.startKubeProxy(n, "iptables")

	if err := makeCgroups("/weft-e2e-" + n); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(d, "kubelet.yaml"), `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: `+ip+`
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
# Two kubelets share the host's cgroup v1 hierarchies: one root each.
cgroupRoot: /weft-e2e-`+n+`
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://`+sock+`
podLogsDir: `+filepath.Join(d, "pod-logs")+`
localStorageCapacityIsolation: false
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
maxPods: 20
# CoreDNS of the Services/DNS checks (testdata/coredns.yaml).
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
`, 0o644)
	c.kubelet[n] = c.start("kubelet-"+n, ns, mnt, filepath.Join(c.kbin, "kubelet"), "--config", filepath.Join(d, "kubelet.yaml"),
		"--kubeconfig", filepath.Join(d, "kubeconfig"), "--root-dir", filepath.Join(d, "kubelet"), "--cert-dir", filepath.Join(d, "kubelet", "pki"),
		"--node-ip", ip, "--hostname-override", n)
}

// removeContainers ends every task of the containerd at sock (SIGKILL,
// by container ID) and deletes them, so no container outlives the test.
func removeContainers(t *testing.T, sock string) {
	start := time.Now()
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command("ctr", append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := ctr("tasks", "ls", "-q")
	if err != nil {
		t.Logf("ctr tasks ls: %v: %s", err, out)
		return
	}
	ids := strings.Fields(out)
	for _, id := range ids {
		ctr("tasks", "kill", "-s", "SIGKILL", id)
	}
	// containerd's CRI plugin deletes a task itself once it exits; what
	// is still listed is deleted here, until none is left.
	var left []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, err := ctr("tasks", "ls", "-q")
		if left = strings.Fields(out); err != nil || len(left) == 0 || time.Now().After(deadline) {
			break
		}
		for _, id := range left {
			ctr("tasks", "delete", id)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(left) != 0 {
		t.Errorf("containerd %s still runs tasks %v", sock, left)
	}
	t.Logf("containers left by the kubelet of %s: %d, ended in %s", filepath.Base(filepath.Dir(filepath.Dir(sock))), len(ids), time.Since(start).Round(100*time.Millisecond))
}

// runPod creates a pod on node (through the scheduler, by nodeSelector)
// and returns its IP, which must lie in cidr. done: wait for Succeeded
// (a client that exits 0 once its request worked) instead of Ready.
func (c *cluster) runPod(name, node, script string, done bool, cidr netip.Prefix) string {
	t := c.t
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": "default"},
		"spec": map[string]any{
			"nodeSelector":                  map[string]string{"kubernetes.io/hostname": node},
			"tolerations":                   []map[string]string{{"operator": "Exists"}},
			"restartPolicy":                 "Never",
			"automountServiceAccountToken":  false,
			"enableServiceLinks":            false,
			"terminationGracePeriodSeconds": 1,
			"containers": []map[string]any{{
				"name": name, "image": busyboxImage, "imagePullPolicy": "Never",
				"command": []string{"/bin/sh", "-c", script},
			}},
		},
	}
	b, _ := json.Marshal(pod)
	c.mustKubectl(string(b), "apply", "-f", "-")
	var ip string
	c.eventually("pod "+name, 120*time.Second, func() error {
		out, err := c.kubectl("", "get", "pod", name, "-o", "jsonpath={.status.phase} {.status.podIP} {.spec.nodeName} {.status.containerStatuses[0].ready}")
		if err != nil {
			return err
		}
		f := strings.Fields(out)
		if len(f) < 4 {
			return fmt.Errorf("pod %s: %q", name, out)
		}
		if f[0] == "Failed" {
			logs, _ := c.kubectl("", "logs", name)
			t.Fatalf("pod %s failed: %s; logs: %s", name, out, logs)
		}
		if (done && f[0] != "Succeeded") || (!done && (f[0] != "Running" || f[3] != "true")) {
			return fmt.Errorf("pod %s: %q", name, out)
		}
		if f[2] != node {
			t.Fatalf("pod %s on %s, want %s", name, f[2], node)
		}
		ip = f[1]
		return nil
	})
	a, err := netip.ParseAddr(ip)
	if err != nil || !cidr.Contains(a) {
		t.Fatalf("pod %s IP %q is not in %s's pod CIDR %s", name, ip, node, cidr)
	}
	logs, _ := c.kubectl("", "logs", name)
	t.Logf("pod %s on %s: %s %s", name, node, ip, strings.TrimSpace(logs))
	return ip
}

// metric is the value of one series (name with its labels, as the
// exposition writes it) of node n's weftd metrics (:9995), 0 if absent.
func (c *cluster) metric(n, series string) float64 {
	c.t.Helper()
	out, err := c.inNode(n, "/bin/busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:9995/metrics")
	if err != nil {
		c.t.Fatalf("%s: metrics: %v: %s", n, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				c.t.Fatalf("%s: metric %s: %q", n, series, v)
			}
			return f
		}
	}
	return 0
}

// status asks node n's weftd over its control socket, which is in the
// node's own /run/weft.
func (c *cluster) status(n string) control.Status {
	c.t.Helper()
	st, err := c.tryStatus(n)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

func (c *cluster) tryStatus(n string) (control.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := control.Get(ctx, filepath.Join(c.nodeDir(n), "run", "weft", "weftd.sock"))
	if err != nil {
		return st, fmt.Errorf("status %s: %w", n, err)
	}
	return st, nil
}

func (c *cluster) waitTransport(from, to, transport string) {
	c.eventually(fmt.Sprintf("%s routes %s over %s", from, to, transport), 30*time.Second, func() error {
		st, err := c.tryStatus(from)
		if err != nil {
			return err
		}
		for _, p := range st.Peers {
			if p.Name == to {
				if p.Transport == transport {
					return nil
				}
				return fmt.Errorf("peer %s: transport %s state %s", to, p.Transport, p.State)
			}
		}
		return fmt.Errorf("no peer %s", to)
	})
}

// wgPeers lists the public keys of node n's WireGuard device, read by
// wireguard-tools over weftd's UAPI socket (in the node's own
// /var/run/wireguard, so wg runs in its mount namespace).
func (c *cluster) wgPeers(n string) []string {
	c.t.Helper()
	out, err := c.inNode(n, "wg", "show", wgName, "peers")
	if err != nil {
		c.t.Fatalf("%s: wg show %s peers: %v: %s", n, wgName, err, out)
	}
	return strings.Fields(string(out))
}

// readyz returns the HTTP status of weftd's /readyz on node n (0: none).
func (c *cluster) readyz(n string) int {
	out, err := exec.Command("nsenter", "--net=/run/netns/"+prefix+"-"+n, "--", "/bin/busybox", "wget", "-q", "-S", "-O", "/dev/null", "http://127.0.0.1:9993/readyz").CombinedOutput()
	s := string(out)
	switch {
	case strings.Contains(s, " 200 "):
		return http.StatusOK
	case strings.Contains(s, " 503 "):
		return http.StatusServiceUnavailable
	}
	if err != nil {
		return 0
	}
	return http.StatusOK
}

// readyzIs fails unless weftd's /readyz on node n answers code.
func (c *cluster) readyzIs(n string, code int) error {
	if got := c.readyz(n); got != code {
		return fmt.Errorf("/readyz %d, want %d", got, code)
	}
	return nil
}

// cniStatus runs the installed `weft-cni` STATUS with node n's network
// config (the shipped conflist's paths, seen from the host), as a CNI 1.1
// runtime would.
func (c *cluster) cniStatus(n string) error {
	d := c.nodeDir(n)
	conf := `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":"` + filepath.Join(d, "run", "weft") + `","dataDir":"` + filepath.Join(d, "lib", "weft", "ipam") + `"}`
	cmd := exec.Command(filepath.Join(d, "cni-bin", "weft-cni"))
	cmd.Env = []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + filepath.Join(d, "cni-bin")}
	cmd.Stdin = strings.NewReader(conf)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("weft-cni STATUS: %v: %s", err, out)
	}
	return nil
}

// unmountUnder lazily unmounts every mount point below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			mps = append(mps, f[1])
		}
	}
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
	for _, m := range mps {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// makeCgroups creates a kubelet's cgroup root in every v1 hierarchy (the
// kubelet refuses a cgroupRoot that does not exist); cpuset needs its cpus
// and mems copied from the parent before any task can join.
func makeCgroups(root string) error {
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hier {
		if fi, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil || fi.IsDir() || filepath.Base(h) == "unified" {
			continue
		}
		dir := filepath.Join(h, root)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s/%s: %w", dir, f, err)
				}
			}
		}
	}
	return nil
}

// removeCgroups removes a kubelet's cgroup root from every v1 hierarchy,
// deepest directories first (rmdir is the only way to delete a cgroup).
func removeCgroups(root string) {
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hier {
		top := filepath.Join(h, root)
		var dirs []string
		filepath.WalkDir(top, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}
