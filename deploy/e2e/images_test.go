package e2e

// Container images for the kubelets, made locally: the machine reaches no
// registry. pause is a 15-line static C program; the test image is Debian's
// static busybox with the applets the pods use. Both are written as
// docker-archive tarballs (`docker save` layout) that `ctr images import`
// reads.

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
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

type file struct {
	name string
	mode int64
	body []byte
	link string // symlink target when set
}

// layerTar returns an uncompressed layer tarball of files.
func layerTar(files []file) ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	dirs := map[string]bool{}
	for _, f := range files {
		if d := filepath.Dir(f.name); d != "." && !dirs[d] {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)}); err != nil {
				return nil, err
			}
		}
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: time.Unix(0, 0)}
		if f.link != "" {
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if f.link == "" {
			if _, err := tw.Write(f.body); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// writeImage writes a one-layer docker-archive for ref to path.
func writeImage(path, ref string, entrypoint []string, files []file) error {
	layer, err := layerTar(files)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(layer)
	diffID := "sha256:" + hex.EncodeToString(sum[:])
	cfg, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": entrypoint, "Env": []string{"PATH=/bin"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	if err != nil {
		return err
	}
	csum := sha256.Sum256(cfg)
	cfgName := hex.EncodeToString(csum[:]) + ".json"
	layerName := hex.EncodeToString(sum[:]) + "/layer.tar"
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{ref}, "Layers": []string{layerName}}})
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	tw := tar.NewWriter(out)
	for _, f := range []struct {
		name string
		body []byte
	}{{cfgName, cfg}, {layerName, layer}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(f.body); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return out.Close()
}

// buildImages writes pause.tar and busybox.tar into dir.
func buildImages(dir string) (pause, busybox string, err error) {
	src := filepath.Join(dir, "pause.c")
	bin := filepath.Join(dir, "pause")
	if err := os.WriteFile(src, []byte(pauseC), 0o644); err != nil {
		return "", "", err
	}
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("gcc pause: %v: %s", err, out)
	}
	pb, err := os.ReadFile(bin)
	if err != nil {
		return "", "", err
	}
	pause = filepath.Join(dir, "pause.tar")
	if err := writeImage(pause, pauseImage, []string{"/pause"}, []file{{name: "pause", mode: 0o755, body: pb}}); err != nil {
		return "", "", err
	}
	// Debian's busybox-static: /bin/busybox must be the static build.
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", "", fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	files := []file{{name: "bin/busybox", mode: 0o755, body: bb}}
	for _, a := range []string{"sh", "nc", "grep", "printf", "httpd", "mkdir", "echo", "hostname", "sleep", "cat", "ip", "ping"} {
		files = append(files, file{name: "bin/" + a, mode: 0o777, link: "busybox"})
	}
	files = append(files, file{name: "tmp/.keep", mode: 0o644})
	busybox = filepath.Join(dir, "busybox.tar")
	if err := writeImage(busybox, busyboxImage, []string{"/bin/sh"}, files); err != nil {
		return "", "", err
	}
	return pause, busybox, nil
}
