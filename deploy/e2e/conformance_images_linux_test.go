package e2e

// Tests of the images, the CoreDNS manifest, the suite's flags and its
// report reading: no cluster needed. The image tests read the tarballs
// back with go-containerregistry (what `ctr images import` gets) and, as
// root, run the images' programs in a chroot of their layer, so a missing
// library or applet fails here rather than inside a pod.

import (
	"archive/tar"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// readImage loads ref from a docker-archive and returns its config's
// entrypoint and command and its layer's entries by path.
func readImage(t *testing.T, path, ref string) (entrypoint, cmd []string, entries map[string]*tar.Header, layer []byte) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("%s in %s: %v", ref, path, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("%s: platform %s/%s", ref, cf.OS, cf.Architecture)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%s: layers %d, %v; want 1", ref, len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	layer, err = io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	entries = map[string]*tar.Header{}
	tr := tar.NewReader(strings.NewReader(string(layer)))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s layer: %v", ref, err)
		}
		p := strings.TrimSuffix(h.Name, "/")
		if _, dup := entries[p]; dup {
			t.Errorf("%s: %s twice in the layer", ref, p)
		}
		if d := filepath.Dir(p); d != "." && entries[d] == nil {
			t.Errorf("%s: %s comes before its directory %s", ref, p, d)
		}
		entries[p] = h
	}
	return cf.Config.Entrypoint, cf.Config.Cmd, entries, layer
}

// unpack writes a layer into dir (regular files, directories, symlinks).
func unpack(t *testing.T, layer []byte, dir string) {
	t.Helper()
	tr := tar.NewReader(strings.NewReader(string(layer)))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode).Perm())
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, b, os.FileMode(h.Mode).Perm())
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// inChroot runs argv with dir as root, as a container would see its image.
func inChroot(t *testing.T, dir string, argv ...string) string {
	t.Helper()
	out, err := exec.Command("chroot", append([]string{dir}, argv...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in the image: %v: %v: %s", argv, err, out)
	}
	return string(out)
}

func TestImageLayerAndConfig(t *testing.T) {
	dir := t.TempDir()
	bb, err := staticProgram("/bin/busybox", "bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	spec := imageSpec{
		refs:       []string{"weft.test/one:1", "registry.example/two:2"},
		entrypoint: []string{"/bin/sh"},
		cmd:        []string{"-c", "true"},
		files: []imageFile{bb, {path: "bin/sh", mode: 0o777, link: "busybox"},
			{path: "etc/deep/er/file", mode: 0o600, body: []byte("x")}, {path: "tmp", mode: 0o1777, dir: true}},
	}
	p := filepath.Join(dir, "img.tar")
	if err := writeImages(p, spec); err != nil {
		t.Fatal(err)
	}
	for _, ref := range spec.refs {
		ep, cmd, entries, _ := readImage(t, p, ref)
		if !reflect.DeepEqual(ep, spec.entrypoint) || !reflect.DeepEqual(cmd, spec.cmd) {
			t.Errorf("%s: entrypoint %v cmd %v", ref, ep, cmd)
		}
		if h := entries["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("%s: bin/sh %+v, want a link to busybox", ref, h)
		}
		if h := entries["etc/deep/er/file"]; h == nil || h.Mode != 0o600 || h.Size != 1 {
			t.Errorf("%s: etc/deep/er/file %+v", ref, h)
		}
		if h := entries["tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o1777 {
			t.Errorf("%s: tmp %+v", ref, h)
		}
	}
	// The same files give the same image: no timestamps leak in.
	p2 := filepath.Join(dir, "again.tar")
	if err := writeImages(p2, spec); err != nil {
		t.Fatal(err)
	}
	d1, d2 := digestOf(t, p, spec.refs[0]), digestOf(t, p2, spec.refs[0])
	if d1 != d2 {
		t.Errorf("rebuild changed the digest: %s, %s", d1, d2)
	}
	if err := writeImages(filepath.Join(dir, "bad.tar"), imageSpec{refs: []string{"weft.test/x:1"}, files: []imageFile{bb, bb}}); err == nil {
		t.Error("an image with one path twice was written")
	}
	if _, err := staticProgram("/usr/bin/getent", "getent"); err == nil {
		t.Error("staticProgram accepted the dynamically linked getent")
	}
}

func digestOf(t *testing.T, path, ref string) string {
	t.Helper()
	tag, _ := name.NewTag(ref)
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestELFClosure(t *testing.T) {
	files, err := elfClosure("/usr/bin/getent", "usr/bin/getent")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, f.path)
	}
	for _, want := range []string{"usr/bin/getent", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"} {
		if !slices.Contains(paths, want) {
			t.Errorf("closure of getent %v lacks %s", paths, want)
		}
	}
}

