package e2e

// The binaries of `make conformance` and of the Services/DNS checks, built
// from the Go module proxy and cached like kubeBinaries (bins_test.go), each
// set in its own directory under the same root (WEFT_E2E_CACHE):
//
//	e2e-test-v1.34.4/bin                 e2e.test  (builder k8sbin/e2e)
//	agnhost-2.56-k8s-v1.34.4/bin         agnhost   (builder k8sbin/e2e)
//	coredns-v1.14.7/bin                  coredns   (builder k8sbin/coredns)
//
// A separate builder module and cache directory for e2e.test, so that the
// go.mod and cache key of the binaries test-kube needs stay as they are.
// e2e.test is compiled with the same flags as those (-trimpath, no
// optimizer, same dependency versions), so on a machine that has built
// them the packages they share come from the build cache.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const corednsVersion = "v1.14.7"

// cacheRoot is the root of every cached build (WEFT_E2E_CACHE overrides).
func cacheRoot() string {
	if root := os.Getenv("WEFT_E2E_CACHE"); root != "" {
		return root
	}
	return "/var/cache/weft-e2e"
}

// cachedBuild returns <root>/<key>/bin holding files, first running build
// into a temp directory beside it, renamed into place when complete, if
// any file is missing. One build per key at a time machine-wide: a second
// caller waits on <root>/<key>/.lock and reuses the result.
func cachedBuild(t *testing.T, key string, files []string, build func(tmp string)) string {
	t.Helper()
	top := filepath.Join(cacheRoot(), key)
	dir := filepath.Join(top, "bin")
	if err := os.MkdirAll(top, 0o755); err != nil {
		t.Fatal(err)
	}
	defer lockCache(t, top, key)()
	complete := true
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			complete = false
		}
	}
	if complete {
		return dir
	}
	// Under the lock no other build runs: a .build- directory is what a
	// killed one left.
	if stale, _ := filepath.Glob(filepath.Join(top, ".build-*")); len(stale) > 0 {
		for _, d := range stale {
			os.RemoveAll(d)
		}
	}
	tmp, err := os.MkdirTemp(top, ".build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	t.Logf("building %s into %s", strings.Join(files, ", "), dir)
	build(tmp)
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
			t.Fatalf("the build of %s left no %s: %v", key, f, err)
		}
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %s", key, time.Since(start).Round(time.Second))
	return dir
}

// k8sVersionLdflags stamp the version Kubernetes programs report.
func k8sVersionLdflags() string {
	return "-s -w -X k8s.io/component-base/version.gitVersion=" + k8sVersion +
		" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34" +
		" -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=" + k8sVersion
}

// e2eTestBinary returns the path of e2e.test, the test binary of
// k8s.io/kubernetes/test/e2e v1.34.4, building it first if the cache
// lacks it. Only `make conformance` needs it (minutes of compile).
func e2eTestBinary(t *testing.T) string {
	t.Helper()
	dir := cachedBuild(t, "e2e-test-"+k8sVersion, []string{"e2e.test"}, func(tmp string) {
		// -N -l as for the cluster's binaries: the suite waits on the
		// cluster, not on its own CPU, and the packages it shares with them
		// come from the build cache only when compiled alike.
		goBuild(t, "k8sbin/e2e", "test", "-c", "-trimpath", "-gcflags=all=-N -l", "-ldflags", k8sVersionLdflags(),
			"-o", filepath.Join(tmp, "e2e.test"), "k8s.io/kubernetes/test/e2e")
	})
	return filepath.Join(dir, "e2e.test")
}

// agnhostParts are the files of the agnhost image that come from the
// Kubernetes module: the program, and the TLS pair its porter subcommand
// serves (the image's /localhost.crt and /localhost.key, as upstream's).
type agnhostParts struct {
	bin, cert, key string
}

// agnhostBinary returns agnhost 2.56 (static, its version stamped as
// upstream's image build does), the suite's test server and the Services
// checks' pod program, and porter's TLS pair, from the same module.
func agnhostBinary(t *testing.T) agnhostParts {
	t.Helper()
	dir := cachedBuild(t, "agnhost-"+agnhostVersion+"-k8s-"+k8sVersion, []string{"agnhost", "localhost.crt", "localhost.key"}, func(tmp string) {
		// Compiled like the cluster's binaries (no optimizer), so that the
		// client-go and apimachinery packages it shares with them come from
		// the build cache.
		goBuild(t, "k8sbin/e2e", "build", "-trimpath", "-gcflags=all=-N -l", "-ldflags", "-s -w -X main.Version="+agnhostVersion,
			"-o", filepath.Join(tmp, "agnhost"), "k8s.io/kubernetes/test/images/agnhost")
		cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes")
		cmd.Dir = "k8sbin/e2e"
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -m k8s.io/kubernetes in k8sbin/e2e: %v", err)
		}
		porter := filepath.Join(strings.TrimSpace(string(out)), "test", "images", "agnhost", "porter")
		for _, f := range []string{"localhost.crt", "localhost.key"} {
			b, err := os.ReadFile(filepath.Join(porter, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	return agnhostParts{bin: filepath.Join(dir, "agnhost"), cert: filepath.Join(dir, "localhost.crt"), key: filepath.Join(dir, "localhost.key")}
}

// corednsBinary returns the path of a static CoreDNS built from its module.
func corednsBinary(t *testing.T) string {
	t.Helper()
	dir := cachedBuild(t, "coredns-"+corednsVersion, []string{"coredns"}, func(tmp string) {
		goBuild(t, "k8sbin/coredns", "build", "-trimpath", "-ldflags", "-s -w",
			"-o", filepath.Join(tmp, "coredns"), "github.com/coredns/coredns")
	})
	return filepath.Join(dir, "coredns")
}

// TestServiceBinaries builds (or finds) CoreDNS and agnhost, which the
// Services/DNS checks of test-kube run, and checks that both are static
// and report their pinned versions.
func TestServiceBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds CoreDNS and agnhost: not in -short")
	}
	for _, c := range []struct {
		bin, flag, want string
	}{
		{corednsBinary(t), "-version", "CoreDNS-" + strings.TrimPrefix(corednsVersion, "v")},
		{agnhostBinary(t).bin, "--version", "app version " + agnhostVersion},
	} {
		if _, err := staticProgram(c.bin, filepath.Base(c.bin)); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(c.bin, c.flag).CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Fatalf("%s %s = %q (%v), want %q", c.bin, c.flag, out, err, c.want)
		}
	}
}

// TestE2EBinary builds (or finds) e2e.test and checks that it reports the
// pinned version. Part of `make conformance`, not of test-kube.
func TestE2EBinary(t *testing.T) {
	requireConformance(t)
	bin := e2eTestBinary(t)
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != k8sVersion {
		t.Fatalf("e2e.test --version = %q (%v), want %s", out, err, k8sVersion)
	}
}
