package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/ipam/diskfile"
)

// Report is everything a run produced: the rows of latest.json, every
// sample behind them, and the conditions they were measured under.
type Report struct {
	Started  time.Time
	Finished time.Time
	Command  string
	Quick    bool
	Reps     int
	Duration time.Duration
	UDPRate  string
	UDPLen   int
	// UDPWindow is iperf3's -w for UDP ("" for its default).
	UDPWindow    string
	PingCount    int
	PingInterval time.Duration
	Host         Host
	// LoadAvgStart and LoadAvgEnd are /proc/loadavg before the quiet
	// check and after the last test.
	LoadAvgStart string
	LoadAvgEnd   string
	Quiet        Quiet
	Datapaths    []string
	Rows         []Row
	Samples      []Sample
	// Unavailable names datapaths this build cannot run, with the reason
	// (weft-wireguard before the lab accepts that transport).
	Unavailable map[string]string
	// Failed names datapaths that should have run but broke, with the
	// error; a run with failures exits non-zero.
	Failed map[string]string
}

// Host describes the machine and the tools.
type Host struct {
	Kernel          string
	CPUs            int
	Iperf3          string
	Go              string
	WireGuardModule string
	TCPCongestion   string
}

// Quiet is the outcome of waiting for a quiet machine.
type Quiet struct {
	Waited    time.Duration
	BusyCores float64 // foreign load in the last 2 s sample, in cores
	Quiet     bool
}

// Table renders rows as the markdown table printed on stdout. Datapaths
// in unavailable or failed get "n/a" cells and a line under the table.
func Table(rows []Row, unavailable, failed map[string]string) string {
	var b strings.Builder
	b.WriteString("| datapath | streams | Gbit/s | ratio to raw | baseline | ratio to baseline | RTT µs | CPU s/GB | UDP loss % |\n")
	b.WriteString("|---|---:|---:|---:|---|---:|---:|---:|---:|\n")
	for _, r := range rows {
		base := r.Baseline
		if base == "" {
			base = "—"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Datapath, r.Streams, num(r.Gbps, 2), num(r.RatioToRaw, 2), base,
			num(r.RatioToBaseline, 2), num(r.RTTMicros, 0), num(r.CPUPerGB, 2), num(r.UDPLossPct, 2))
	}
	for _, m := range []struct {
		what string
		set  map[string]string
	}{{"not available", unavailable}, {"failed", failed}} {
		for _, dp := range sortedKeys(m.set) {
			fmt.Fprintf(&b, "\n%s: %s — %s\n", dp, m.what, oneLine(m.set[dp]))
		}
	}
	return b.String()
}

