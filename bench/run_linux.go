package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/deploy/prereq"
)

// Run measures cfg.Datapaths and returns the report; with cfg.OutDir set
// it also writes latest.json, latest.png and <date>.md there. Everything
// it creates (labs, pod namespaces, processes, temporary files) is gone
// when it returns, whatever happened; cancel ctx (on SIGINT, say) to stop
// early. The error is non-nil when the run could not finish; datapaths
// that failed are in Report.Failed and leave the error nil.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.logger()
	if os.Geteuid() != 0 {
		return nil, errors.New("bench needs root (network namespaces, TUN devices)")
	}
	if err := prereq.Check("ip", "ping", "iperf3"); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	unlock, err := lock(cfg.RunDir + ".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()

	rep = &Report{
		Started:      time.Now(),
		Command:      cfg.Command,
		Quick:        cfg.Quick,
		Reps:         cfg.Reps,
		Duration:     cfg.Duration,
		UDPRate:      cfg.UDPRate,
		UDPLen:       cfg.UDPLen,
		UDPWindow:    cfg.UDPWindow,
		PingCount:    cfg.PingCount,
		PingInterval: cfg.PingInterval,
		Datapaths:    cfg.Datapaths,
		Unavailable:  map[string]string{},
		Failed:       map[string]string{},
	}
	rep.Host = hostInfo(ctx, cfg.ModuleDir)
	rep.LoadAvgStart = loadavg()
	log.Info("bench starting", "datapaths", strings.Join(cfg.Datapaths, ","), "reps", cfg.Reps,
		"duration", cfg.Duration, "loadavg", rep.LoadAvgStart)

	// Leftovers of a run that was killed: we hold the lock, so nothing
	// named with our prefixes belongs to a live run.
	for _, k := range allBeds {
		b := newBed(k, &cfg, "")
		if err := b.close(); err != nil {
			return nil, fmt.Errorf("clean up leftovers of %s: %w", b.prefix, err)
		}
	}
	tmp, err := os.MkdirTemp("", "weftbench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	var beds []*bed
	defer func() {
		var errs []error
		for i := len(beds) - 1; i >= 0; i-- {
			if cerr := beds[i].close(); cerr != nil {
				errs = append(errs, cerr)
			}
		}
		if rerr := os.RemoveAll(cfg.RunDir); rerr != nil {
			errs = append(errs, rerr)
		}
		if rerr := os.RemoveAll(tmp); rerr != nil {
			errs = append(errs, rerr)
		}
		if len(errs) > 0 {
			err = errors.Join(err, fmt.Errorf("teardown: %w", errors.Join(errs...)))
		}
		log.Info("teardown done")
	}()

	if err := prepareBinaries(ctx, &cfg, tmp, rep); err != nil {
		return nil, err
	}

	// Testbeds: every datapath whose bed comes up is measured.
	var paths []*path
	for _, k := range allBeds {
		var want []string
		for _, dp := range cfg.Datapaths {
			if bedOf(dp) == k && rep.Failed[dp] == "" && rep.Unavailable[dp] == "" {
				want = append(want, dp)
			}
		}
		if len(want) == 0 {
			continue
		}
		btmp := filepath.Join(tmp, string(k))
		if err := os.MkdirAll(btmp, 0o700); err != nil {
			return nil, fmt.Errorf("temp dir: %w", err)
		}
		b := newBed(k, &cfg, btmp)
		beds = append(beds, b)
		log.Info("setting up", "bed", b.prefix, "datapaths", strings.Join(want, ","))
		if uerr := b.up(ctx, &cfg, want); uerr != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			for _, dp := range want {
				if msg := uerr.Error(); k == bedWeftWG && strings.Contains(msg, "lab config") && strings.Contains(msg, "transport") {
					rep.Unavailable[dp] = "the lab does not accept Transport \"wireguard\" yet: " + uerr.Error()
				} else {
					rep.Failed[dp] = uerr.Error()
				}
			}
			log.Warn("datapath unavailable", "bed", b.prefix, "err", uerr)
			if cerr := b.close(); cerr != nil {
				return nil, cerr
			}
			beds = beds[:len(beds)-1]
			continue
		}
		paths = append(paths, b.paths...)
	}
	// Table order, so that rotation below is predictable.
	slices.SortFunc(paths, func(a, b *path) int {
		return slices.Index(Datapaths, a.datapath) - slices.Index(Datapaths, b.datapath)
	})

	rep.Quiet = waitQuiet(ctx, cfg.QuietWait, cfg.QuietCores, log)
	perTest := cfg.Duration + 500*time.Millisecond
	est := time.Duration(cfg.Reps*len(paths)) * (3*perTest + time.Duration(cfg.PingCount)*cfg.PingInterval)
	log.Info("measuring", "paths", len(paths), "reps", cfg.Reps, "estimate", est.Round(time.Second))

	for r := 0; r < cfg.Reps; r++ {
		for i := range paths {
			// Rotate: repetition r starts at datapath r, so no datapath
			// always runs first (right after setup) or last.
			p := paths[(i+r)%len(paths)]
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			s := measure(ctx, &cfg, p, r+1)
			log.Info("sample", "rep", r+1, "datapath", p.datapath, "summary", s.brief())
			rep.Samples = append(rep.Samples, s)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep.Rows = Summarize(cfg.Datapaths, rep.Samples)
	rep.LoadAvgEnd = loadavg()
	rep.Finished = time.Now()
	if cfg.OutDir != "" {
		files, werr := rep.Write(cfg.OutDir)
		if werr != nil {
			return rep, werr
		}
		log.Info("results written", "files", strings.Join(files, " "))
	}
	return rep, nil
}

// measure runs one repetition on one path: ping on the idle path first,
// then TCP with 1 and 4 streams, then UDP.
func measure(ctx context.Context, cfg *Config, p *path, rep int) Sample {
	s := Sample{Rep: rep, Datapath: p.datapath}
	out, _, err := run(ctx, p.clientNS, "ping", "-n", "-q", "-c", strconv.Itoa(cfg.PingCount),
		"-i", strconv.FormatFloat(cfg.PingInterval.Seconds(), 'f', 3, 64), "-W", "2", p.addr)
	if rtt, _, _, perr := ParsePing(string(out)); perr == nil {
		s.RTT = rtt
	} else {
		s.Errors = append(s.Errors, fmt.Sprintf("ping: %v", errors.Join(perr, err)))
	}
	for _, n := range Streams {
		res, use, err := iperf(ctx, cfg, p, "-P", strconv.Itoa(n))
		if err != nil {
			s.Errors = append(s.Errors, fmt.Sprintf("tcp %d: %v", n, err))
			continue
		}
		s.TCP = append(s.TCP, TCPSample{Streams: n, Gbps: res.ReceivedBps / 1e9, Bytes: res.ReceivedBytes, Retransmits: res.Retransmits, CPU: use})
	}
	udp := []string{"-u", "-b", cfg.UDPRate, "-l", strconv.Itoa(cfg.UDPLen)}
	if cfg.UDPWindow != "" {
		udp = append(udp, "-w", cfg.UDPWindow)
	}
	res, use, err := iperf(ctx, cfg, p, udp...)
	if err != nil {
		s.Errors = append(s.Errors, fmt.Sprintf("udp: %v", err))
	} else {
		s.UDP = &UDPSample{Gbps: res.ReceivedBps / 1e9, LossPct: res.LostPercent, CPU: use}
	}
	return s
}

// iperf runs one iperf3 client test on p and measures the CPU used by the
// client (from wait4), the server and p's daemons. A server still busy
// with the previous test is retried.
func iperf(ctx context.Context, cfg *Config, p *path, extra ...string) (Iperf3, CPUUse, error) {
	secs := max(1, int(cfg.Duration.Round(time.Second)/time.Second))
	args := append([]string{"iperf3", "-c", p.addr, "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs),
		"-J", "--connect-timeout", "3000"}, extra...)
	var last error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return Iperf3{}, CPUUse{}, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		m, err := startCPU(append([]int{p.server.pid()}, p.daemons...))
		if err != nil {
			return Iperf3{}, CPUUse{}, err
		}
		cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+20*time.Second)
		out, cpu, rerr := run(cctx, p.clientNS, args...)
		cancel()
		use, merr := m.stop(cpu)
		res, perr := ParseIperf3(out)
		switch {
		case perr == nil && merr == nil:
			return res, use, nil
		case perr == nil:
			return res, use, merr
		case errors.Is(perr, ErrIperf3Busy):
			last = perr
			continue
		case len(out) == 0 && rerr != nil:
			return Iperf3{}, use, rerr
		default:
			return Iperf3{}, use, perr
		}
	}
	return Iperf3{}, CPUUse{}, last
}

