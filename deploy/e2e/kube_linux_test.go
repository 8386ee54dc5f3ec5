package e2e

// TestKubernetes runs weft as the CNI of two real kubelets.
//
// Topology (all in namespaces this test makes, TEST-NET addresses only):
//
//	wk8s-rtr  router + control plane: etcd, kube-apiserver (0.0.0.0:6443),
//	          kube-controller-manager (--allocate-node-cidrs), kube-scheduler
//	wk8s-n1   192.0.2.11 (site1): containerd, kubelet, weftd --kube
//	wk8s-n2   198.51.100.12 (site2): containerd, kubelet, weftd --kube
//
// The lab (overlay/lab) makes the namespaces with n1 and n2 as external
// nodes (no lab weftd); this test runs everything else with
// `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the
// cgroup mounts the kubelet needs).
//
// What it proves, in order: weft-cni STATUS fails and /readyz is 503 while
// the Node has no pod CIDR; both Nodes get CIDRs from the controller
// manager and weftd adopts them (node.json, annotations); pods scheduled on
// each node get addresses from those CIDRs and talk across the nodes over
// VXLAN, then, after restarting both weftds with the wireguard policy, over
// WireGuard; deleting Node n2 (its weftd still gossiping) takes n2 out of
// n1's routes within seconds. `kubectl apply --dry-run=server -k deploy/`
// passes against the same API server.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/overlay/control"
)

const (
	prefix      = "wk8s"
	labDir      = "/run/weft-kube-e2e"
	dataDir     = "/var/lib/weft-kube-e2e" // containerd roots: images need disk, not tmpfs
	clusterCIDR = "10.244.0.0/16"
	adminToken  = "weft-e2e-admin-token"
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
	weftd   map[string]*proc
	kubelet map[string]*proc
}

func needRoot(t *testing.T) {
	t.Helper()
	prereqtest.Netns(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "gcc", "libc6-dev", "busybox-static", "ip", "wg")
}

