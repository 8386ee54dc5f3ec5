package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of the times in /proc/<pid>/stat and /proc/stat:
// USER_HZ, fixed at 100 by the kernel's user ABI on every architecture
// this runs on.
const userHZ = 100

// procCPU returns utime+stime of pid in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
	}
	return parseProcStat(b)
}

// parseProcStat takes utime and stime (fields 14 and 15) from a
// /proc/<pid>/stat line. The command name (field 2) is in parentheses and
// may hold spaces and parentheses itself, so fields count from the last ')'.
func parseProcStat(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields", len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("proc stat: %w", err)
	}
	return float64(ut+st) / userHZ, nil
}

// machineCPU is the first line of /proc/stat, in seconds of CPU time.
type machineCPU struct {
	user, nice, system, idle, iowait, irq, softirq, steal float64
}

func (m machineCPU) busy() float64 {
	return m.user + m.nice + m.system + m.irq + m.softirq + m.steal
}

func (m machineCPU) total() float64 { return m.busy() + m.idle + m.iowait }

func readMachineCPU() (machineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineCPU{}, fmt.Errorf("machine cpu: %w", err)
	}
	return parseMachineCPU(b)
}

func parseMachineCPU(b []byte) (machineCPU, error) {
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return machineCPU{}, fmt.Errorf("machine cpu: bad /proc/stat line %q", line)
	}
	var v [8]float64
	for i := range v {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return machineCPU{}, fmt.Errorf("machine cpu: %w", err)
		}
		v[i] = float64(n) / userHZ
	}
	return machineCPU{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}, nil
}

// cpuMeter measures CPUUse over one test: a set of PIDs that live through
// it (iperf3 server, daemons), plus children that ran it whole (the
// iperf3 client, whose usage comes from wait4).
type cpuMeter struct {
	pids    []int
	start   time.Time
	procs   []float64
	self    float64
	machine machineCPU
}

func startCPU(pids []int) (*cpuMeter, error) {
	m := &cpuMeter{pids: pids, start: time.Now()}
	for _, pid := range pids {
		c, err := procCPU(pid)
		if err != nil {
			return nil, err
		}
		m.procs = append(m.procs, c)
	}
	var err error
	if m.self, err = procCPU(os.Getpid()); err != nil {
		return nil, err
	}
	if m.machine, err = readMachineCPU(); err != nil {
		return nil, err
	}
	return m, nil
}

// stop returns the CPU used since start; children is the CPU time of the
// processes that ran and ended inside the window.
func (m *cpuMeter) stop(children float64) (CPUUse, error) {
	u := CPUUse{Set: children, Wall: time.Since(m.start).Seconds()}
	for i, pid := range m.pids {
		c, err := procCPU(pid)
		if err != nil {
			return u, err
		}
		u.Set += c - m.procs[i]
	}
	self, err := procCPU(os.Getpid())
	if err != nil {
		return u, err
	}
	mc, err := readMachineCPU()
	if err != nil {
		return u, err
	}
	u.Machine = mc.busy() - m.machine.busy()
	proc := (mc.user + mc.nice + mc.system) - (m.machine.user + m.machine.nice + m.machine.system)
	u.Foreign = max(0, proc-u.Set-(self-m.self))
	return u, nil
}

// process is a long-running program this run started (iperf3 server,
// wireguard-go) inside a namespace with `ip netns exec`, which execs: the
// PID is the program's own, and stop kills exactly that PID.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProcess(name string, log *os.File, netns string, args ...string) (*process, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", netns}, args...)...)
	cmd.Stdout = log
	cmd.Stderr = log
	// Its own process group keeps a terminal's Ctrl-C away from it, so
	// that teardown (not the signal) decides when it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after 3 s, to the process's own PID and
// waits for it.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(3 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(3 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", p.name, p.pid())
	}
}

// run runs args to completion inside netns (or in this namespace when
// netns is empty) and returns stdout, stderr and the CPU time it used.
func run(ctx context.Context, netns string, args ...string) (stdout []byte, cpu float64, err error) {
	if netns != "" {
		args = append([]string{"ip", "netns", "exec", netns}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	err = cmd.Run()
	if cmd.ProcessState != nil {
		cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	if err != nil {
		return out.Bytes(), cpu, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()+" "+tailString(out.String(), 300)))
	}
	return out.Bytes(), cpu, nil
}

func tailString(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// listening reports whether the namespace of pid has a TCP socket
// listening on port (IPv4 or IPv6): /proc/<pid>/net/tcp* show the
// socket tables of that process's network namespace.
func listening(pid, port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			// local_address rem_address st: "0A" is LISTEN.
			if len(fs) > 3 && strings.HasSuffix(fs[1], want) && fs[3] == "0A" {
				return true
			}
		}
	}
	return false
}