// TestConformanceImages builds every image of the suite and the Services
// checks (busybox standing in for the agnhost and CoreDNS programs, which
// TestServiceBinaries builds) and checks each image's process and files;
// as root it runs the tools inside the agnhost image's tree.
func TestConformanceImages(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "c.crt"), "cert", 0o644)
	writeFile(t, filepath.Join(dir, "c.key"), "key", 0o600)
	specs, err := conformanceImageSpecs(agnhostParts{bin: "/bin/busybox", cert: filepath.Join(dir, "c.crt"), key: filepath.Join(dir, "c.key")}, "/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{agnhostTestImage, agnhostUpstreamImage, dnsutilsTestImage, nginxTestImage, busyboxTestImage, pauseTestImage, corednsImage}
	slices.Sort(want)
	if got := imageRefs(specs); !slices.Equal(got, want) {
		t.Fatalf("images %v, want %v", got, want)
	}
	p := filepath.Join(dir, "images.tar")
	if err := writeImages(p, specs...); err != nil {
		t.Fatal(err)
	}
	ep, cmd, entries, layer := readImage(t, p, agnhostUpstreamImage)
	if !reflect.DeepEqual(ep, []string{"/agnhost"}) || !reflect.DeepEqual(cmd, []string{"pause"}) {
		t.Errorf("agnhost: entrypoint %v cmd %v, want upstream's [/agnhost] [pause]", ep, cmd)
	}
	for _, f := range []string{"agnhost", "agnhost-2", "uploads", "localhost.crt", "localhost.key", "bin/sh", "bin/seq", "usr/bin/dig", "usr/bin/getent", "usr/bin/curl", "usr/bin/nc", "bin/bash", "etc/nsswitch.conf", "etc/passwd", "tmp"} {
		if entries[f] == nil {
			t.Errorf("agnhost image lacks %s", f)
		}
	}
	if entries["bin/nc"] != nil {
		t.Error("agnhost image has busybox's nc beside OpenBSD's")
	}
	for _, c := range []struct {
		ref, file string
		ep        []string
	}{
		{dnsutilsTestImage, "usr/bin/dig", nil},
		{nginxTestImage, "usr/share/nginx/html/index.html", []string{"/bin/httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"}},
		{busyboxTestImage, "bin/sh", nil},
		{pauseTestImage, "agnhost", []string{"/agnhost", "pause"}},
		{corednsImage, "coredns", []string{"/coredns"}},
	} {
		ep, _, e, _ := readImage(t, p, c.ref)
		if e[c.file] == nil {
			t.Errorf("%s lacks %s", c.ref, c.file)
		}
		if !reflect.DeepEqual(ep, c.ep) {
			t.Errorf("%s: entrypoint %v, want %v", c.ref, ep, c.ep)
		}
	}

	if os.Geteuid() != 0 {
		t.Log("not root: the tools are not run in a chroot of the image")
		return
	}
	root := filepath.Join(dir, "rootfs")
	unpack(t, layer, root)
	// The kubelet gives a pod its /etc/hosts and the runtime its /dev;
	// the chroot gets a hosts file and an empty /dev/null to read.
	if err := os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1 localhost\n10.1.2.3 weft-probe\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dev/null"), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if out := inChroot(t, root, "/bin/sh", "-c", "seq 1 3 | tr '\\n' ' '"); strings.TrimSpace(out) != "1 2 3" {
		t.Errorf("sh/seq in the image: %q", out)
	}
	if out := inChroot(t, root, "/usr/bin/getent", "hosts", "weft-probe"); !strings.Contains(out, "10.1.2.3") {
		t.Errorf("getent hosts in the image: %q", out)
	}
	for _, argv := range [][]string{{"/usr/bin/dig", "-v"}, {"/usr/bin/curl", "--version"}, {"/bin/bash", "-c", "echo ok"}, {"/usr/bin/nc", "-h"}} {
		out, err := exec.Command("chroot", append([]string{root}, argv...)...).CombinedOutput()
		// nc -h exits 1 after its usage; it must still have run.
		if err != nil && !(argv[0] == "/usr/bin/nc" && strings.Contains(string(out), "usage")) {
			t.Errorf("%v in the image: %v: %s", argv, err, out)
		}
	}
	// curl over loopback inside the chroot: its libraries (TLS included)
	// load and it speaks HTTP to the image's busybox httpd.
	if err := os.MkdirAll(filepath.Join(root, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "www/index.html"), []byte("from-the-image\n"), 0o644)
	out := inChroot(t, root, "/bin/sh", "-c", "httpd -f -p 127.0.0.1:18481 -h /www & p=$!; i=0; while [ $i -lt 20 ]; do curl -sS http://127.0.0.1:18481/ && break; i=$((i+1)); sleep 0.1; done; kill $p")
	if !strings.Contains(out, "from-the-image") {
		t.Errorf("curl to httpd in the image: %q", out)
	}
}

