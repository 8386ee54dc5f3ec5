package diskfile

import (
	"os"
	"path/filepath"
	"testing"
)

// entries lists dir, failing the test on error.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, tc := range []struct {
		data string
		perm os.FileMode
	}{
		{"first\n", 0o600},
		{"second, longer than the first\n", 0o644}, // overwrite, mode changes too
		{"", 0o640},                                // shorter: no tail of the old content
	} {
		if err := Write(path, []byte(tc.data), tc.perm); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.data {
			t.Errorf("content %q, want %q", b, tc.data)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.perm {
			t.Errorf("mode %o, want %o", fi.Mode().Perm(), tc.perm)
		}
		if got := entries(t, dir); len(got) != 1 || got[0] != "state.json" {
			t.Errorf("directory holds %q, want only state.json (no temporary left)", got)
		}
	}
}

// The mode is exact whatever the umask: a private key must not come out
// wider, and a file others read must not come out narrower.
func TestWriteIgnoresUmask(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := Write(path, []byte("x"), 0o666); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o666 {
		t.Fatalf("mode %o, want 666", fi.Mode().Perm())
	}
}

// A failed replacement leaves the target as it was and no temporary
// behind. The rename is made to fail by a non-empty directory in the
// target's place, which fails for root too.
func TestWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target")
	if err := os.MkdirAll(filepath.Join(path, "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new"), 0o644); err == nil {
		t.Fatal("Write over a non-empty directory succeeded")
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "target" {
		t.Fatalf("directory holds %q after a failed write, want only target", got)
	}
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		t.Fatalf("target changed: %v %v", fi, err)
	}
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o644); err == nil {
		t.Fatal("Write into a missing directory succeeded")
	}
}

func TestWriteRelative(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := Write("f", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile("f"); err != nil || string(b) != "x" {
		t.Fatalf("read back %q %v", b, err)
	}
}
