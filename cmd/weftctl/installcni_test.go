package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// installFixture makes a source weft-cni and the shipped conflist, and
// empty node directories.
func installFixture(t *testing.T) installCNIConfig {
	t.Helper()
	d := t.TempDir()
	c := installCNIConfig{
		pluginSrc: filepath.Join(d, "src", "weft-cni"),
		confSrc:   filepath.Join(d, "src", "10-weft.conflist"),
		binDir:    filepath.Join(d, "opt-cni-bin"),
		confDir:   filepath.Join(d, "etc-cni-net.d"),
	}
	for _, dir := range []string{filepath.Dir(c.pluginSrc), c.binDir, c.confDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf, err := os.ReadFile("../../deploy/cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.confSrc, conf, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.pluginSrc, []byte("\x7fELF weft-cni v1"), 0o555); err != nil {
		t.Fatal(err)
	}
	return c
}

func quiet(string, ...any) {}

// onlyFiles fails unless dir holds exactly the named files (no temporary
// left behind).
func onlyFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

func TestInstallCNI(t *testing.T) {
	c := installFixture(t)
	var log []string
	logf := func(f string, a ...any) { log = append(log, f) }
	if err := installCNI(c, logf); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ src, dst string }{{c.pluginSrc, filepath.Join(c.binDir, "weft-cni")}, {c.confSrc, filepath.Join(c.confDir, "10-weft.conflist")}} {
		want, _ := os.ReadFile(f.src)
		got, err := os.ReadFile(f.dst)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %q, %v; want the content of %s", f.dst, got, err, f.src)
		}
	}
	// The plugin must be executable by the runtime, the config readable;
	// the source modes (read-only mounts) do not carry over.
	for path, mode := range map[string]os.FileMode{filepath.Join(c.binDir, "weft-cni"): 0o755, filepath.Join(c.confDir, "10-weft.conflist"): 0o644} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s mode %v (%v), want %v", path, fi.Mode().Perm(), err, mode)
		}
	}
	onlyFiles(t, c.binDir, "weft-cni")
	onlyFiles(t, c.confDir, "10-weft.conflist")
	if len(log) != 2 || !strings.HasPrefix(log[0], "installed") || !strings.HasPrefix(log[1], "installed") {
		t.Fatalf("log %q", log)
	}

	// Again, unchanged: nothing is written (the inode stays).
	before, _ := os.Stat(filepath.Join(c.confDir, "10-weft.conflist"))
	log = nil
	if err := installCNI(c, logf); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(filepath.Join(c.confDir, "10-weft.conflist"))
	if !os.SameFile(before, after) || !strings.Contains(log[1], "up to date") {
		t.Fatalf("an unchanged conflist was rewritten (log %q)", log)
	}

	// A new plugin version replaces the old one, under the same name.
	if err := os.Chmod(c.pluginSrc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.pluginSrc, []byte("\x7fELF weft-cni v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := installCNI(c, quiet); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(c.binDir, "weft-cni")); string(got) != "\x7fELF weft-cni v2" {
		t.Fatalf("plugin not replaced: %q", got)
	}
	// Same content, wrong mode (someone chmodded it): repaired.
	os.Chmod(filepath.Join(c.binDir, "weft-cni"), 0o644)
	if err := installCNI(c, quiet); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(c.binDir, "weft-cni")); fi.Mode().Perm() != 0o755 {
		t.Fatalf("plugin mode %v not repaired", fi.Mode().Perm())
	}
	onlyFiles(t, c.binDir, "weft-cni")
}

func TestInstallCNIRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(c *installCNIConfig)
		want  string
	}{
		{"broken conflist", func(c *installCNIConfig) {
			os.Chmod(c.confSrc, 0o644)
			os.WriteFile(c.confSrc, []byte(`{"name":`), 0o644)
		}, "--conflist"},
		{"conflist without plugins", func(c *installCNIConfig) {
			os.Chmod(c.confSrc, 0o644)
			os.WriteFile(c.confSrc, []byte(`{"cniVersion":"1.0.0","name":"weft","plugins":[]}`), 0o644)
		}, "--conflist"},
		{"no plugin binary", func(c *installCNIConfig) { c.pluginSrc += ".missing" }, "--plugin"},
		{"no conflist", func(c *installCNIConfig) { c.confSrc += ".missing" }, "--conflist"},
		{"no bin dir", func(c *installCNIConfig) { c.binDir = filepath.Join(c.binDir, "missing") }, "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := installFixture(t)
			bin, conf := c.binDir, c.confDir
			tc.setup(&c)
			err := installCNI(c, quiet)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one naming %s", err, tc.want)
			}
			// Nothing half-done: a refused config installs no plugin either.
			onlyFiles(t, conf)
			if tc.name != "no bin dir" {
				onlyFiles(t, bin)
			}
		})
	}
}

// A reader that opens the installed plugin while it is being replaced
// sees the old content or the new, whole, never a mix or a short file.
func TestInstallCNIAtomic(t *testing.T) {
	c := installFixture(t)
	versions := [][]byte{bytes.Repeat([]byte("A"), 1<<20), bytes.Repeat([]byte("B"), 1<<20)}
	os.Chmod(c.pluginSrc, 0o755)
	os.WriteFile(c.pluginSrc, versions[0], 0o755)
	if err := installCNI(c, quiet); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(c.binDir, "weft-cni")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad, reads int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(dst)
			reads++
			if err != nil || !(bytes.Equal(b, versions[0]) || bytes.Equal(b, versions[1])) {
				bad++
			}
		}
	}()
	for i := 1; i <= 40; i++ {
		os.WriteFile(c.pluginSrc, versions[i%2], 0o755)
		if err := installCNI(c, quiet); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if bad != 0 {
		t.Fatalf("%d of %d reads saw a missing or partial plugin", bad, reads)
	}
	onlyFiles(t, c.binDir, "weft-cni")
}

func TestInstallCNIFlags(t *testing.T) {
	if err := runInstallCNI([]string{"extra"}); err == nil {
		t.Fatal("a stray argument was accepted")
	}
	c := installFixture(t)
	err := runInstallCNI([]string{"--plugin", c.pluginSrc, "--conflist", c.confSrc, "--cni-bin-dir", c.binDir, "--cni-conf-dir", c.confDir})
	if err != nil {
		t.Fatal(err)
	}
	onlyFiles(t, c.confDir, "10-weft.conflist")
}
