// Command weftbench is `make bench`: iperf3 and ping over the netns lab for
// raw, host-gw, kernel-vxlan, wireguard-go, weft-vxlan and weft-wireguard,
// interleaved, in one run. It prints the markdown table on stdout, progress
// on stderr, and writes bench/results/{latest.json,latest.png,<date>.md}.
// Needs root, iproute2, ping, iperf3, and wireguard-tools for wireguard-go.
//
// Settings come from BENCH_* variables (see bench.Config.FromEnv):
//
//	BENCH_QUICK=1 BENCH_REPS=3 BENCH_SECONDS=5 BENCH_DATAPATHS=raw,kernel-vxlan
//	BENCH_UDP_RATE=1G BENCH_OUT=bench/results BENCH_QUIET_WAIT=60
//
// SIGINT, SIGTERM and SIGHUP stop the run; teardown still happens.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/bench"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg := bench.DefaultConfig()
	if exe, err := os.Executable(); err == nil {
		cfg.BinDir = filepath.Dir(exe)
	}
	if wd, err := os.Getwd(); err == nil {
		cfg.ModuleDir = bench.ModuleRoot(wd)
		cfg.OutDir = filepath.Join(cfg.ModuleDir, "bench", "results")
	}
	cfg, err := cfg.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftbench:", err)
		return 2
	}
	fs := flag.NewFlagSet("weftbench", flag.ContinueOnError)
	fs.StringVar(&cfg.BinDir, "bin-dir", cfg.BinDir, "directory with weftd and weft-cni (built into a temporary directory when missing)")
	fs.StringVar(&cfg.WireGuardBin, "wireguard-bin", "", "standalone wireguard-go binary (default: go build golang.zx2c4.com/wireguard at go.mod's version)")
	fs.StringVar(&cfg.OutDir, "out", cfg.OutDir, "results directory (latest.json, latest.png, <date>.md); empty writes nothing")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	nat := fs.Bool("nat", false, "the NAT benchmark instead (make bench-nat): pod-to-pod TCP across the lab's NAT topology (public, behind NAT, relayed) beside the plain lab's WireGuard; writes nat-latest.json and nat-<date>.md")
	rekey := fs.Bool("rekey", false, "the rekey run instead (make bench-rekey): one 3-minute iperf3 stream over weft's WireGuard across the 120 s rekey, with a 10 ms UDP probe; writes rekey-latest.json and rekey-<date>.md")
	restart := fs.Bool("restart", false, "the restart benchmark instead (make bench-restart): pod traffic through SIGKILL and SIGTERM restarts of weftd, VXLAN and WireGuard; writes restart-latest.json and restart-<date>.md")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintln(os.Stderr, "weftbench: -log-level:", err)
		return 2
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	cfg.Command = command(args)

	// Signals cancel the run; they stay caught until teardown is over, so
	// a second Ctrl-C cannot cut the cleanup short.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if *restart {
		return runRestart(ctx, cfg)
	}
	if *nat {
		return runNAT(ctx, cfg)
	}
	if *rekey {
		return runRekey(ctx, cfg)
	}
	rep, err := bench.Run(ctx, cfg)
	if rep != nil && rep.Rows != nil {
		fmt.Print(bench.Table(rep.Rows, rep.Unavailable, rep.Failed))
	}
	if err != nil {
		cfg.Log.Error("bench failed", "err", err)
		return 1
	}
	if len(rep.Failed) > 0 {
		cfg.Log.Error("datapaths failed", "datapaths", strings.Join(keys(rep.Failed), ","))
		return 1
	}
	return 0
}

// runRestart is -restart: the restart benchmark, with the bin and output
// directories and BENCH_REPS of cfg.
func runRestart(ctx context.Context, cfg bench.Config) int {
	rc := bench.DefaultRestartConfig()
	rc.BinDir, rc.OutDir, rc.Command = cfg.BinDir, cfg.OutDir, strings.Replace(cfg.Command, "make bench →", "make bench-restart →", 1)
	if os.Getenv("BENCH_REPS") != "" {
		rc.Reps = cfg.Reps
	}
	rc.Log = func(format string, args ...any) { cfg.Log.Info(fmt.Sprintf(format, args...)) }
	rep, err := bench.RunRestart(ctx, rc)
	if rep != nil {
		fmt.Print(rep.Markdown())
	}
	if err != nil {
		cfg.Log.Error("restart bench failed", "err", err)
		return 1
	}
	return 0
}

// runNAT is -nat: the NAT benchmark, with the bin and output directories,
// BENCH_REPS and BENCH_DURATION of cfg.
func runNAT(ctx context.Context, cfg bench.Config) int {
	nc := bench.NATConfig{Reps: 3, Duration: 5 * time.Second, BinDir: cfg.BinDir, OutDir: cfg.OutDir,
		RunDir: filepath.Join(os.TempDir(), "weft-bench-nat"), Command: strings.Replace(cfg.Command, "make bench →", "make bench-nat →", 1)}
	if os.Getenv("BENCH_REPS") != "" {
		nc.Reps = cfg.Reps
	}
	if os.Getenv("BENCH_DURATION") != "" {
		nc.Duration = cfg.Duration
	}
	nc.Log = func(format string, args ...any) { cfg.Log.Info(fmt.Sprintf(format, args...)) }
	rep, err := bench.RunNAT(ctx, nc)
	if rep != nil && len(rep.Rows) > 0 {
		fmt.Print(rep.Markdown())
	}
	if err != nil {
		cfg.Log.Error("NAT bench failed", "err", err)
		return 1
	}
	return 0
}

// runRekey is -rekey: the rekey run, with the bin and output directories
// of cfg. It fails when the run does (a stall over bench.MaxRekeyStall, no
// rekey, an empty iperf3 interval).
func runRekey(ctx context.Context, cfg bench.Config) int {
	rc := bench.DefaultRekeyConfig()
	rc.BinDir, rc.OutDir, rc.Command = cfg.BinDir, cfg.OutDir, strings.Replace(cfg.Command, "make bench →", "make bench-rekey →", 1)
	rc.Log = func(format string, args ...any) { cfg.Log.Info(fmt.Sprintf(format, args...)) }
	rep, err := bench.RunRekey(ctx, rc)
	if rep != nil {
		fmt.Print(rep.Markdown())
	}
	if err != nil {
		cfg.Log.Error("rekey run failed", "err", err)
		return 1
	}
	if !rep.Pass {
		cfg.Log.Error("rekey run did not pass", "why", rep.Why)
		return 1
	}
	return 0
}

// command is how this run was started, for the report: the BENCH_*
// variables that were set, then the command line.
func command(args []string) string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BENCH_") && !strings.HasSuffix(kv, "=") {
			env = append(env, kv)
		}
	}
	sort.Strings(env)
	parts := append(env, "weftbench")
	// Paths inside the working directory (make's -bin-dir $(CURDIR)/bin)
	// are written relative to it: the command reads the same in any clone.
	wd, _ := os.Getwd()
	for _, a := range args {
		if rel, err := filepath.Rel(wd, a); err == nil && filepath.IsAbs(a) && wd != "" && !strings.HasPrefix(rel, "..") {
			a = rel
		}
		parts = append(parts, a)
	}
	s := strings.Join(parts, " ")
	if os.Getenv("MAKELEVEL") != "" {
		s = "make bench → " + s
	}
	return s
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
