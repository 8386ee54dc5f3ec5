package e2e

// The container images of `make conformance` and of the Services/DNS
// checks, written with go-containerregistry as docker-archive tarballs
// that `ctr images import` reads. The machine reaches no registry, so
// every image is made here:
//
//   - agnhost 2.56 and CoreDNS are built from their Go modules (static);
//   - the tools the suite runs inside agnhost and the DNS prober (sh, seq,
//     dig, getent, curl, nc) are this machine's Debian programs: Debian's
//     static busybox for the shell and its applets, and the dynamically
//     linked dig, getent, curl, nc.openbsd and bash copied with every
//     shared library their ELF headers name (elfClosure), so they run in
//     the image as they do on the host;
//   - images the suite names but only needs to run a process (pause,
//     busybox, nginx, jessie-dnsutils) are made of the same parts under
//     the weft.test registry, and the repo list (conformanceRepoList)
//     points the suite at that registry. Which image stands in for which,
//     and why that is enough, is in conformanceImageSpecs.

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The registry the repo list maps the suite's registries to. Nothing
// serves it: every image under it is imported into containerd.
const testRegistry = "weft.test"

// imageFile is one entry of an image's single layer.
type imageFile struct {
	path string // inside the image, relative (no leading slash)
	mode int64  // permission bits
	body []byte
	link string // symlink target, when set
	dir  bool
}

// imageSpec describes one image: its references (all tags of the same
// image), its process and its files.
type imageSpec struct {
	refs       []string
	entrypoint []string
	cmd        []string
	env        []string
	files      []imageFile
}

// layer returns the files as an uncompressed layer tarball. Parent
// directories are written once, before their first entry; timestamps are
// zero, so the same files give the same digest.
func (s imageSpec) layer() ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	written := map[string]bool{}
	var mkdirs func(d string, mode int64) error
	mkdirs = func(d string, mode int64) error {
		if d == "." || d == "/" || written[d] {
			return nil
		}
		if err := mkdirs(path.Dir(d), 0o755); err != nil {
			return err
		}
		written[d] = true
		return tw.WriteHeader(&tar.Header{Name: d + "/", Mode: mode, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0), Format: tar.FormatPAX})
	}
	for _, f := range s.files {
		p := strings.TrimPrefix(path.Clean(f.path), "/")
		if f.dir {
			if err := mkdirs(p, f.mode); err != nil {
				return nil, err
			}
			continue
		}
		if written[p] {
			return nil, fmt.Errorf("image %s: %s twice", s.refs[0], p)
		}
		if err := mkdirs(path.Dir(p), 0o755); err != nil {
			return nil, err
		}
		written[p] = true
		h := &tar.Header{Name: p, Mode: f.mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
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

// image builds the one-layer linux/amd64 image.
func (s imageSpec) image() (v1.Image, error) {
	l, err := s.layer()
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l)), nil })
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.refs[0], err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.refs[0], err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config.Entrypoint = s.entrypoint
	cf.Config.Cmd = s.cmd
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, s.env...)
	return mutate.ConfigFile(img, cf)
}