// Markdown renders the whole report, written to <date>.md.
func (r *Report) Markdown() string {
	var b strings.Builder
	mode := ""
	if r.Quick {
		mode = " (BENCH_QUICK smoke run: 1 repetition, short tests — not for comparison)"
	}
	fmt.Fprintf(&b, "# weft bench — %s%s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), mode)
	fmt.Fprintf(&b, "Command: `%s`  \n", r.Command)
	fmt.Fprintf(&b, "Run time: %s. Each figure is the median of %d repetition(s); within a repetition the datapaths run round robin, each repetition starting one datapath later.  \n",
		r.Finished.Sub(r.Started).Round(time.Second), r.Reps)
	fmt.Fprintf(&b, "Topology: per datapath, a lab of two nodes on different sites (192.0.2.11 on site1, 198.51.100.12 on site2, routed by the lab's router namespace), one pod each (10.244.1.0/24, 10.244.2.0/24; the -ipv6 rows' labs are dual-stack, fd00:10:244:1::/64 and fd00:10:244:2::/64 beside them, and measure between the pods' IPv6 addresses).  \n")
	win := "iperf3's default socket buffers"
	if r.UDPWindow != "" {
		win = "-w " + r.UDPWindow
	}
	fmt.Fprintf(&b, "Tests: iperf3 TCP %s, 1 and 4 streams (receiver side); UDP %s, offered %sbit/s, %d-byte datagrams, %s (loss at the receiver); ping average of %s on the idle path.\n\n",
		r.Duration, r.Duration, r.UDPRate, r.UDPLen, win, fmt.Sprintf("%d pings %s apart", r.PingCount, r.PingInterval))
	fmt.Fprintf(&b, "Host: kernel %s, %d CPUs, %s, %s, wireguard-go module %s, TCP congestion control %s.  \n",
		r.Host.Kernel, r.Host.CPUs, r.Host.Iperf3, r.Host.Go, r.Host.WireGuardModule, r.Host.TCPCongestion)
	quiet := "quiet"
	if !r.Quiet.Quiet {
		quiet = "NOT quiet, started anyway"
	}
	fmt.Fprintf(&b, "Load: /proc/loadavg at start `%s`, at end `%s`; waited %s for a quiet machine (%s, %.2f busy cores in the last 2 s sample).\n\n",
		r.LoadAvgStart, r.LoadAvgEnd, r.Quiet.Waited.Round(time.Second), quiet, r.Quiet.BusyCores)
	if n, mean, peak, at := r.foreign(); n > 0 {
		fmt.Fprintf(&b, "Foreign CPU during the tests (machine user+system time not spent by the measured processes or this program): mean %.2f cores, peak %.2f cores (%s).\n\n", mean, peak, at)
	}
	b.WriteString(Table(r.Rows, r.Unavailable, r.Failed))
	b.WriteString(`
- Ratios are ratios of the medians. Baselines: kernel-vxlan for weft-vxlan, wireguard-go for weft-wireguard;
  the IPv4 row of the same transport for weft-vxlan-ipv6 and weft-wireguard-ipv6 (IPv6 pods, IPv4 underlay).
- CPU s/GB: utime+stime of iperf3 client and server and the datapath's daemons (weftd, wireguard-go)
  per 10^9 bytes received. Softirq work the kernel books to no process is not in it; the
  "machine" column below has every busy CPU second.
- raw is node to node over the underlay (no pods); every other row is pod to pod.
`)
	b.WriteString("\n## Samples\n\n")
	b.WriteString("| rep | datapath | test | Gbit/s | retransmits | loss % | CPU set s | CPU machine s | foreign s | wall s |\n")
	b.WriteString("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Samples {
		for _, t := range s.TCP {
			fmt.Fprintf(&b, "| %d | %s | tcp ×%d | %.2f | %d | | %.2f | %.2f | %.2f | %.1f |\n",
				s.Rep, s.Datapath, t.Streams, t.Gbps, t.Retransmits, t.CPU.Set, t.CPU.Machine, t.CPU.Foreign, t.CPU.Wall)
		}
		if u := s.UDP; u != nil {
			fmt.Fprintf(&b, "| %d | %s | udp %s | %.2f | | %.2f | %.2f | %.2f | %.2f | %.1f |\n",
				s.Rep, s.Datapath, r.UDPRate, u.Gbps, u.LossPct, u.CPU.Set, u.CPU.Machine, u.CPU.Foreign, u.CPU.Wall)
		}
		rtt := "failed"
		if s.RTT > 0 {
			rtt = strconv.FormatFloat(float64(s.RTT)/float64(time.Microsecond), 'f', 0, 64) + " µs"
		}
		fmt.Fprintf(&b, "| %d | %s | ping | %s | | | | | | |\n", s.Rep, s.Datapath, rtt)
	}
	var errs []string
	for _, s := range r.Samples {
		for _, e := range s.Errors {
			errs = append(errs, fmt.Sprintf("- rep %d %s: %s", s.Rep, s.Datapath, oneLine(e)))
		}
	}
	if len(errs) > 0 {
		b.WriteString("\n## Errors\n\n" + strings.Join(errs, "\n") + "\n")
	}
	return b.String()
}

// num formats an optional figure; nil is "n/a".
func num(p *float64, digits int) string {
	if p == nil {
		return "n/a"
	}
	return strconv.FormatFloat(*p, 'f', digits, 64)
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	// Table order, unknown names last.
	slices.SortFunc(ks, func(a, b string) int {
		ia, ib := slices.Index(Datapaths, a), slices.Index(Datapaths, b)
		if ia < 0 {
			ia = len(Datapaths)
		}
		if ib < 0 {
			ib = len(Datapaths)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	return ks
}

// oneLine keeps multi-line errors (weftd log tails) from breaking the
// markdown.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

// Write puts the report into dir: latest.json (the rows), latest.png (the
// chart) and <date>.md (the whole report, date of the start in UTC). It
// returns the files written.
func (r *Report) Write(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	var files []string
	put := func(name string, write func(w io.Writer) error) error {
		p := filepath.Join(dir, name)
		var buf bytes.Buffer
		if err := write(&buf); err != nil {
			return err
		}
		// Whole files or nothing: a reader never sees half a table.
		if err := diskfile.Write(p, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("bench report: %w", err)
		}
		files = append(files, p)
		return nil
	}
	date := r.Started.UTC().Format("2006-01-02")
	title := fmt.Sprintf("weft bench %s: TCP pod to pod, median of %d x %s (raw: node to node)", date, r.Reps, r.Duration)
	err := errors.Join(
		put("latest.json", func(w io.Writer) error { return WriteJSON(w, r.Rows) }),
		put("latest.png", func(w io.Writer) error { return WriteChart(w, r.Rows, title) }),
		put(date+".md", func(w io.Writer) error {
			_, err := io.WriteString(w, r.Markdown())
			return err
		}),
	)
	return files, err
}

// foreign summarises CPUUse.Foreign over every test, in cores.
func (r *Report) foreign() (n int, mean, peak float64, at string) {
	add := func(s Sample, test string, u CPUUse) {
		if u.Wall <= 0 {
			return
		}
		c := u.Foreign / u.Wall
		n++
		mean += c
		if c >= peak {
			peak, at = c, fmt.Sprintf("rep %d %s %s", s.Rep, s.Datapath, test)
		}
	}
	for _, s := range r.Samples {
		for _, t := range s.TCP {
			add(s, fmt.Sprintf("tcp ×%d", t.Streams), t.CPU)
		}
		if s.UDP != nil {
			add(s, "udp", s.UDP.CPU)
		}
	}
	if n > 0 {
		mean /= float64(n)
	}
	return n, mean, peak, at
}