func (s Sample) brief() string {
	var parts []string
	for _, t := range s.TCP {
		parts = append(parts, fmt.Sprintf("tcp×%d %.2f Gbit/s", t.Streams, t.Gbps))
	}
	if s.UDP != nil {
		parts = append(parts, fmt.Sprintf("udp loss %.2f%%", s.UDP.LossPct))
	}
	if s.RTT > 0 {
		parts = append(parts, fmt.Sprintf("rtt %dµs", s.RTT.Microseconds()))
	}
	if len(s.Errors) > 0 {
		parts = append(parts, fmt.Sprintf("%d errors: %s", len(s.Errors), strings.Join(s.Errors, "; ")))
	}
	return strings.Join(parts, ", ")
}

// prepareBinaries makes sure weftd and weft-cni (for the weft datapaths)
// and wireguard-go (for its baseline) exist, building what is missing into
// tmp. A datapath whose binary can't be had is marked failed.
func prepareBinaries(ctx context.Context, cfg *Config, tmp string, rep *Report) error {
	log := cfg.logger()
	weft := slices.Contains(cfg.Datapaths, WeftVXLAN) || slices.Contains(cfg.Datapaths, WeftWireGuard)
	if weft {
		_, e1 := os.Stat(filepath.Join(cfg.BinDir, "weftd"))
		_, e2 := os.Stat(filepath.Join(cfg.BinDir, "weft-cni"))
		if cfg.BinDir == "" || e1 != nil || e2 != nil {
			dir := filepath.Join(tmp, "bin")
			log.Info("building weftd and weft-cni", "dir", dir)
			if err := goBuild(ctx, cfg.ModuleDir, dir+"/", "./cmd/weftd", "./cmd/weft-cni"); err != nil {
				for _, dp := range []string{WeftVXLAN, WeftWireGuard} {
					rep.Failed[dp] = err.Error()
				}
			}
			cfg.BinDir = dir
		}
	}
	if slices.Contains(cfg.Datapaths, WireGuardGo) {
		if err := prereq.Check("wg"); err != nil {
			rep.Failed[WireGuardGo] = err.Error()
		} else if cfg.WireGuardBin == "" {
			bin := filepath.Join(tmp, "wireguard")
			log.Info("building wireguard-go", "module", rep.Host.WireGuardModule)
			if err := goBuild(ctx, cfg.ModuleDir, bin, "golang.zx2c4.com/wireguard"); err != nil {
				rep.Failed[WireGuardGo] = err.Error()
			}
			cfg.WireGuardBin = bin
		}
	}
	if slices.Contains(cfg.Datapaths, KernelVXLAN) {
		if err := prereq.Check("bridge"); err != nil {
			rep.Failed[KernelVXLAN] = err.Error()
		}
	}
	return ctx.Err()
}

