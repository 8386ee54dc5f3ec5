package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/weftnet/weft/ipam/diskfile"
	"github.com/weftnet/weft/peer"
)

// writeGossipKey makes a fresh gossip key for this lab, so that no two labs
// (or a lab and a real cluster) can ever gossip with each other.
func (l *Lab) writeGossipKey() error {
	k, err := peer.GenerateKey()
	if err != nil {
		return err
	}
	l.GossipKeyFile = filepath.Join(l.Dir, "gossip.key")
	return diskfile.Write(l.GossipKeyFile, peer.FormatKeyFile([][]byte{k}), 0o600)
}

// StopWeftd sends sig to node's weftd and waits up to timeout for it to
// exit. SIGTERM is a graceful stop (a restart; weftd leaves the cluster
// first only with --leave-on-exit),
// SIGKILL a crash. The node's pods and its state directory stay; start it
// again with StartWeftd.
func (l *Lab) StopWeftd(node string, sig syscall.Signal, timeout time.Duration) error {
	n := l.Node(node)
	if n == nil || n.External {
		return fmt.Errorf("stop weftd: no weftd node %q", node)
	}
	pid := n.WeftdPID
	if pid <= 0 || !alive(pid, l.reap) {
		return fmt.Errorf("stop weftd on %s: not running", node)
	}
	if !l.ownsProc(pid) && !isWeftd(pid) {
		return fmt.Errorf("stop weftd on %s: pid %d is not weftd", node, pid)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("stop weftd on %s (pid %d): %w", node, pid, err)
	}
	deadline := time.Now().Add(timeout)
	for alive(pid, l.reap) {
		if time.Now().After(deadline) {
			return fmt.Errorf("stop weftd on %s (pid %d): still running after %s", node, pid, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.mu.Lock()
	n.WeftdPID = 0
	delete(l.procs, pid)
	err := l.saveLocked()
	l.mu.Unlock()
	return err
}

// StartWeftd starts node's weftd again, with the flags Up used plus
// extra, and waits until it is ready (node.json and control socket).
func (l *Lab) StartWeftd(ctx context.Context, node string, extra ...string) error {
	n := l.Node(node)
	if n == nil || n.External {
		return fmt.Errorf("start weftd: no weftd node %q", node)
	}
	if n.WeftdPID > 0 && alive(n.WeftdPID, l.reap) {
		return fmt.Errorf("start weftd on %s: already running (pid %d)", node, n.WeftdPID)
	}
	// Ready means a fresh node.json and socket, not the previous run's.
	for _, f := range []string{filepath.Join(n.RunDir, "node.json"), n.ControlSocket} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("start weftd on %s: %w", node, err)
		}
	}
	args := append(append([]string(nil), l.WeftdArgs...), extra...)
	if err := l.startWeftd(n, l.Seed, args); err != nil {
		return err
	}
	if err := l.save(); err != nil {
		return err
	}
	return l.waitReady(ctx, n)
}
