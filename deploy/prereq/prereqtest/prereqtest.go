// Package prereqtest holds the guards that weft's root and netns tests call
// first. Under `make test` (root, no -short) a test that cannot run fails,
// naming what is missing and the package that provides it: CI cannot go
// green by skipping. Skipping is left to `go test -short` and to non-root
// runs of it.
package prereqtest

import (
	"os"
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
