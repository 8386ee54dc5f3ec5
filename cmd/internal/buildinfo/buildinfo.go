// Package buildinfo is the version that weftd, weft-cni and weftctl print
// for --version: the one given at link time (the Makefile and the
// Dockerfile pass -X github.com/weftnet/weft/cmd/internal/buildinfo.Version=…),
// else "dev", followed by the commit the Go toolchain stamped into the
// binary, if any, and the toolchain's version.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at link time; "dev" in a plain `go build`.
var Version = "dev"

// String is "<program> <version> ([commit <rev>[, modified], ]<go version>)";
// the commit is there when the toolchain stamped one (a plain `go build`
// inside the repository does; the Makefile's version already names it).
func String(program string) string {
	commit, modified := "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if commit == "" {
		return fmt.Sprintf("%s %s (%s)", program, Version, runtime.Version())
	}
	if modified {
		commit += ", modified"
	}
	return fmt.Sprintf("%s %s (commit %s, %s)", program, Version, commit, runtime.Version())
}

// Requested reports whether args (os.Args[1:]) ask for the version only.
func Requested(args []string) bool {
	return len(args) == 1 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version")
}
