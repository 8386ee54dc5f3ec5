// Package image writes container image tarballs without a container
// daemon: weft's node image (`make image`) and the small test images of
// test-kube (pause, busybox) all go through Write.
//
// The output is one image in the `docker save` layout (manifest.json, the
// config blob, gzipped layers), written by go-containerregistry's tarball
// package. That layout is what `ctr images import`, `kind load
// image-archive`, `docker load`, `podman load` and `crane push` all read, so
// one file serves a containerd node, a kind cluster and a registry push.
//
// Images are reproducible: every file and the config carry the Unix epoch
// as their time, so the same binaries give the same digests.
//
// This is a module of its own (deploy/image/go.mod) so that
// go-containerregistry and what it requires stay out of weft's module
// graph: weftd, weft-cni and weftctl never link it, and only `make image`
// and test-kube (deploy/e2e, through a replace directive) build it.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one entry of an image's single layer. Name is relative to the
// root ("usr/local/bin/weftd"); a Name ending in "/" is a directory, a
// non-empty Link makes a symlink to Link, anything else is a regular file
// holding Body. Parent directories are created (mode 0755) as needed.
type File struct {
	Name string
	Mode int64
	Body []byte
	Link string
}

// Config is what an image runs and how it is named.
type Config struct {
	// Ref is the image's name and tag, e.g. "ghcr.io/weftnet/weft:v0.1.0";
	// `ctr images import` and `docker load` register it under this name.
	Ref        string
	Entrypoint []string
	Env        []string
	Labels     map[string]string
	// Arch is the GOARCH of the binaries inside ("amd64", "arm64").
	Arch string
}

// epoch is every timestamp in an image: reproducible output.
var epoch = time.Unix(0, 0).UTC()

// Write writes a one-layer image of files, configured by cfg, to path as
// an image tarball.
func Write(path string, cfg Config, files []File) error {
	ref, err := name.NewTag(cfg.Ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image ref %q: %w", cfg.Ref, err)
	}
	img, err := Build(cfg, files)
	if err != nil {
		return fmt.Errorf("image %s: %w", cfg.Ref, err)
	}
	if err := tarball.WriteToFile(path, ref, img); err != nil {
		return fmt.Errorf("write image %s to %s: %w", cfg.Ref, path, err)
	}
	return nil
}

// Build returns the image Write writes, for callers that push it
// elsewhere or inspect it.
func Build(cfg Config, files []File) (v1.Image, error) {
	layerTar, err := Layer(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = cfg.Arch
	if cf.Architecture == "" {
		return nil, fmt.Errorf("config: no architecture")
	}
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = cfg.Entrypoint
	cf.Config.Env = cfg.Env
	cf.Config.Labels = cfg.Labels
	return mutate.ConfigFile(img, cf)
}

// Layer returns the uncompressed layer tarball of files: parent
// directories first, each path once, every time the epoch, owned by root.
func Layer(files []File) ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	seen := map[string]bool{}
	var dirs func(p string) error
	dirs = func(p string) error {
		if p == "." || p == "/" || p == "" || seen[p+"/"] {
			return nil
		}
		if err := dirs(path.Dir(p)); err != nil {
			return err
		}
		seen[p+"/"] = true
		return tw.WriteHeader(&tar.Header{Name: p + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: epoch, Format: tar.FormatPAX})
	}
	for _, f := range sorted(files) {
		clean := path.Clean(f.Name)
		if f.Name == "" || path.IsAbs(f.Name) || clean == ".." || strings.HasPrefix(clean, "../") {
			return nil, fmt.Errorf("layer file %q: want a path relative to the root", f.Name)
		}
		if seen[clean] || seen[clean+"/"] {
			return nil, fmt.Errorf("layer file %q: twice", f.Name)
		}
		if err := dirs(path.Dir(clean)); err != nil {
			return nil, err
		}
		h := &tar.Header{Name: clean, Mode: f.Mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case strings.HasSuffix(f.Name, "/"):
			h.Name, h.Typeflag = clean+"/", tar.TypeDir
			seen[clean+"/"] = true
		case f.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
			seen[clean] = true
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Body))
			seen[clean] = true
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer file %s: %w", f.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Body); err != nil {
				return nil, fmt.Errorf("layer file %s: %w", f.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// sorted returns files ordered by name, so the layer (and its digest)
// does not depend on the caller's order.
func sorted(files []File) []File {
	s := append([]File(nil), files...)
	sort.SliceStable(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	return s
}
