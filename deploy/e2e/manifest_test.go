package e2e

// TestDaemonSetSpec reads deploy/daemonset.yaml into the real Kubernetes
// types (strict: an unknown or misspelled field fails) and checks what the
// install depends on. It needs neither root nor a cluster.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/deploy/image"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

func readYAML(t *testing.T, path string, docs ...any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(b), "\n---\n")
	if len(parts) != len(docs) {
		t.Fatalf("%s: %d documents, want %d", path, len(parts), len(docs))
	}
	for i, p := range parts {
		if err := yaml.UnmarshalStrict([]byte(p), docs[i]); err != nil {
			t.Fatalf("%s document %d: %v", path, i, err)
		}
	}
}

func TestDaemonSetSpec(t *testing.T) {
	var ds appsv1.DaemonSet
	readYAML(t, "../daemonset.yaml", &ds)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork must be true: weftd owns weft0 and the underlay ports")
	}
	// A surge pod beside the old one, whose weftd takes the datapath
	// over (the hand-off); the scheduler refuses it if any container
	// declares a port, which on hostNetwork is a host port.
	if s := ds.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxSurge == nil || s.RollingUpdate.MaxSurge.IntValue() != 1 || s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Errorf("update strategy %+v, want RollingUpdate with maxSurge 1, maxUnavailable 0", s)
	}
	for _, ctr := range append(spec.InitContainers, spec.Containers...) {
		if len(ctr.Ports) > 0 {
			t.Errorf("container %s declares ports %v: a host port each, which blocks the surge pod", ctr.Name, ctr.Ports)
		}
	}
	if spec.ServiceAccountName != "weft" {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	// Must run on control-plane and not-ready nodes (no CNI = not ready).
	var noSched, noExec bool
	for _, tol := range spec.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" {
			noSched = noSched || tol.Effect == corev1.TaintEffectNoSchedule
			noExec = noExec || tol.Effect == corev1.TaintEffectNoExecute
		}
	}
	if !noSched || !noExec {
		t.Errorf("tolerations %+v: want operator Exists for NoSchedule and NoExecute", spec.Tolerations)
	}

	if len(spec.Containers) != 1 || len(spec.InitContainers) != 1 {
		t.Fatalf("want one container and one init container, got %d and %d", len(spec.Containers), len(spec.InitContainers))
	}
	w := spec.Containers[0]
	sc := w.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, "NET_ADMIN") {
		t.Errorf("weftd needs NET_ADMIN: %+v", sc)
	}
	mounts := map[string]string{}
	for _, m := range w.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for path, host := range map[string]string{"/dev/net/tun": "/dev/net/tun", "/run/weft": "/run/weft", "/var/lib/weft": "/var/lib/weft", "/var/run/wireguard": "/var/run/wireguard"} {
		if hostPaths[mounts[path]] != host {
			t.Errorf("weftd mount %s: volume %q is hostPath %q, want %q", path, mounts[path], hostPaths[mounts[path]], host)
		}
	}
	for _, p := range []*corev1.Probe{w.ReadinessProbe, w.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Fatalf("weftd needs HTTP readiness and liveness probes")
		}
	}
	if w.ReadinessProbe.HTTPGet.Path != "/readyz" || w.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probe paths %s %s", w.ReadinessProbe.HTTPGet.Path, w.LivenessProbe.HTTPGet.Path)
	}
	args := strings.Join(w.Args, " ")
	port := w.ReadinessProbe.HTTPGet.Port.String()
	if !strings.Contains(args, "--health-addr=127.0.0.1:"+port) || w.ReadinessProbe.HTTPGet.Host != "127.0.0.1" {
		t.Errorf("probes on 127.0.0.1:%s, but weftd args %q", port, args)
	}
	for _, f := range []string{"--kube", "--gossip-key-file=", "--cluster-cidr=", "--transport-policy="} {
		if !strings.Contains(args, f) {
			t.Errorf("weftd args lack %s: %q", f, args)
		}
	}
	var nodeName bool
	for _, e := range w.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("NODE_NAME must come from spec.nodeName (downward API)")
	}

	// The init container is weftctl install-cni (no shell in the image),
	// unprivileged; what it does is TestInstallCNIAsShipped.
	ic := spec.InitContainers[0]
	if !slices.Equal(ic.Command, []string{"/" + image.BinPath + "/weftctl", "install-cni"}) {
		t.Errorf("install-cni command %q, want weftctl install-cni", ic.Command)
	}
	if ic.SecurityContext == nil || ic.SecurityContext.Privileged != nil && *ic.SecurityContext.Privileged {
		t.Error("install-cni copies files; it must not be privileged")
	}
	if ic.SecurityContext == nil || ic.SecurityContext.ReadOnlyRootFilesystem == nil || !*ic.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("install-cni writes only into its mounts: readOnlyRootFilesystem")
	}
}