func TestCoreDNSManifest(t *testing.T) {
	var (
		sa  corev1.ServiceAccount
		cr  rbacv1.ClusterRole
		crb rbacv1.ClusterRoleBinding
		cm  corev1.ConfigMap
		dep appsv1.Deployment
		svc corev1.Service
	)
	readYAML(t, corednsManifest, &sa, &cr, &crb, &cm, &dep, &svc)
	if svc.Name != "kube-dns" || svc.Namespace != "kube-system" || svc.Spec.ClusterIP != kubeDNSIP {
		t.Errorf("Service %s/%s clusterIP %s, want kube-system/kube-dns %s", svc.Namespace, svc.Name, svc.Spec.ClusterIP, kubeDNSIP)
	}
	protos := map[corev1.Protocol]bool{}
	for _, p := range svc.Spec.Ports {
		if p.Port == 53 {
			protos[p.Protocol] = true
		}
	}
	if !protos[corev1.ProtocolUDP] || !protos[corev1.ProtocolTCP] {
		t.Errorf("kube-dns ports %+v: want 53 over UDP and TCP", svc.Spec.Ports)
	}
	if !reflect.DeepEqual(svc.Spec.Selector, dep.Spec.Template.Labels) {
		t.Errorf("Service selects %v, pods are labelled %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	ctr := pod.Containers[0]
	if ctr.Image != corednsImage || ctr.ImagePullPolicy != corev1.PullNever {
		t.Errorf("image %s (%s), want %s, Never: nothing is pulled here", ctr.Image, ctr.ImagePullPolicy, corednsImage)
	}
	if pod.ServiceAccountName != sa.Name || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != dep.Namespace || crb.RoleRef.Name != cr.Name {
		t.Errorf("ServiceAccount %s, binding %+v → %s, role %s: not one chain", sa.Name, crb.Subjects, crb.RoleRef.Name, cr.Name)
	}
	can := func(group, resource, verb string) bool {
		for _, r := range cr.Rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	for _, need := range [][2]string{{"", "services"}, {"", "namespaces"}, {"", "pods"}, {"discovery.k8s.io", "endpointslices"}} {
		for _, verb := range []string{"list", "watch"} {
			if !can(need[0], need[1], verb) {
				t.Errorf("ClusterRole cannot %s %s.%s, which the kubernetes plugin watches", verb, need[1], need[0])
			}
		}
	}
	// -conf points at the ConfigMap's Corefile where it is mounted.
	conf := ""
	for i, a := range ctr.Args {
		if a == "-conf" && i+1 < len(ctr.Args) {
			conf = ctr.Args[i+1]
		}
	}
	mounted := false
	for _, m := range ctr.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Name && filepath.Dir(conf) == m.MountPath {
				mounted = true
			}
		}
	}
	if conf == "" || !mounted {
		t.Errorf("-conf %q is not the mounted ConfigMap %s", conf, cm.Name)
	}
	corefile := cm.Data[filepath.Base(conf)]
	for _, want := range []string{"kubernetes " + clusterDomain + " in-addr.arpa ip6.arpa", "pods insecure", "ready", "health"} {
		if !strings.Contains(corefile, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, corefile)
		}
	}
	if ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil || ctr.ReadinessProbe.HTTPGet.Port.IntValue() != 8181 {
		t.Errorf("readiness probe %+v: want the ready plugin's :8181/ready", ctr.ReadinessProbe)
	}
}

// TestConformanceRepoList: the repo list maps the suite's registries so
// that the names it computes (registry/name:version, as in
// test/utils/image/manifest.go) are the images made here.
func TestConformanceRepoList(t *testing.T) {
	var m map[string]string
	if err := yaml.UnmarshalStrict([]byte(conformanceRepoList()), &m); err != nil {
		t.Fatal(err)
	}
	for k := range m {
		if k != "promoterE2eRegistry" && k != "gcRegistry" {
			t.Errorf("repo list key %q is not one of the suite's registries used here", k)
		}
	}
	e2e, gc := m["promoterE2eRegistry"], m["gcRegistry"]
	for got, want := range map[string]string{
		e2e + "/agnhost:2.56":                 agnhostTestImage,
		e2e + "/jessie-dnsutils:1.7":          dnsutilsTestImage,
		e2e + "/nginx:1.14-4":                 nginxTestImage,
		e2e + "/busybox:1.37.0-1":             busyboxTestImage,
		gc + "/pause:" + "3.10.1":             pauseTestImage,
		upstreamE2ERegistry + "/agnhost:2.56": agnhostUpstreamImage,
	} {
		if got != want {
			t.Errorf("the suite asks for %s, the image is %s", got, want)
		}
	}
}

