package cni

import (
	"os"
	"syscall"
)

// CrashEnv names the test-only environment variable that makes the plugin
// kill itself with SIGKILL at a chosen point of ADD, so tests can prove that
// a plugin dying mid-ADD leaves nothing that GC cannot remove. It is never
// set in production; a runtime that set it would only lose ADDs it asked to
// lose. Points, in the order ADD reaches them:
//
//	after-alloc  the address is persisted, nothing is wired
//	after-veth   the veth pair exists (pod end in the pod netns, unconfigured)
//	after-host   both ends are configured, the result is not yet printed
const CrashEnv = "WEFT_CNI_TEST_CRASH_AT"

// Crash points understood by CrashEnv.
const (
	CrashAfterAlloc = "after-alloc"
	CrashAfterVeth  = "after-veth"
	CrashAfterHost  = "after-host"
)

// crashPoint dies at once, without running deferred rollbacks, when
// CrashEnv names point: that is what a SIGKILL from an impatient runtime or
// an OOM kill does.
func crashPoint(point string) {
	if os.Getenv(CrashEnv) == point {
		syscall.Kill(os.Getpid(), syscall.SIGKILL) //nolint:errcheck // the next line never runs on success
		select {}
	}
}
