package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = "/run/netns"

// ip runs the ip(8) command and returns its output; the error carries the
// command line and whatever ip printed, which is usually the whole story.
func ip(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, "ip", args...)
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runStdin(ctx, "", name, args...)
}

// runStdin is run with stdin as the command's standard input.
func runStdin(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// Exec runs args inside the network namespace netns (`ip netns exec`) and
// returns stdout and stderr together.
func (l *Lab) Exec(ctx context.Context, netns string, args ...string) ([]byte, error) {
	return ip(ctx, append([]string{"netns", "exec", netns}, args...)...)
}

// setSysctls writes /proc/sys values inside netns. The write happens on a
// thread that has entered the namespace, and /proc/sys/net follows the
// writer's namespace, so no sysctl binary is needed.
func setSysctls(netns string, kv map[string]string) error {
	return ns.WithNetNSPath(filepath.Join(netnsDir, netns), func(ns.NetNS) error {
		for k, v := range kv {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", k, v, netns, err)
			}
		}
		return nil
	})
}

// listNetns returns the names of the named namespaces that start with
// prefix+"-".
func listNetns(prefix string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// netnsPIDs lists the processes whose network namespace is netns.
func netnsPIDs(ctx context.Context, netns string) ([]int, error) {
	out, err := ip(ctx, "netns", "pids", netns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("ip netns pids %s: bad pid %q", netns, f)
		}
		if pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// deleteNetns kills every process inside netns by PID, waits for them, and
// deletes the namespace. A namespace that is already gone is not an error.
func deleteNetns(ctx context.Context, netns string, reap func(pid int) bool) error {
	if !netnsExists(netns) {
		return nil
	}
	var errs []error
	pids, err := netnsPIDs(ctx, netns)
	if err != nil {
		errs = append(errs, err)
	}
	if err := killAll(pids, reap); err != nil {
		errs = append(errs, fmt.Errorf("namespace %s: %w", netns, err))
	}
	if _, err := ip(ctx, "netns", "del", netns); err != nil && netnsExists(netns) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killAll sends SIGTERM to every PID, waits up to 3 s for them to go, then
// SIGKILLs the rest and waits again. reap, if not nil, is asked first about
// each PID so that a caller's own children are waited for (a child that has
// exited stays a zombie, which looks alive to kill(0), until its parent
// reaps it).
func killAll(pids []int, reap func(pid int) bool) error {
	if len(pids) == 0 {
		return nil
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	if waitGone(pids, reap, 3*time.Second) {
		return nil
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if waitGone(pids, reap, 3*time.Second) {
		return nil
	}
	var left []int
	for _, pid := range pids {
		if alive(pid, reap) {
			left = append(left, pid)
		}
	}
	return fmt.Errorf("processes %v survived SIGKILL", left)
}

func waitGone(pids []int, reap func(int) bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		all := true
		for _, pid := range pids {
			if alive(pid, reap) {
				all = false
				break
			}
		}
		if all {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int, reap func(int) bool) bool {
	if reap != nil && reap(pid) {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself
	// contain spaces and parentheses.
	s := string(st)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// isWeftd guards kills of PIDs read from lab.json: after a crash or reboot
// a recorded PID may belong to an unrelated process by now.
func isWeftd(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := bytes.Cut(b, []byte{0})
	return filepath.Base(string(argv0)) == "weftd"
}