func TestConformanceReport(t *testing.T) {
	const report = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="4" errors="0" failures="2" time="61.5">
  <testsuite name="Kubernetes e2e suite" package="/e2e" tests="6" disabled="4" skipped="0" errors="0" failures="2" time="61.5">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.0"></testcase>
    <testcase name="[It] [sig-network] DNS should provide DNS for services [Conformance] [sig-network, Conformance]" classname="Kubernetes e2e suite" status="passed" time="30.1"></testcase>
    <testcase name="[It] [sig-network] HostPort validates that there is no conflict [LinuxOnly] [Conformance]" classname="Kubernetes e2e suite" status="failed" time="20.0">
      <failure message="hostPort 54323 not reached" type="failed">long trace</failure>
    </testcase>
    <testcase name="[It] [sig-network] Services should provide secure master service [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped - no provider"></skipped>
    </testcase>
    <testcase name="[It] [sig-storage] CSI mock volume should work [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-network] Networking should work [Feature:Foo]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e JUnit report" classname="Kubernetes e2e suite" status="failed" time="0.1"><failure message="could not write" type="failed"></failure></testcase>
  </testsuite>
</testsuites>`
	r, err := readConformanceReport([]byte(report))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Passed) != 1 || len(r.Failed) != 1 || len(r.Skipped) != 1 {
		t.Fatalf("%s: %+v", r, r)
	}
	if r.Passed[0] != "[sig-network] DNS should provide DNS for services [Conformance]" {
		t.Errorf("passed %q: want the spec's name without ginkgo's label list", r.Passed[0])
	}
	if got := r.Reasons[r.Failed[0]]; got != "hostPort 54323 not reached" {
		t.Errorf("failure reason %q", got)
	}
	if got := r.Reasons[r.Skipped[0]]; got != "skipped - no provider" {
		t.Errorf("skip reason %q", got)
	}
	if len(r.Setup) != 1 || !strings.HasPrefix(r.Setup[0], "[ReportAfterSuite]") {
		t.Errorf("setup failures %v", r.Setup)
	}
	if r.String() != "1 passed, 1 failed, 1 skipped of 3" {
		t.Errorf("summary %q", r)
	}
	if _, err := readConformanceReport([]byte(`<testsuites><testsuite></testsuite></testsuites>`)); err == nil {
		t.Error("a report without one focused test was accepted")
	}
}

// TestConformanceDryRun runs e2e.test with the run's own flags in
// ginkgo's dry-run mode (nothing reaches a cluster) and reads its report
// as the run does: the focus selects the 45 [sig-network] [Conformance]
// tests of v1.34.4, and the flags, the repo list and the report agree
// with e2e.test.
func TestConformanceDryRun(t *testing.T) {
	requireConformance(t)
	bin := e2eTestBinary(t)
	dir := t.TempDir()
	repoList := filepath.Join(dir, "repo-list.yaml")
	writeFile(t, repoList, conformanceRepoList(), 0o644)
	if err := pki(dir, []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "kubeconfig"), kubeconfig("https://127.0.0.1:1", filepath.Join(dir, "ca.crt")), 0o600)
	junit := filepath.Join(dir, "junit.xml")
	args := append(conformanceArgs(filepath.Join(dir, "kubeconfig"), "kubectl", repoList, junit), "--ginkgo.dry-run")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBE_TEST_REPO_LIST="+repoList)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("e2e.test --ginkgo.dry-run: %v\n%s", err, tailString(string(out), 30))
	}
	b, err := os.ReadFile(junit)
	if err != nil {
		t.Fatal(err)
	}
	r, err := readConformanceReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Failed) != 0 || len(r.Setup) != 0 {
		t.Fatalf("dry run: %s, setup %v", r, r.Setup)
	}
	want := 45
	if netpolWanted() {
		want = 50 // test/e2e/network/netpol of v1.34.4, SCTP included
	}
	if n := len(r.Passed) + len(r.Skipped); n != want {
		t.Errorf("the focus selects %d tests, want the %d of v1.34.4", n, want)
	}
	t.Logf("focus %s: %d tests (%d left out by conformanceSkips):\n%s", conformanceFocus, len(r.Passed)+len(r.Skipped), len(r.Skipped), strings.Join(append(r.Passed, r.Skipped...), "\n"))
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