// TestImagePinned: the DaemonSet names weft's image by a pinned release
// tag, never latest, pulled only when absent (so an image imported with
// `ctr images import` or `kind load` runs without a registry), and
// kustomization.yaml's images: entry, which `kubectl apply -k` applies,
// pins the same tag.
func TestImagePinned(t *testing.T) {
	var ds appsv1.DaemonSet
	readYAML(t, "../daemonset.yaml", &ds)
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName,omitempty"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	readYAML(t, "../kustomization.yaml", &k)
	if len(k.Images) != 1 || k.Images[0].Name != image.Repository || k.Images[0].NewName != "" {
		t.Fatalf("kustomization images %+v: want one entry for %s, keeping its name", k.Images, image.Repository)
	}
	tag := k.Images[0].NewTag
	if !regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`).MatchString(tag) {
		t.Fatalf("kustomization pins %s:%q: want a release version vX.Y.Z (the git tag of the release; make image VERSION=...)", image.Repository, tag)
	}
	spec := ds.Spec.Template.Spec
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if c.Image != image.Ref(tag) {
			t.Errorf("container %s: image %q, want %q (kustomization.yaml's newTag)", c.Name, c.Image, image.Ref(tag))
		}
		if c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("container %s: imagePullPolicy %q, want IfNotPresent", c.Name, c.ImagePullPolicy)
		}
	}
}

// TestInstallCNIAsShipped runs the init container's command line, as the
// DaemonSet states it, in a scratch root standing in for the container's
// file system: its mounts (the host's CNI directories, the ConfigMap
// volume) and the image's /usr/local/bin. It must install weft-cni and the
// ConfigMap's conflist where the host paths of those mounts are.
func TestInstallCNIAsShipped(t *testing.T) {
	var (
		ds appsv1.DaemonSet
		cm corev1.ConfigMap
	)
	readYAML(t, "../daemonset.yaml", &ds)
	readYAML(t, "../configmap.yaml", &cm)
	spec := ds.Spec.Template.Spec
	ic := spec.InitContainers[0]
	root := t.TempDir()
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	hostOf := map[string]string{} // mount path → host path
	for _, m := range ic.VolumeMounts {
		v := volumes[m.Name]
		if err := os.MkdirAll(filepath.Join(root, m.MountPath), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case v.HostPath != nil:
			hostOf[m.MountPath] = v.HostPath.Path
		case v.ConfigMap != nil:
			for _, it := range v.ConfigMap.Items {
				if err := os.WriteFile(filepath.Join(root, m.MountPath, it.Path), []byte(cm.Data[it.Key]), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	bin := filepath.Join(root, image.BinPath)
	os.MkdirAll(bin, 0o755)
	plugin, err := os.ReadFile(filepath.Join(weftBinaries(t), "weft-cni"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "weft-cni"), plugin, 0o755); err != nil {
		t.Fatal(err)
	}

	var args []string
	for _, a := range ic.Args {
		flag, path, ok := strings.Cut(a, "=")
		if !ok || !filepath.IsAbs(path) {
			t.Fatalf("install-cni arg %q: want --flag=/absolute/path", a)
		}
		args = append(args, flag+"="+filepath.Join(root, path))
	}
	cmd := exec.Command(filepath.Join(weftBinaries(t), "weftctl"), append(ic.Command[1:], args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", ic.Command[0], args, err, out)
	}
	for _, want := range []struct{ host, file, body string }{
		{"/opt/cni/bin", "weft-cni", string(plugin)},
		{"/etc/cni/net.d", "10-weft.conflist", cm.Data["10-weft.conflist"]},
	} {
		var mountPath string
		for mp, hp := range hostOf {
			if hp == want.host {
				mountPath = mp
			}
		}
		if mountPath == "" {
			t.Fatalf("install-cni mounts no hostPath %s", want.host)
		}
		got, err := os.ReadFile(filepath.Join(root, mountPath, want.file))
		if err != nil || string(got) != want.body {
			t.Fatalf("host %s/%s not installed (%v): the init container's flags and mounts disagree\n%s", want.host, want.file, err, out)
		}
	}
	t.Logf("weftctl install-cni as shipped:\n%s", out)
}

// The ClusterRole grants exactly what weftd uses: read Nodes, patch
// annotations onto them.
func TestRBACLeastPrivilege(t *testing.T) {
	var (
		sa   corev1.ServiceAccount
		role rbacv1.ClusterRole
		bind rbacv1.ClusterRoleBinding
	)
	readYAML(t, "../rbac.yaml", &sa, &role, &bind)
	if len(role.Rules) != 4 {
		t.Fatalf("rules %+v, want four", role.Rules)
	}
	// --network-policy: read only, pods and namespaces, networkpolicies.
	for i, want := range []struct{ group, resources string }{{"", "pods namespaces"}, {"networking.k8s.io", "networkpolicies"}} {
		r := role.Rules[2+i]
		if !slices.Equal(r.APIGroups, []string{want.group}) || strings.Join(r.Resources, " ") != want.resources || !slices.Equal(r.Verbs, []string{"list", "watch"}) {
			t.Errorf("rule %+v: want list and watch on %s %s only", r, want.group, want.resources)
		}
	}
	if st := role.Rules[1]; !slices.Equal(st.APIGroups, []string{""}) || !slices.Equal(st.Resources, []string{"nodes/status"}) || !slices.Equal(st.Verbs, []string{"patch"}) {
		t.Errorf("second rule %+v: want patch on core nodes/status only (the NetworkUnavailable condition)", st)
	}
	r := role.Rules[0]
	if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.Resources, []string{"nodes"}) {
		t.Errorf("rule %+v: want core nodes only", r)
	}
	got := slices.Clone(r.Verbs)
	slices.Sort(got)
	if !slices.Equal(got, []string{"get", "list", "patch", "watch"}) {
		t.Errorf("verbs %v, want get list watch patch", r.Verbs)
	}
	if bind.RoleRef.Name != role.Name || len(bind.Subjects) != 1 || bind.Subjects[0].Name != sa.Name || bind.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding %+v does not bind %s/%s to %s", bind, sa.Namespace, sa.Name, role.Name)
	}
}

// TestConfigMapConflistIsShipped: the conflist the install-cni init
// container writes (ConfigMap) is deploy/cni/10-weft.conflist, and it
// names 1.0.0 (what containerd 1.6's libcni reads) and 1.1.0 in
// cniVersions for a runtime that picks.
func TestConfigMapConflistIsShipped(t *testing.T) {
	var cm corev1.ConfigMap
	readYAML(t, "../configmap.yaml", &cm)
	file, err := os.ReadFile("../cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var inMap, shipped map[string]any
	if err := json.Unmarshal([]byte(cm.Data["10-weft.conflist"]), &inMap); err != nil {
		t.Fatalf("ConfigMap conflist: %v", err)
	}
	if err := json.Unmarshal(file, &shipped); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(inMap, shipped) {
		t.Fatalf("ConfigMap conflist differs from deploy/cni/10-weft.conflist:\n%v\n%v", inMap, shipped)
	}
	if shipped["cniVersion"] != "1.0.0" || fmt.Sprint(shipped["cniVersions"]) != "[1.0.0 1.1.0]" {
		t.Fatalf("versions: cniVersion %v, cniVersions %v", shipped["cniVersion"], shipped["cniVersions"])
	}
}

// Every flag the DaemonSet passes exists in weftd: the args, with the
// ConfigMap's values expanded as the kubelet does, parse up to -h.
func TestDaemonSetFlagsExist(t *testing.T) {
	var (
		ds appsv1.DaemonSet
		cm corev1.ConfigMap
	)
	readYAML(t, "../daemonset.yaml", &ds)
	readYAML(t, "../configmap.yaml", &cm)
	w := ds.Spec.Template.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range w.Env {
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			v, ok := cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
			if !ok {
				t.Fatalf("env %s: ConfigMap has no key %q", e.Name, e.ValueFrom.ConfigMapKeyRef.Key)
			}
			env[e.Name] = v
		}
	}
	var args []string
	for _, a := range w.Args {
		for k, v := range env {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		if strings.Contains(a, "$(") {
			t.Fatalf("arg %q references an unknown variable", a)
		}
		args = append(args, a)
	}
	bin := filepath.Join(weftBinaries(t), "weftd")
	out, err := exec.Command(bin, append(args, "-h")...).CombinedOutput()
	if err != nil {
		t.Fatalf("weftd %v -h: %v\n%s", args, err, out)
	}
}
