package e2e

// The Kubernetes and etcd binaries are built from the Go module proxy by
// the builder modules in k8sbin/ and cached under
// /var/cache/weft-e2e/<versions>/bin (WEFT_E2E_CACHE overrides the root):
// the first run on a machine pays the build (see README), later runs reuse
// it. The build writes to a temp directory and renames each binary into
// place, so an interrupted build never leaves half a binary.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

const (
	k8sVersion  = "v1.34.4"
	etcdVersion = "v3.6.16"
)

var k8sBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "kube-proxy"}

func cacheDir() string {
	root := os.Getenv("WEFT_E2E_CACHE")
	if root == "" {
		root = "/var/cache/weft-e2e"
	}
	return filepath.Join(root, "k8s-"+k8sVersion+"-etcd-"+etcdVersion, "bin")
}

// kubeBinaries returns the directory holding etcd and the Kubernetes
// binaries, building them first if the cache lacks any.
func kubeBinaries(t *testing.T) string {
	t.Helper()
	dir := cacheDir()
	// One builder at a time per machine: .ci/run starts `make kube-bins`
	// beside the other tests, and test-kube then waits here for it.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	defer lockCache(t, filepath.Dir(dir), "the Kubernetes binaries")()
	// The cache is keyed by the versions; within it each binary is built
	// only if it is missing, so adding a program to k8sBinaries builds that
	// program alone (and shares the Go build cache with the others).
	var missing []string
	for _, b := range append([]string{"etcd"}, k8sBinaries...) {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return dir
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	t.Logf("building %v (Kubernetes %s, etcd %s) into %s (cold: several minutes)", missing, k8sVersion, etcdVersion, dir)
	ld := "-s -w -X k8s.io/component-base/version.gitVersion=" + k8sVersion +
		" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34" +
		" -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=" + k8sVersion
	// -N -l: no optimization, no inlining. The tests need these programs
	// to run, not to run fast, and compiling without the optimizer costs a
	// quarter less CPU (measured on k8s.io/client-go/kubernetes: 134 s →
	// 100 s), the longest part of a first `make test` on a 2-CPU machine.
	args := []string{"build", "-trimpath", "-gcflags=all=-N -l", "-ldflags", ld, "-o", tmp + "/"}
	var k8s bool
	for _, b := range missing {
		if b != "etcd" {
			args = append(args, "k8s.io/kubernetes/cmd/"+b)
			k8s = true
		}
	}
	if k8s {
		goBuild(t, "k8sbin/kubernetes", args...)
	}
	if slices.Contains(missing, "etcd") {
		goBuild(t, "k8sbin/etcd", "build", "-trimpath", "-gcflags=all=-N -l", "-ldflags", "-s -w", "-o", filepath.Join(tmp, "etcd"), "go.etcd.io/etcd/server/v3")
	}
	// Each binary is renamed into place whole: an interrupted build
	// leaves the cache without it, never with half of it.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range missing {
		if err := os.Rename(filepath.Join(tmp, b), filepath.Join(dir, b)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("built in %s", time.Since(start).Round(time.Second))
	return dir
}

func goBuild(t *testing.T, moduleDir string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatal(fmt.Errorf("go %v in %s: %v\n%s", args, moduleDir, err, out))
	}
}

// TestKubeBinaries makes sure the cache holds the Kubernetes and etcd
// binaries (building them if not) and that each runs and reports the
// pinned version. `make kube-bins` runs it alone, so the build can go on
// beside the rest of the tests.
func TestKubeBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Kubernetes: not in -short")
	}
	dir := kubeBinaries(t)
	for _, c := range [][]string{{"kube-apiserver", "--version"}, {"kubelet", "--version"}, {"kubectl", "version", "--client"}, {"kube-proxy", "--version"}, {"etcd", "--version"}} {
		out, err := exec.Command(filepath.Join(dir, c[0]), c[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", c[0], err, out)
		}
		want := k8sVersion
		if c[0] == "etcd" {
			want = strings.TrimPrefix(etcdVersion, "v")
		}
		if !strings.Contains(string(out), want) {
			t.Fatalf("%s reports %q, want %s", c[0], out, want)
		}
	}
}

func TestMain(m *testing.M) { prereqtest.Main(m) }

// weftBinaries returns a directory with weftd, weft-cni and weftctl
// (prereqtest.Binaries: WEFT_BIN_DIR, which make test-kube sets, or a build).
func weftBinaries(t *testing.T) string {
	t.Helper()
	return prereqtest.Binaries(t)
}

// lockCache takes the machine-wide lock of the cache directory dir (its
// .lock file) for building what, and returns its release. A second builder
// waits, and then finds the first one's result.
func lockCache(t *testing.T, dir, what string) (unlock func()) {
	t.Helper()
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	waited := time.Now()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		t.Fatalf("lock %s: %v", lock.Name(), err)
	}
	if d := time.Since(waited); d > time.Second {
		t.Logf("waited %s for another build of %s", d.Round(time.Second), what)
	}
	return func() { lock.Close() }
}