// writeImages writes the images as one docker-archive tarball at p.
func writeImages(p string, specs ...imageSpec) error {
	refs := map[name.Reference]v1.Image{}
	for _, s := range specs {
		img, err := s.image()
		if err != nil {
			return err
		}
		for _, r := range s.refs {
			tag, err := name.NewTag(r, name.StrictValidation)
			if err != nil {
				return fmt.Errorf("image reference %q: %w", r, err)
			}
			refs[tag] = img
		}
	}
	if err := tarball.MultiRefWriteToFile(p, refs); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// staticProgram reads a statically linked ELF program (no interpreter,
// no shared libraries): such a program runs in an image that holds
// nothing else.
func staticProgram(hostPath, imagePath string) (imageFile, error) {
	f, err := elf.Open(hostPath)
	if err != nil {
		return imageFile{}, fmt.Errorf("%s: %w", hostPath, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return imageFile{}, fmt.Errorf("%s is dynamically linked (it has an interpreter); build it with CGO_ENABLED=0", hostPath)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return imageFile{}, fmt.Errorf("%s needs shared libraries %v", hostPath, libs)
	}
	b, err := os.ReadFile(hostPath)
	if err != nil {
		return imageFile{}, err
	}
	return imageFile{path: imagePath, mode: 0o755, body: b}, nil
}

// libDirs are where the dynamic loader of a Debian amd64 system looks,
// in its order; an image gets each library at the first of them that has
// it, so the loader finds it there without an ld.so.cache.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// elfClosure returns a dynamically linked host program (at imagePath),
// its interpreter and every shared library it needs, directly or through
// another library, each at the path the loader will look for it.
func elfClosure(hostPath, imagePath string) ([]imageFile, error) {
	var files []imageFile
	seen := map[string]bool{}
	add := func(host, img string, mode int64) error {
		if seen[img] {
			return nil
		}
		seen[img] = true
		b, err := os.ReadFile(host) // follows symlinks: the image gets the file itself
		if err != nil {
			return err
		}
		files = append(files, imageFile{path: img, mode: mode, body: b})
		return nil
	}
	var walk func(host string) error
	walk = func(host string) error {
		f, err := elf.Open(host)
		if err != nil {
			return fmt.Errorf("%s: %w", host, err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return fmt.Errorf("%s: interpreter: %w", host, err)
			}
			interp := strings.TrimRight(string(b), "\x00")
			if err := add(interp, strings.TrimPrefix(interp, "/"), 0o755); err != nil {
				return err
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", host, err)
		}
		for _, lib := range libs {
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, found in none of %v", host, lib, libDirs)
			}
			img := strings.TrimPrefix(found, "/")
			if seen[img] {
				continue
			}
			if err := add(found, img, 0o644); err != nil {
				return err
			}
			if err := walk(found); err != nil {
				return err
			}
		}
		return nil
	}
	if err := add(hostPath, imagePath, 0o755); err != nil {
		return nil, err
	}
	if err := walk(hostPath); err != nil {
		return nil, err
	}
	return files, nil
}

// busyboxFiles is Debian's static busybox at /bin/busybox with a link
// for each of its applets in /bin, except the names in except (programs
// the image gets for real).
func busyboxFiles(except ...string) ([]imageFile, error) {
	bb, err := staticProgram("/bin/busybox", "bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	files := []imageFile{bb}
	for _, a := range strings.Fields(string(out)) {
		if a == "busybox" || slices.Contains(except, a) {
			continue
		}
		files = append(files, imageFile{path: "bin/" + a, mode: 0o777, link: "busybox"})
	}
	return files, nil
}

// hostTool is a Debian program an image carries with its libraries.
type hostTool struct {
	host, image, pkg string
}

// netTools are the programs the e2e suite runs inside agnhost and the DNS
// prober besides the shell's: dig (queries over UDP and TCP, +search),
// getent (the resolver path of libc), curl (most Service checks), nc with
// -t/-u/-v/-w (OpenBSD's, as in upstream's agnhost), bash.
var netTools = []hostTool{
	{"/usr/bin/dig", "usr/bin/dig", "bind9-dnsutils"},
	{"/usr/bin/getent", "usr/bin/getent", "libc-bin"},
	{"/usr/bin/curl", "usr/bin/curl", "curl"},
	{"/bin/nc.openbsd", "usr/bin/nc", "netcat-openbsd"},
	{"/bin/bash", "bin/bash", "bash"},
}

// toolFiles returns the tools with their libraries, each library once.
func toolFiles(tools []hostTool) ([]imageFile, error) {
	var files []imageFile
	seen := map[string]bool{}
	for _, tl := range tools {
		if _, err := os.Stat(tl.host); err != nil {
			return nil, fmt.Errorf("%s (package %s): %w", tl.host, tl.pkg, err)
		}
		fs, err := elfClosure(tl.host, tl.image)
		if err != nil {
			return nil, err
		}
		for _, f := range fs {
			if !seen[f.path] {
				seen[f.path] = true
				files = append(files, f)
			}
		}
	}
	return files, nil
}

// baseFiles are what every shell image here has besides programs: the
// directories a process expects, a passwd and group with the user and
// group upstream's agnhost defines (uid 1000 in gid 50000), and an
// nsswitch.conf sending host lookups to /etc/hosts, then DNS.
func baseFiles() []imageFile {
	return []imageFile{
		{path: "tmp", mode: 0o1777, dir: true},
		{path: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{path: "etc/group", mode: 0o644, body: []byte("root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\nnogroup:x:65534:\n")},
		{path: "etc/nsswitch.conf", mode: 0o644, body: []byte("hosts: files dns\npasswd: files\ngroup: files\n")},
		{path: "root", mode: 0o700, dir: true},
	}
}

// Versions of the images the e2e suite of Kubernetes v1.34.4 asks for
// (test/utils/image/manifest.go of that version).
const (
	agnhostVersion        = "2.56"
	busyboxImageVersion   = "1.37.0-1"
	nginxImageVersion     = "1.14-4"
	dnsutilsImageVersion  = "1.7"
	pauseUpstreamVersion  = "3.10.1"
	upstreamE2ERegistry   = "registry.k8s.io/e2e-test-images"
	corednsImage          = testRegistry + "/coredns:" + corednsVersion
	agnhostUpstreamImage  = upstreamE2ERegistry + "/agnhost:" + agnhostVersion
	agnhostTestImage      = testRegistry + "/e2e-test-images/agnhost:" + agnhostVersion
	dnsutilsTestImage     = testRegistry + "/e2e-test-images/jessie-dnsutils:" + dnsutilsImageVersion
	nginxTestImage        = testRegistry + "/e2e-test-images/nginx:" + nginxImageVersion
	busyboxTestImage      = testRegistry + "/e2e-test-images/busybox:" + busyboxImageVersion
	pauseTestImage        = testRegistry + "/pause:" + pauseUpstreamVersion
	nginxStandInIndexHTML = "<html><body>weft test nginx stand-in</body></html>\n"
)

// conformanceRepoList is the --kube-test-repo-list file: the suite's
// registries for the images above, pointed at testRegistry. Registries of
// images no [sig-network] [Conformance] test uses are left as upstream
// has them, so that a test needing one fails on the missing image rather
// than running something else.
func conformanceRepoList() string {
	return "promoterE2eRegistry: " + testRegistry + "/e2e-test-images\n" +
		"gcRegistry: " + testRegistry + "\n"
}

// conformanceImageSpecs returns the images for the suite and the
// Services/DNS checks from the agnhost and CoreDNS binaries:
//
//   - agnhost 2.56 (built from source): /agnhost, /agnhost-2, /uploads,
//     porter's /localhost.crt and /localhost.key (the proxy tests' TLS
//     ports), busybox, dig, getent, curl, nc, bash; entrypoint and command
//     as upstream (/agnhost pause). Tagged both under weft.test (what the repo
//     list points the suite at) and as upstream names it.
//   - jessie-dnsutils 1.7: the DNS tests' second prober runs `sh -c` with
//     seq, dig, getent, test, echo and sleep in it: busybox and the tools.
//   - nginx 1.14-4: the EndpointSlice test only needs pods that run and
//     listen on 80: busybox httpd serving one page on 80.
//   - busybox 1.37.0-1: Debian's static busybox, command sh.
//   - pause 3.10.1 (a Deployment's container in the Service latency test):
//     agnhost's own pause subcommand.
//   - CoreDNS: /coredns, run with -conf from the ConfigMap.
func conformanceImageSpecs(agnhostFiles agnhostParts, corednsBin string) ([]imageSpec, error) {
	agn, err := staticProgram(agnhostFiles.bin, "agnhost")
	if err != nil {
		return nil, err
	}
	var tlsPair []imageFile
	for _, f := range [][2]string{{agnhostFiles.cert, "localhost.crt"}, {agnhostFiles.key, "localhost.key"}} {
		b, err := os.ReadFile(f[0])
		if err != nil {
			return nil, fmt.Errorf("agnhost porter's TLS pair: %w", err)
		}
		tlsPair = append(tlsPair, imageFile{path: f[1], mode: 0o644, body: b})
	}
	// /bin/sh is bash, as upstream's Debian-based images have a shell
	// that runs what PATH finds: busybox's sh runs its own applets first,
	// so `sh -c "nc -v …"` would get busybox's nc, which has no -v.
	bb, err := busyboxFiles("nc", "sh")
	if err != nil {
		return nil, err
	}
	bb = append(bb, imageFile{path: "bin/sh", mode: 0o777, link: "bash"})
	tools, err := toolFiles(netTools)
	if err != nil {
		return nil, err
	}
	shell := append(append(baseFiles(), bb...), tools...)
	agnhost := imageSpec{
		refs:       []string{agnhostTestImage, agnhostUpstreamImage},
		entrypoint: []string{"/agnhost"},
		cmd:        []string{"pause"},
		files:      append(append(slices.Clone(shell), tlsPair...), agn, imageFile{path: "agnhost-2", mode: 0o777, link: "agnhost"}, imageFile{path: "uploads", mode: 0o755, dir: true}),
	}
	dnsutils := imageSpec{refs: []string{dnsutilsTestImage}, cmd: []string{"sh"}, files: slices.Clone(shell)}
	nginx := imageSpec{
		refs:       []string{nginxTestImage},
		entrypoint: []string{"/bin/httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"},
		files:      append(append(baseFiles(), bb...), imageFile{path: "usr/share/nginx/html/index.html", mode: 0o644, body: []byte(nginxStandInIndexHTML)}),
	}
	busybox := imageSpec{refs: []string{busyboxTestImage}, cmd: []string{"sh"}, files: append(baseFiles(), bb...)}
	pause := imageSpec{refs: []string{pauseTestImage}, entrypoint: []string{"/agnhost", "pause"}, files: []imageFile{agn}}
	specs := []imageSpec{agnhost, dnsutils, nginx, busybox, pause}
	if corednsBin != "" {
		cd, err := staticProgram(corednsBin, "coredns")
		if err != nil {
			return nil, err
		}
		specs = append(specs, imageSpec{refs: []string{corednsImage}, entrypoint: []string{"/coredns"}, files: []imageFile{cd, {path: "tmp", mode: 0o1777, dir: true}}})
	}
	return specs, nil
}

// imageRefs lists every reference of specs, sorted.
func imageRefs(specs []imageSpec) []string {
	var refs []string
	for _, s := range specs {
		refs = append(refs, s.refs...)
	}
	sort.Strings(refs)
	return refs
}
