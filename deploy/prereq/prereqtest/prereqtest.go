// Package prereqtest holds what weft's root and netns tests call first: the
// guards, and the weft binaries they run. Under `make test` (root, no -short) a test that cannot run fails,
// naming what is missing and the package that provides it: CI cannot go
// green by skipping. Skipping is left to `go test -short` and to non-root
// runs of it.
package prereqtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/weftnet/weft/deploy/prereq"
)

// Netns guards a test of the netns tier (network namespaces, TUN, real
// processes): skipped with -short; otherwise it fails unless it runs as root
// with every named program, file or package of prereq.tsv present.
func Netns(tb testing.TB, needs ...string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("netns test: skipped with -short")
	}
	root(tb)
	Programs(tb, needs...)
}

// Root guards a quick test that needs root but not the netns tier: it runs
// in -short mode too. Without root it is skipped with -short and fails
// without.
func Root(tb testing.TB, needs ...string) {
	tb.Helper()
	if os.Geteuid() != 0 && testing.Short() {
		tb.Skip("needs root: skipped with -short")
	}
	root(tb)
	Programs(tb, needs...)
}

func root(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("needs root (network namespaces, TUN devices, /var/run/wireguard); run as root, or with -short to skip")
	}
}

// Programs fails tb unless every named program, file or package of
// prereq.tsv is present; the message names each missing one and its
// package.
func Programs(tb testing.TB, needs ...string) {
	tb.Helper()
	if err := prereq.Check(needs...); err != nil {
		tb.Fatal(err)
	}
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// Binaries returns a directory holding weftd, weft-cni and weftctl:
// $WEFT_BIN_DIR when it has all three (the Makefile builds them before the
// test tiers), else one build of this checkout per test process, made on
// first use and removed by Main.
func Binaries(tb testing.TB) string {
	tb.Helper()
	if d := os.Getenv("WEFT_BIN_DIR"); d != "" && hasBinaries(d) {
		return d
	}
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "weft-bin-")
		if buildErr != nil {
			return
		}
		// This file sits at deploy/prereq/prereqtest in the module; build
		// from the module's root so that a nested module (deploy/e2e)
		// gets weft's own go.mod.
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", builtDir+"/", "./cmd/weftd", "./cmd/weft-cni", "./cmd/weftctl")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build weft in %s: %v\n%s", cmd.Dir, err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return builtDir
}

func hasBinaries(dir string) bool {
	for _, b := range []string{"weftd", "weft-cni", "weftctl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return false
		}
	}
	return true
}

// Main runs the tests and removes what Binaries built; call it from a
// package's TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}