// start runs bin inside netns, logging to <name>.log; it is stopped (by
// PID: SIGTERM, then SIGKILL) when the test ends, in reverse start order.
func (c *cluster) start(name, netns string, bin string, args ...string) *proc {
	c.t.Helper()
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + netns, "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	c.started = append(c.started, p)
	c.t.Cleanup(func() { p.stop() })
	return p
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

func kubeconfig(server string) string {
	return `apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: ` + server + `
    insecure-skip-tls-verify: true
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
// whatever their flags say; the ones that did not exist before the test
// are removed after it.
var hostPathsKubeletTouches = []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd", "/etc/cni", "/opt/cni"}

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
	netnsBefore, _ := filepath.Glob("/run/netns/cni-*")
	t.Cleanup(func() {
		after, _ := filepath.Glob("/run/netns/cni-*")
		for _, n := range after {
			if !slices.Contains(netnsBefore, n) {
				exec.Command("ip", "netns", "del", filepath.Base(n)).Run()
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
	})

	lab.Cleanup(prefix, labDir) // leftovers of a crashed run
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Prefix: prefix, Dir: labDir, BinDir: wbin, Nodes: 2, Sites: 2, External: []string{"n1", "n2"}, Transport: "vxlan"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	c := &cluster{t: t, lab: l, kbin: kbin, wbin: wbin, dir: filepath.Join(labDir, "k8s"), weftd: map[string]*proc{}, kubelet: map[string]*proc{}}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.started {
				t.Logf("--- %s (last lines)\n%s", p.name, tailFile(filepath.Join(c.dir, p.name+".log"), 15))
			}
		}
	})

	c.controlPlane()
	t.Logf("control plane ready after %s", time.Since(total).Round(time.Second))
	t.Run("DryRunManifests", c.dryRun)

	images := filepath.Join(c.dir, "images")
	os.MkdirAll(images, 0o755)
	pauseTar, busyboxTar, err := buildImages(images)
	if err != nil {
		t.Fatal(err)
	}

	// weftd first: the Nodes do not exist yet, so it must wait, not ready.
	for _, n := range []string{"n1", "n2"} {
		c.prepareNode(n)
		c.startWeftd(n, "vxlan")
	}
	time.Sleep(2 * time.Second)
	for _, n := range []string{"n1", "n2"} {
		if err := c.cniStatus(n); err == nil {
			t.Fatalf("%s: weft-cni STATUS succeeded before weftd knew the pod CIDR", n)
		}
		if code := c.readyz(n); code != http.StatusServiceUnavailable {
			t.Fatalf("%s: /readyz = %d before the pod CIDR, want 503", n, code)
		}
	}
	for _, n := range []string{"n1", "n2"} {
		c.startNode(n, pauseTar, busyboxTar)
	}
	cidrs := map[string]netip.Prefix{}
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
		c.eventually("weftd "+n+" ready", 30*time.Second, func() error {
			if code := c.readyz(n); code != http.StatusOK {
				return fmt.Errorf("/readyz %d", code)
			}
			return c.cniStatus(n)
		})
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
	c.eventually("default ServiceAccount", 30*time.Second, func() error {
		_, err := c.kubectl("", "get", "serviceaccount", "default")
		return err
	})

	webIP := c.runPod("web", "n2", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www", false, cidrs["n2"])

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
			c.restartWeftd("wireguard-across-sites")
			if st := c.status("n1"); st.Self.Site != tc.zone1 {
				t.Fatalf("n1's site %q, want its zone %q", st.Self.Site, tc.zone1)
			}
			c.waitTransport("n1", "n2", tc.want)
			c.waitTransport("n2", "n1", tc.want)
			c.runPod("client-zones-"+tc.want, "n1", fetch(webIP), true, cidrs["n1"])
		}
	})

	t.Run("WireGuard", func(t *testing.T) {
		c.restartWeftd("wireguard")
		c.waitTransport("n1", "n2", "wireguard")
		c.waitTransport("n2", "n1", "wireguard")
		key := c.mustKubectl("", "get", "node", "n1", "-o", `jsonpath={.metadata.annotations.weft\.dev/wg-public-key}`)
		if st := c.status("n1"); key == "" || key != st.Self.WGPublicKey {
			t.Fatalf("wg-public-key annotation %q, weftd has %q", key, st.Self.WGPublicKey)
		}
		c.runPod("client-wireguard", "n1", fetch(webIP), true, cidrs["n1"])
	})

	// Pods go before the kubelets stop, so nothing is left in containerd.
	c.mustKubectl("", "delete", "pods", "--all", "--grace-period=1", "--wait=true", "--timeout=90s")

	t.Run("NodeDeletePurgesPeer", func(t *testing.T) {
		// The kubelet would register n2 again; stop it first. n2's weftd
		// keeps running and gossiping: only the Node object goes.
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
		if !c.weftd["n2"].alive() {
			t.Fatal("n2's weftd exited; the purge must come from the Node watch, not from gossip")
		}
		t.Logf("n2 purged from n1's routes %s after its Node was deleted (%s after the delete call)", d.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
	})
	t.Logf("TestKubernetes body took %s", time.Since(total).Round(time.Second))
}

// fetch is a client script: HTTP GET of the web pod with busybox nc
// (Debian's static busybox wget crashes in a rootfs without glibc's NSS
// files), retried for 20 s, exit 0 once the answer came back.
func fetch(ip string) string {
	return `i=0; while [ $i -lt 40 ]; do if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 ` + ip + ` 8080 > /tmp/out 2>&1 && grep -q hello-from /tmp/out; then grep hello-from /tmp/out; exit 0; fi; i=$((i+1)); sleep 0.5; done; cat /tmp/out; exit 1`
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
	writeFile(t, filepath.Join(c.dir, "admin.kubeconfig"), kubeconfig("https://127.0.0.1:6443"), 0o600)

	c.start("etcd", rtr, filepath.Join(c.kbin, "etcd"), "--name", "default", "--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--unsafe-no-fsync")
	c.start("kube-apiserver", rtr, filepath.Join(c.kbin, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0", "--advertise-address=192.0.2.1", "--secure-port=6443",
		"--cert-dir="+filepath.Join(c.dir, "pki"), "--token-auth-file="+filepath.Join(c.dir, "tokens.csv"),
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		"--service-account-key-file="+filepath.Join(c.dir, "sa.pub"), "--service-account-signing-key-file="+filepath.Join(c.dir, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none", "--kubelet-preferred-address-types=InternalIP")
	c.eventually("kube-apiserver /readyz", 90*time.Second, func() error {
		out, err := c.kubectl("", "get", "--raw", "/readyz")
		if err == nil && strings.TrimSpace(out) != "ok" {
			err = fmt.Errorf("readyz %q", out)
		}
		return err
	})
	admin := filepath.Join(c.dir, "admin.kubeconfig")
	c.start("kube-controller-manager", rtr, filepath.Join(c.kbin, "kube-controller-manager"), "--kubeconfig="+admin,
		"--allocate-node-cidrs=true", "--cluster-cidr="+clusterCIDR, "--node-cidr-mask-size=24", "--controllers=*",
		"--leader-elect=false", "--bind-address=127.0.0.1", "--service-account-private-key-file="+filepath.Join(c.dir, "sa.key"))
	c.start("kube-scheduler", rtr, filepath.Join(c.kbin, "kube-scheduler"), "--kubeconfig="+admin, "--leader-elect=false", "--bind-address=127.0.0.1")
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

// prepareNode writes the node's kubeconfig, CNI bin dir (weft-cni and the
// loopback plugin containerd calls for lo) and conflist.
func (c *cluster) prepareNode(n string) {
	t := c.t
	d := c.nodeDir(n)
	site := c.lab.Node(n).Site
	gw := ""
	for _, s := range c.lab.Router.Sites {
		if s.Name == site {
			gw = s.Gateway
		}
	}
	writeFile(t, filepath.Join(d, "kubeconfig"), kubeconfig("https://"+gw+":6443"), 0o600)
	bin := filepath.Join(d, "cni-bin")
	os.MkdirAll(bin, 0o755)
	b, err := os.ReadFile(filepath.Join(c.wbin, "weft-cni"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(bin, "weft-cni"), string(b), 0o755)
	os.Symlink("/usr/lib/cni/loopback", filepath.Join(bin, "loopback"))
	// containerd 1.6's libcni speaks CNI up to 1.0.0, so this conflist
	// says 1.0.0 and carries weft-cni alone (deploy/ chains portmap and
	// bandwidth for real clusters).
	writeFile(t, filepath.Join(d, "net.d", "10-weft.conflist"), `{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-cni","runDir":"`+filepath.Join(d, "run")+`","dataDir":"`+filepath.Join(d, "ipam")+`"}]}`, 0o644)
}

func (c *cluster) startWeftd(n, policy string) {
	d := c.nodeDir(n)
	name := "weftd-" + n + "-" + policy
	c.weftd[n] = c.start(name, prefix+"-"+n, filepath.Join(c.wbin, "weftd"),
		"--kubeconfig", filepath.Join(d, "kubeconfig"), "--name", n, "--cluster-cidr", clusterCIDR,
		"--gossip-key-file", c.lab.GossipKeyFile, "--run-dir", filepath.Join(d, "run"), "--state-dir", filepath.Join(d, "state"),
		"--transport-policy", policy, "--wg-name", prefix+"-"+n, "--health-addr", "127.0.0.1:9993", "--log-level", "debug")
}

// restartWeftd stops both nodes' weftd and starts them again under
// policy, waiting until both are ready.
func (c *cluster) restartWeftd(policy string) {
	for _, n := range []string{"n1", "n2"} {
		c.weftd[n].name += "-stopped"
		c.weftd[n].stop()
		c.startWeftd(n, policy)
	}
	for _, n := range []string{"n1", "n2"} {
		c.eventually("weftd "+n+" ready again", 30*time.Second, func() error {
			if code := c.readyz(n); code != http.StatusOK {
				return fmt.Errorf("/readyz %d", code)
			}
			return nil
		})
	}
}

// startNode starts containerd (images imported) and the kubelet of n.
func (c *cluster) startNode(n, pauseTar, busyboxTar string) {
	t := c.t
	d := c.nodeDir(n)
	ns := prefix + "-" + n
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
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
`, filepath.Join(d, "containerd", "root"), filepath.Join(d, "containerd", "state"), sock, filepath.Join(d, "containerd", "opt"),
		pauseImage, filepath.Join(d, "containerd", "runc"), filepath.Join(d, "cni-bin"), filepath.Join(d, "net.d")), 0o644)
	c.start("containerd-"+n, ns, "containerd", "--config", filepath.Join(d, "containerd", "config.toml"))
	c.eventually("containerd "+n, 30*time.Second, func() error {
		_, err := os.Stat(sock)
		return err
	})
	for _, tarball := range []string{pauseTar, busyboxTar} {
		if out, err := exec.Command("ctr", "--address", sock, "-n", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
			t.Fatalf("ctr import %s: %v: %s", tarball, err, out)
		}
	}
	ip := c.lab.Node(n).UnderlayAddr
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
`, 0o644)
	c.kubelet[n] = c.start("kubelet-"+n, ns, filepath.Join(c.kbin, "kubelet"), "--config", filepath.Join(d, "kubelet.yaml"),
		"--kubeconfig", filepath.Join(d, "kubeconfig"), "--root-dir", filepath.Join(d, "kubelet"), "--cert-dir", filepath.Join(d, "kubelet", "pki"),
		"--node-ip", ip, "--hostname-override", n)
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

// status asks node n's weftd over its control socket.
func (c *cluster) status(n string) control.Status {
	c.t.Helper()
	st, err := c.tryStatus(n)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

func (c *cluster) tryStatus(n string) (control.Status, error) {
	var st control.Status
	sock := filepath.Join(c.nodeDir(n), "run", "weftd.sock")
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://weftd/v1/status")
	if err != nil {
		return st, fmt.Errorf("status %s: %w", n, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("status %s: %w: %s", n, err, b)
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
// wireguard-tools over weftd's UAPI socket.
func (c *cluster) wgPeers(n string) []string {
	c.t.Helper()
	out, err := exec.Command("wg", "show", prefix+"-"+n, "peers").CombinedOutput()
	if err != nil {
		c.t.Fatalf("wg show %s-%s peers: %v: %s", prefix, n, err, out)
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

// cniStatus runs `weft-cni` STATUS with node n's network config, as a
// CNI 1.1 runtime would.
func (c *cluster) cniStatus(n string) error {
	d := c.nodeDir(n)
	conf := `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":"` + filepath.Join(d, "run") + `","dataDir":"` + filepath.Join(d, "ipam") + `"}`
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
