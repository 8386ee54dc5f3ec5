// Command weft-image builds weft's container image as a tarball, without a
// container daemon: `make image` runs it. The binaries are built static
// (CGO_ENABLED=0) from the repository at -root and stamped with -version,
// which is also the image's tag.
//
//	go run ./cmd/weft-image -root ../.. -version v0.1.0 -o ../../bin/weft-image.tar
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/weftnet/weft/deploy/image"
)

func main() {
	root := flag.String("root", "../..", "the weft repository root (holds weft's go.mod)")
	version := flag.String("version", "", "the version stamped into the binaries and the image's tag (the Makefile's VERSION, git describe)")
	out := flag.String("o", "weft-image.tar", "the image tarball to write")
	binDir := flag.String("bin-dir", "", "where the static binaries go (default: static/ beside -o)")
	arch := flag.String("arch", "", "GOARCH of the image (default: this machine's)")
	flag.Parse()
	if *version == "" {
		fmt.Fprintln(os.Stderr, "weft-image: -version is required (make image passes git describe)")
		os.Exit(2)
	}
	if *binDir == "" {
		*binDir = filepath.Join(filepath.Dir(*out), "static")
	}
	ref, err := image.Weft(context.Background(), image.WeftOptions{Root: *root, Version: *version, Out: *out, BinDir: *binDir, Arch: *arch})
	if err != nil {
		fmt.Fprintln(os.Stderr, "weft-image:", err)
		os.Exit(1)
	}
	fi, err := os.Stat(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "weft-image:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %s (%.1f MB)\n", *out, ref, float64(fi.Size())/1e6)
}
