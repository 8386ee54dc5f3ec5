package e2e

// One mount namespace per node. The two test nodes share one host, but the
// DaemonSet's hostPaths hold per-node state: weftd's socket and node.json
// (/run/weft), its keys and IPAM store (/var/lib/weft), the CNI plugin and
// config the init container installs (/opt/cni/bin, /etc/cni/net.d) and
// the WireGuard UAPI socket (/var/run/wireguard, which is /run/wireguard).
// Each node's containerd, kube-proxy and kubelet run in a mount namespace
// of the node's own (private propagation, so nothing mounted in it leaks
// to the host or the other node, and the reverse), in which a directory
// under the node's data dir is bound onto each of those paths. The pods
// the kubelet starts see the node's paths as the host's. /dev/net/tun is
// the one hostPath left shared: a character device without state (each
// open makes its own TUN).
//
// The namespace outlives its processes through a bind mount of its nsfs
// file under mntnsDir (`unshare --mount=FILE`, as `ip netns add` does for
// network namespaces); mntnsDir is itself a private mount, which the
// kernel requires of a directory holding such files. Processes enter with
// `nsenter --mount=FILE`, which changes nothing else (unlike `ip netns
// exec`, it remounts no /sys, so the kubelet still finds its cgroups).

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

const mntnsDir = "/run/weft-kube-e2e-mntns"

// nodePaths are the DaemonSet's per-node hostPaths and the directory below
// the node's data dir bound onto each.
var nodePaths = []struct{ host, sub string }{
	{"/run/weft", "run/weft"},
	{"/var/lib/weft", "lib/weft"},
	{"/opt/cni/bin", "cni-bin"},
	{"/etc/cni/net.d", "net.d"},
	{"/run/wireguard", "run/wireguard"},
}

// cleanupMountNS removes what a crashed run left: the namespace files and
// the private mount of their directory. The namespaces go once no process
// holds them.
func cleanupMountNS() {
	unmountUnder(mntnsDir)
	os.RemoveAll(mntnsDir)
}

// setupMountNSDir makes mntnsDir a private mount of its own.
func setupMountNSDir() error {
	if err := os.MkdirAll(mntnsDir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount(mntnsDir, mntnsDir, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", mntnsDir, err)
	}
	if err := syscall.Mount("", mntnsDir, "", syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", mntnsDir, err)
	}
	return nil
}

// mountNS creates node n's mount namespace with its per-node paths bound
// in, and returns its file. The host-side mount points must exist (the
// caller creates the missing ones and removes them afterwards).
func (c *cluster) mountNS(n string) string {
	t := c.t
	file := filepath.Join(mntnsDir, n)
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("unshare", "--mount="+file, "--propagation", "private", "true").CombinedOutput(); err != nil {
		t.Fatalf("unshare --mount=%s: %v: %s", file, err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(file, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", file, err)
		}
		os.Remove(file)
	})
	for _, p := range nodePaths {
		src := filepath.Join(c.nodeDir(n), p.sub)
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("nsenter", "--mount="+file, "--", "mount", "--bind", src, p.host).CombinedOutput(); err != nil {
			t.Fatalf("%s: mount --bind %s %s: %v: %s", n, src, p.host, err, out)
		}
	}
	// Proof that the namespace is the node's alone: a file written
	// through its /run/weft lands in the node's dir, not the host's.
	probe := filepath.Join(c.nodeDir(n), "run/weft", ".mntns-probe")
	if out, err := exec.Command("nsenter", "--mount="+file, "--", "touch", "/run/weft/.mntns-probe").CombinedOutput(); err != nil {
		t.Fatalf("%s: touch in the mount namespace: %v: %s", n, err, out)
	}
	if _, err := os.Stat(probe); err != nil {
		t.Fatalf("%s: /run/weft in its mount namespace is not %s: %v", n, filepath.Dir(probe), err)
	}
	if _, err := os.Stat("/run/weft/.mntns-probe"); err == nil {
		t.Fatalf("%s: a file written in its mount namespace showed up in the host's /run/weft", n)
	}
	os.Remove(probe)
	return file
}
