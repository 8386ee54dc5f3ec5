// Package bench is weft's yardstick (`make bench`): iperf3 and ping between
// two nodes on different sites of the netns lab, for weft's own datapaths
// side by side with the kernel and standalone baselines, in one run.
//
// Design note. Every datapath gets its own small lab (router, two nodes on
// site1 and site2, one pod each), all of them up for the whole run, so that
// a repetition can visit every datapath in turn (round robin, starting one
// datapath later each repetition) without tearing anything down between
// measurements: drift of the machine (another build starting, thermal
// throttling) then hits every datapath alike, and a switch costs nothing.
// The baselines (raw, host-gw, kernel-vxlan, wireguard-go) run on lab
// "external" nodes, with pod namespaces and veths made here in the
// Calico/ptp layout weft-cni uses; weft-vxlan and weft-wireguard are plain
// lab.Up labs with weftd and weft-cni. Idle datapaths cost next to nothing
// (weftd's gossip, wireguard-go's timers), and that cost is charged to
// "foreign CPU", which is recorded for every measurement.
//
// This file and the other files without a _linux suffix are the pure part
// (configuration, parsing, statistics, the report and the chart); they are
// unit-tested without root.
package bench

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Datapath names, as they appear in the table and in latest.json.
const (
	// Raw is the underlay between the two node namespaces, no pods: the
	// physical limit of the lab (two veths and the router's forwarding).
	Raw = "raw"
	// HostGW routes the pod CIDRs over the underlay (in the router too),
	// no encapsulation, like flannel's host-gw backend.
	HostGW = "host-gw"
	// KernelVXLAN is a Linux vxlan device laid out like flannel's vxlan
	// backend: VNI 1, port 8472, static FDB and neighbour entries, MTU 1450.
	KernelVXLAN = "kernel-vxlan"
	// WireGuardGo is the standalone wireguard-go program, built from the
	// module version weft depends on and configured with wg(8), MTU 1420.
	WireGuardGo = "wireguard-go"
	// WeftVXLAN is weftd with its VXLAN transport.
	WeftVXLAN = "weft-vxlan"
	// WeftWireGuard is weftd with its WireGuard transport.
	WeftWireGuard = "weft-wireguard"
	// WeftVXLAN6 and WeftWireGuard6 are the same transports carrying IPv6
	// pod traffic (pod to pod between the pods' IPv6 addresses, over the
	// IPv4 underlay), in a dual-stack lab of their own.
	WeftVXLAN6     = "weft-vxlan-ipv6"
	WeftWireGuard6 = "weft-wireguard-ipv6"
)

// Datapaths lists every datapath in table order.
var Datapaths = []string{Raw, HostGW, KernelVXLAN, WireGuardGo, WeftVXLAN, WeftWireGuard, WeftVXLAN6, WeftWireGuard6}

// Streams are the TCP stream counts measured for every datapath.
var Streams = []int{1, 4}

// Baseline returns the datapath a weft datapath is judged against, or "":
// the kernel or standalone program for the IPv4 rows, and the same
// transport's IPv4 row for an IPv6 one (what IPv6 pod traffic costs).
func Baseline(datapath string) string {
	switch datapath {
	case WeftVXLAN:
		return KernelVXLAN
	case WeftWireGuard:
		return WireGuardGo
	case WeftVXLAN6:
		return WeftVXLAN
	case WeftWireGuard6:
		return WeftWireGuard
	}
	return ""
}

// Config is one bench run. Start from DefaultConfig (or QuickConfig) and
// apply FromEnv.
type Config struct {
	// Datapaths to measure, a subset of Datapaths; raw is added when a
	// ratio needs it.
	Datapaths []string
	// Reps is the number of repetitions; every figure is the median over
	// them. Three is the least that makes a median mean something.
	Reps int
	// Duration of each iperf3 test. Five seconds keeps the default run
	// (8 datapaths × 3 reps × 3 tests) near seven minutes while each test
	// still spans many congestion-control cycles (the RTT is ~50 µs).
	Duration time.Duration
	// UDPRate is iperf3's -b for the UDP test: a fixed offered load that
	// every datapath here can nominally carry, so loss compares datapaths.
	UDPRate string
	// UDPLen is iperf3's -l: 1392 bytes fill a 1420-byte MTU (the smallest
	// of the datapaths, wireguard-go's) exactly, so no datapath fragments.
	UDPLen int
	// UDPWindow is iperf3's -w for the UDP test (socket buffers at both
	// ends). iperf3's default leaves the kernel's 208 KiB, which a
	// receiver that loses its core for a millisecond overflows at any
	// rate: the loss then measures the scheduler, not the datapath. 4 MiB
	// is net.core.rmem_max here; empty leaves iperf3's default.
	UDPWindow string
	// PingCount and PingInterval shape the RTT probe (idle link).
	PingCount    int
	PingInterval time.Duration
	// QuietWait bounds how long Run waits for the machine to go quiet
	// before it starts; QuietCores is "quiet": busy cores (of all of
	// them) averaged over a 2 s sample. The run starts anyway after
	// QuietWait and records what it saw.
	QuietWait  time.Duration
	QuietCores float64
	// Tag starts every lab prefix (<tag><datapath short name>) and names
	// the lock file, so a test can run next to `make bench`.
	Tag string
	// RunDir holds the labs' directories (<RunDir>/<prefix>); removed at
	// the end.
	RunDir string
	// BinDir holds weftd and weft-cni; when they are missing there, Run
	// builds them into a temporary directory.
	BinDir string
	// WireGuardBin is the standalone wireguard-go; empty builds it from
	// the module in go.mod (`go build golang.zx2c4.com/wireguard`).
	WireGuardBin string
	// ModuleDir is weft's module root, where the go builds run.
	ModuleDir string
	// OutDir receives latest.json, latest.png and <date>.md; empty
	// writes nothing.
	OutDir string
	// Quick is BENCH_QUICK: recorded in the report.
	Quick bool
	// Command is how the run was started, for the report.
	Command string
	// Log receives progress; nil discards.
	Log *slog.Logger
}

