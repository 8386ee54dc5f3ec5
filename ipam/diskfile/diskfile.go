// Package diskfile replaces files crash-safely: after a crash at any point a
// reader finds the old content or the new, never a torn or empty file.
//
// It lives under ipam because ipam's store is where weft's on-disk state
// began and where the crash-safety rules are spelled out (ipam/store.go);
// it is a leaf (standard library only), so encap, cni, bench and the lab
// import it without pulling in the allocator or any import going upward.
package diskfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces the file at path with data, mode perm. The data goes to a
// temporary file in the same directory (so the rename cannot cross file
// systems) under a unique name starting with a dot (so concurrent writers
// never share one, and directory scans can skip it); the temporary is
// fsynced, renamed over path, and the directory fsynced, which makes the
// rename itself durable. perm is applied with chmod, so the umask does not
// change it. On failure the temporary is removed and path is untouched.
func Write(path string, data []byte, perm os.FileMode) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory, making the creations, renames and removals
// inside it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
