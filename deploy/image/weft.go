package image

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Repository is where weft's image is published; deploy/ names it, and
// deploy/kustomization.yaml pins its tag.
const Repository = "ghcr.io/weftnet/weft"

// Binaries are the programs in weft's image, all in /usr/local/bin: weftd
// (the container's entrypoint), weft-cni (copied onto the node by the
// install-cni init container, `weftctl install-cni`) and weftctl. The image
// holds nothing else: no shell, no libc, no package manager.
var Binaries = []string{"weftd", "weft-cni", "weftctl"}

// BinPath is where the binaries live inside the image.
const BinPath = "usr/local/bin"

// WeftOptions say how to build weft's image.
type WeftOptions struct {
	// Root is the repository root (the directory of weft's go.mod).
	Root string
	// Version is the image's tag and what the binaries print for
	// --version: `git describe`, the Makefile's VERSION.
	Version string
	// Out is the image tarball to write.
	Out string
	// BinDir receives the static binaries the image is made of.
	BinDir string
	// Arch is the GOARCH to build for; empty means this machine's.
	Arch string
	// Go is the go command; empty means "go" from the PATH.
	Go string
}

// Ref returns the name weft's image of version carries.
func Ref(version string) string { return Repository + ":" + version }

// Weft builds weftd, weft-cni and weftctl as static binaries
// (CGO_ENABLED=0: weft-cni runs on the host from /opt/cni/bin, where a
// dynamically linked binary could meet another libc, and the image has no
// libc at all), checks that they are static, and writes weft's image to
// o.Out. It returns the image's ref.
func Weft(ctx context.Context, o WeftOptions) (string, error) {
	if o.Version == "" {
		return "", fmt.Errorf("weft image: no version")
	}
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if err := os.MkdirAll(o.BinDir, 0o755); err != nil {
		return "", err
	}
	bin, err := filepath.Abs(o.BinDir)
	if err != nil {
		return "", err
	}
	args := []string{"build", "-trimpath",
		"-ldflags", "-s -w -X github.com/weftnet/weft/cmd/internal/buildinfo.Version=" + o.Version,
		"-o", bin + string(filepath.Separator)}
	for _, b := range Binaries {
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, o.Go, args...)
	cmd.Dir = o.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build (in %s, CGO_ENABLED=0 GOARCH=%s): %v\n%s", o.Root, o.Arch, err, out)
	}
	var files []File
	for _, b := range Binaries {
		p := filepath.Join(bin, b)
		if err := CheckStatic(p); err != nil {
			return "", err
		}
		body, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		files = append(files, File{Name: BinPath + "/" + b, Mode: 0o755, Body: body})
	}
	ref := Ref(o.Version)
	err = Write(o.Out, Config{
		Ref:        ref,
		Arch:       o.Arch,
		Entrypoint: []string{"/" + BinPath + "/weftd"},
		Env:        []string{"PATH=/" + BinPath},
		Labels: map[string]string{
			"org.opencontainers.image.title":   "weft",
			"org.opencontainers.image.version": o.Version,
			"org.opencontainers.image.source":  "https://github.com/weftnet/weft",
		},
	}, files)
	return ref, err
}

// CheckStatic fails unless the ELF file at path is statically linked: no
// program interpreter and no shared libraries.
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (has a program interpreter): build it with CGO_ENABLED=0", path)
		}
	}
	libs, err := f.ImportedLibraries()
	if err == nil && len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries %v: build it with CGO_ENABLED=0", path, libs)
	}
	return nil
}