// DefaultConfig is `make bench`: every datapath, 3 repetitions of 5 s
// tests, UDP offered at 1 Gbit/s, 20 pings at 50 ms. The measuring takes
// about 7 minutes (16 s per datapath and repetition); with set-up,
// teardown and at most 2 minutes of waiting for a quiet machine the run
// takes about 10.
func DefaultConfig() Config {
	return Config{
		Datapaths:    slices.Clone(Datapaths),
		Reps:         3,
		Duration:     5 * time.Second,
		UDPRate:      "1G",
		UDPLen:       1392,
		UDPWindow:    "4M",
		PingCount:    20,
		PingInterval: 50 * time.Millisecond,
		QuietWait:    2 * time.Minute,
		QuietCores:   0.3,
		Tag:          "wb",
		RunDir:       "/run/weft-bench",
		OutDir:       "bench/results",
	}
}

// QuickConfig is BENCH_QUICK=1, the CI smoke: one repetition of 2 s tests,
// no waiting for a quiet machine, results under <OutDir>/quick so that a
// smoke run never overwrites the real figures.
func (c Config) QuickConfig() Config {
	c.Quick = true
	c.Reps = 1
	c.Duration = 2 * time.Second
	c.PingCount = 5
	c.QuietWait = 0
	if c.OutDir != "" {
		c.OutDir = filepath.Join(c.OutDir, "quick")
	}
	return c
}

// FromEnv applies the BENCH_* environment variables to c:
//
//	BENCH_QUICK=1        QuickConfig (applied first)
//	BENCH_REPS=n         repetitions (≥ 1)
//	BENCH_SECONDS=n      seconds per iperf3 test
//	BENCH_DATAPATHS=a,b  subset of the datapaths
//	BENCH_UDP_RATE=1G    iperf3 -b for the UDP test
//	BENCH_UDP_WINDOW=4M  iperf3 -w for the UDP test ("-" for iperf3's default)
//	BENCH_OUT=dir        output directory (also in quick mode)
//	BENCH_QUIET_WAIT=n   seconds to wait for a quiet machine
//
// getenv is os.Getenv outside tests; empty values leave c alone.
func (c Config) FromEnv(getenv func(string) string) (Config, error) {
	if v := getenv("BENCH_QUICK"); v != "" && v != "0" {
		c = c.QuickConfig()
	}
	if v := getenv("BENCH_OUT"); v != "" {
		c.OutDir = v
	}
	if v := getenv("BENCH_REPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return c, fmt.Errorf("BENCH_REPS=%q: want an integer ≥ 1", v)
		}
		c.Reps = n
	}
	if v := getenv("BENCH_SECONDS"); v != "" {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || n < 1 || n > 60 {
			return c, fmt.Errorf("BENCH_SECONDS=%q: want 1..60", v)
		}
		c.Duration = time.Duration(n * float64(time.Second))
	}
	if v := getenv("BENCH_DATAPATHS"); v != "" {
		c.Datapaths = strings.Split(v, ",")
	}
	if v := getenv("BENCH_UDP_RATE"); v != "" {
		c.UDPRate = v
	}
	if v := getenv("BENCH_UDP_WINDOW"); v != "" {
		c.UDPWindow = strings.TrimPrefix(v, "-")
	}
	if v := getenv("BENCH_QUIET_WAIT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return c, fmt.Errorf("BENCH_QUIET_WAIT=%q: want seconds ≥ 0", v)
		}
		c.QuietWait = time.Duration(n) * time.Second
	}
	return c, c.Validate()
}

// Validate checks c and puts c.Datapaths in table order.
func (c *Config) Validate() error {
	var bad []string
	for _, d := range c.Datapaths {
		if !slices.Contains(Datapaths, d) {
			bad = append(bad, d)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("unknown datapaths %q (have %s)", bad, strings.Join(Datapaths, ", "))
	}
	if len(c.Datapaths) == 0 {
		return fmt.Errorf("no datapaths")
	}
	var ordered []string
	for _, d := range Datapaths {
		if slices.Contains(c.Datapaths, d) {
			ordered = append(ordered, d)
		}
	}
	c.Datapaths = ordered
	if c.Reps < 1 {
		return fmt.Errorf("reps %d: want ≥ 1", c.Reps)
	}
	if c.Duration < time.Second {
		return fmt.Errorf("duration %v: want ≥ 1s", c.Duration)
	}
	if c.PingCount < 1 || c.UDPLen < 64 || c.UDPLen > 1392 {
		return fmt.Errorf("ping count %d, udp length %d: want ≥ 1 and 64..1392", c.PingCount, c.UDPLen)
	}
	if c.Tag == "" || len(c.Tag) > 8 || strings.ContainsAny(c.Tag, "-/ ") {
		return fmt.Errorf("tag %q: want 1..8 characters without '-', '/' or spaces", c.Tag)
	}
	return nil
}

// logger returns c.Log or a logger that discards.
func (c *Config) logger() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// ModuleRoot finds the directory of the go.mod above dir, or "".
func ModuleRoot(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}
