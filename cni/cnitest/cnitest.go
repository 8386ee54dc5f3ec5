// Package cnitest holds what weft's CNI netns tests and benchmarks share:
// building the plugin under test, installing the reference CNI plugins of
// the version weft depends on, and throwaway network namespaces that are
// removed when the test ends, pass or fail.
package cnitest

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

// ReferenceVersion is the containernetworking/plugins release the reference
// plugins (portmap, bandwidth, bridge, host-local) are built from: the one in
// weft's go.mod, which speaks CNI 1.1.0.
const ReferenceVersion = "v1.9.1"

// RequireRoot guards the netns tier of the Makefile: skipped with -short,
// failed without root or iproute2 (prereqtest.Netns).
func RequireRoot(tb testing.TB) {
	tb.Helper()
	prereqtest.Netns(tb, "ip")
}

// BuildWeft returns a directory holding a weft-cni binary
// (prereqtest.Binaries).
func BuildWeft(tb testing.TB) string {
	tb.Helper()
	return prereqtest.Binaries(tb)
}

// InstallReference builds reference plugins at ReferenceVersion into dir
// through the Go module proxy, e.g. InstallReference(tb, dir, "meta/portmap",
// "main/bridge"). The Go build cache makes repeated calls cheap.
func InstallReference(tb testing.TB, dir string, plugins ...string) {
	tb.Helper()
	args := []string{"install"}
	for _, p := range plugins {
		args = append(args, "github.com/containernetworking/plugins/plugins/"+p+"@"+ReferenceVersion)
	}
	cmd := exec.Command("go", args...)
	// Outside weft's module, so that only the plugins' own go.mod counts.
	cmd.Dir = tb.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// NSPath is where iproute2 keeps a named network namespace.
func NSPath(name string) string { return "/run/netns/" + name }

// AddNetns creates the named netns with lo up and deletes it at cleanup,
// after killing any process still inside it (a namespace outlives
// `ip netns del` while a process holds it).
func AddNetns(tb testing.TB, name string) string {
	tb.Helper()
	Run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() { DelNetns(tb, name) })
	Run(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// DelNetns removes the named netns if it still exists.
func DelNetns(tb testing.TB, name string) {
	tb.Helper()
	if _, err := os.Stat(NSPath(name)); err != nil {
		return
	}
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			exec.Command("kill", "-9", pid).Run()
		}
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		tb.Errorf("ip netns del %s: %v %s", name, err, out)
	}
}

// Run runs a command and fails tb if it fails; it returns combined output.
func Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
