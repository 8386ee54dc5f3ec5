package e2e

// Container images for the kubelets, made locally: the machine reaches no
// registry. weft's own image is built exactly as `make image` builds it
// (deploy/image.Weft); pause is a 15-line static C program; the test image
// is Debian's static busybox with the applets the pods use. All three are
// written by deploy/image (go-containerregistry), as tarballs that `ctr
// images import` reads.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/weftnet/weft/deploy/image"
)

const (
	pauseImage   = "weft.test/pause:1"
	busyboxImage = "weft.test/busybox:1"
)

const pauseC = `#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int s) { (void)s; _exit(0); }
int main(void) {
	signal(SIGINT, quit);
	signal(SIGTERM, quit);
	signal(SIGCHLD, reap);
	for (;;) pause();
	return 0;
}
`

// images are the tarballs buildImages wrote, and weft's ref and binaries.
type images struct {
	tarballs []string // pause, busybox, weft
	weftRef  string   // ghcr.io/weftnet/weft:<version>
	weftBin  string   // the static binaries inside weft's image
}

// buildImages writes pause.tar, busybox.tar and weft-image.tar (weft at
// version, from the repository at root) into dir.
func buildImages(dir, root, version string) (images, error) {
	var im images
	src := filepath.Join(dir, "pause.c")
	bin := filepath.Join(dir, "pause")
	if err := os.WriteFile(src, []byte(pauseC), 0o644); err != nil {
		return im, err
	}
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		return im, fmt.Errorf("gcc pause: %v: %s", err, out)
	}
	pb, err := os.ReadFile(bin)
	if err != nil {
		return im, err
	}
	pause := filepath.Join(dir, "pause.tar")
	if err := image.Write(pause, image.Config{Ref: pauseImage, Arch: runtime.GOARCH, Entrypoint: []string{"/pause"}}, []image.File{{Name: "pause", Mode: 0o755, Body: pb}}); err != nil {
		return im, err
	}
	// Debian's busybox-static: /bin/busybox must be the static build.
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return im, fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	files := []image.File{{Name: "bin/busybox", Mode: 0o755, Body: bb}, {Name: "tmp/", Mode: 0o1777}}
	for _, a := range []string{"sh", "nc", "grep", "printf", "httpd", "mkdir", "echo", "hostname", "sleep", "cat", "ip", "ping"} {
		files = append(files, image.File{Name: "bin/" + a, Mode: 0o777, Link: "busybox"})
	}
	busybox := filepath.Join(dir, "busybox.tar")
	if err := image.Write(busybox, image.Config{Ref: busyboxImage, Arch: runtime.GOARCH, Entrypoint: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}}, files); err != nil {
		return im, err
	}
	weft := filepath.Join(dir, "weft-image.tar")
	im.weftBin = filepath.Join(dir, "weft-static")
	im.weftRef, err = image.Weft(context.Background(), image.WeftOptions{Root: root, Version: version, Out: weft, BinDir: im.weftBin})
	if err != nil {
		return im, err
	}
	im.tarballs = []string{pause, busybox, weft}
	return im, nil
}
