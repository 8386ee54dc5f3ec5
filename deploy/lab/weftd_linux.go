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
	"github.com/weftnet/weft/overlay/control"
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
	if err := l.startWeftd(n, l.seedsFor(n), args); err != nil {
		return err
	}
	if err := l.save(); err != nil {
		return err
	}
	return l.waitReady(ctx, n)
}

// HandOffWeftd starts a second weftd on node beside the running one, with
// the flags Up used plus extra: the new one takes the datapath over
// (weftd's hand-off) and the old one exits. It returns once the old one
// has exited and the control socket answers from the new one.
func (l *Lab) HandOffWeftd(ctx context.Context, node string, extra ...string) error {
	n := l.Node(node)
	if n == nil || n.External {
		return fmt.Errorf("hand off weftd: no weftd node %q", node)
	}
	old := n.WeftdPID
	l.mu.Lock()
	oldProc := l.procs[old]
	l.mu.Unlock()
	if old <= 0 || oldProc == nil || !alive(old, l.reap) {
		return fmt.Errorf("hand off weftd on %s: no running weftd of this lab", node)
	}
	args := append(append([]string(nil), l.WeftdArgs...), extra...)
	if err := l.startWeftd(n, l.seedsFor(n), args); err != nil {
		return err
	}
	l.mu.Lock()
	newProc := l.procs[n.WeftdPID]
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	select {
	case <-oldProc.done:
	case <-newProc.done:
		return fmt.Errorf("hand off weftd on %s: the new weftd exited (%v); log %s:\n%s", node, newProc.err, n.LogFile, tail(n.LogFile, 20))
	case <-ctx.Done():
		return fmt.Errorf("hand off weftd on %s: the old weftd (pid %d) still runs: %w; log %s:\n%s", node, old, ctx.Err(), n.LogFile, tail(n.LogFile, 20))
	}
	l.mu.Lock()
	delete(l.procs, old)
	l.mu.Unlock()
	for {
		st, err := control.Get(ctx, n.ControlSocket)
		if err == nil && st.Process.PID == n.WeftdPID {
			break
		}
		select {
		case <-newProc.done:
			return fmt.Errorf("hand off weftd on %s: the new weftd exited (%v); log %s:\n%s", node, newProc.err, n.LogFile, tail(n.LogFile, 20))
		case <-ctx.Done():
			return fmt.Errorf("hand off weftd on %s: the new weftd's control socket: %v (%w)", node, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return l.save()
}