// goBuild runs `go build -o out pkgs...` in the module directory, so the
// versions are go.mod's.
func goBuild(ctx context.Context, moduleDir, out string, pkgs ...string) error {
	if moduleDir == "" {
		return errors.New("go build: weft's module directory is unknown (run from the repository)")
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", out}, pkgs...)...)
	cmd.Dir = moduleDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", strings.Join(pkgs, " "), err, tailString(string(b), 500))
	}
	return nil
}

// waitQuiet waits up to d for a 2 s window in which the machine's busy
// CPU, in cores, stays under cores (nothing of ours runs yet but idle
// daemons). It reports what it saw and never fails: a busy machine is
// recorded, not refused.
func waitQuiet(ctx context.Context, d time.Duration, cores float64, log interface {
	Info(string, ...any)
}) Quiet {
	start := time.Now()
	var q Quiet
	for {
		a, err1 := readMachineCPU()
		select {
		case <-ctx.Done():
			return q
		case <-time.After(2 * time.Second):
		}
		b, err2 := readMachineCPU()
		if err1 != nil || err2 != nil {
			return q
		}
		total := b.total() - a.total()
		if total > 0 {
			q.BusyCores = (b.busy() - a.busy()) / total * float64(runtime.NumCPU())
		}
		q.Waited = time.Since(start)
		q.Quiet = q.BusyCores < cores
		if q.Quiet || q.Waited >= d {
			return q
		}
		log.Info("waiting for a quiet machine", "busy_cores", fmt.Sprintf("%.2f", q.BusyCores), "want_below", cores, "loadavg", loadavg())
	}
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func hostInfo(ctx context.Context, moduleDir string) Host {
	h := Host{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control"); err == nil {
		h.TCPCongestion = strings.TrimSpace(string(b))
	}
	if out, _, err := run(ctx, "", "iperf3", "--version"); err == nil {
		h.Iperf3, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	if moduleDir != "" {
		cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", "golang.zx2c4.com/wireguard")
		cmd.Dir = moduleDir
		if b, err := cmd.Output(); err == nil {
			h.WireGuardModule = strings.TrimSpace(string(b))
		}
	}
	return h
}

// lock takes an exclusive, non-blocking flock on path: one run at a time
// per RunDir, and a live run's namespaces are never "cleaned up" by
// another.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another bench holds %s: %w", path, err)
	}
	return func() {
		os.Remove(path)
		f.Close()
	}, nil
}
