package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// readTar lists the entries of a flattened image filesystem: name → header.
func readTar(t *testing.T, r io.Reader) map[string]*tar.Header {
	t.Helper()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		// Extract cleans names ("bin/" → "bin"); so does this index.
		out[strings.TrimSuffix(h.Name, "/")] = h
	}
}

func TestWriteReadBack(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.tar")
	files := []File{
		{Name: "bin/tool", Mode: 0o755, Body: []byte("#tool")},
		{Name: "bin/alias", Mode: 0o777, Link: "tool"},
		{Name: "tmp/", Mode: 0o1777},
	}
	cfg := Config{Ref: "weft.test/x:1", Arch: "amd64", Entrypoint: []string{"/bin/tool"}, Env: []string{"PATH=/bin"}}
	if err := Write(p, cfg, files); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("weft.test/x:1")
	img, err := tarball.ImageFromPath(p, &tag)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !slices.Equal(cf.Config.Entrypoint, []string{"/bin/tool"}) || cf.Created.Unix() != 0 {
		t.Fatalf("config %+v", cf)
	}
	fs := readTar(t, mutate.Extract(img))
	if h := fs["bin/tool"]; h == nil || h.Mode != 0o755 || h.Size != 5 {
		t.Errorf("bin/tool: %+v", h)
	}
	if h := fs["bin/alias"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "tool" {
		t.Errorf("bin/alias: %+v", h)
	}
	if h := fs["tmp"]; h == nil || h.Typeflag != tar.TypeDir {
		t.Errorf("tmp/: %+v", h)
	}
	if h := fs["bin"]; h == nil || h.Typeflag != tar.TypeDir {
		t.Errorf("parent bin/ not created: %+v", h)
	}

	// Same input, same bytes, whatever the order of files.
	p2 := filepath.Join(t.TempDir(), "y.tar")
	slices.Reverse(files)
	if err := Write(p2, cfg, files); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(p)
	b, _ := os.ReadFile(p2)
	if !bytes.Equal(a, b) {
		t.Error("two writes of the same image differ")
	}
}

func TestLayerRefusesBadNames(t *testing.T) {
	for _, n := range []string{"", "/etc/passwd", "../x", "a/../../x"} {
		if _, err := Layer([]File{{Name: n, Body: []byte("x")}}); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
	if _, err := Layer([]File{{Name: "a"}, {Name: "a"}}); err == nil {
		t.Error("a file given twice accepted")
	}
	if err := Write(filepath.Join(t.TempDir(), "x.tar"), Config{Ref: "Not A Ref", Arch: "amd64"}, nil); err == nil {
		t.Error("a bad ref accepted")
	}
}

// TestWeftImage builds weft's image as `make image` does: three static
// binaries in /usr/local/bin, weftd the entrypoint, and nothing else (no
// shell). It compiles weft, so it stays out of -short.
func TestWeftImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds weft's binaries")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "weft.tar")
	ref, err := Weft(context.Background(), WeftOptions{Root: "../..", Version: "v0.0.0-test", Out: out, BinDir: filepath.Join(dir, "bin")})
	if err != nil {
		t.Fatal(err)
	}
	if ref != "ghcr.io/weftnet/weft:v0.0.0-test" {
		t.Fatalf("ref %s", ref)
	}
	tag, _ := name.NewTag(ref)
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/weftd"}) || cf.Config.Labels["org.opencontainers.image.version"] != "v0.0.0-test" {
		t.Fatalf("config %+v", cf.Config)
	}
	var regular []string
	for n, h := range readTar(t, mutate.Extract(img)) {
		if h.Typeflag != tar.TypeDir {
			regular = append(regular, n)
		}
	}
	slices.Sort(regular)
	if want := []string{"usr/local/bin/weft-cni", "usr/local/bin/weftctl", "usr/local/bin/weftd"}; !slices.Equal(regular, want) {
		t.Fatalf("image files %v, want only %v", regular, want)
	}
	for _, b := range Binaries {
		if err := CheckStatic(filepath.Join(dir, "bin", b)); err != nil {
			t.Error(err)
		}
	}
}

func TestCheckStaticRefusesDynamic(t *testing.T) {
	// /bin/ls is dynamically linked on every Debian.
	if _, err := os.Stat("/bin/ls"); err != nil {
		t.Skip("no /bin/ls")
	}
	if err := CheckStatic("/bin/ls"); err == nil {
		t.Error("/bin/ls passed as static")
	}
}
