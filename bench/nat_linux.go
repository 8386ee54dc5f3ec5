package bench

// The NAT benchmark (`make bench-nat`): pod-to-pod TCP throughput across the
// lab's NAT topology (deploy/lab: two clouds behind 1:1 NAT, on premises
// behind a masquerade), beside the plain lab's WireGuard path measured in
// the same run: cross-site between public nodes, from behind NAT to a
// public node and back, and relayed between two nodes behind NAT.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq"
	"github.com/weftnet/weft/ipam/diskfile"
)

// NATConfig is one NAT benchmark run.
type NATConfig struct {
	Reps     int
	Duration time.Duration // per iperf3 test
	BinDir   string
	RunDir   string // the labs' directories; removed at the end
	OutDir   string // nat-latest.json and nat-<date>.md; empty writes nothing
	Command  string
	Log      func(format string, args ...any)
}

// NATRow is one measured path.
type NATRow struct {
	Path    string    `json:"path"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Gbps    []float64 `json:"gbps"` // one per repetition
	Median  float64   `json:"medianGbps"`
	Ratio   float64   `json:"ratioToPlain"` // Median / the plain lab's WireGuard median
	Retrans []int     `json:"retransmits"`
}

// NATReport is the run's result.
type NATReport struct {
	Date     time.Time `json:"date"`
	Command  string    `json:"command"`
	Reps     int       `json:"reps"`
	Duration string    `json:"duration"`
	Rows     []NATRow  `json:"rows"`
}

// natPaths are the NAT lab's measured pairs (lab.TopologyNAT's nodes).
var natPaths = []struct{ path, from, to string }{
	{"cross-site, public to public (cloud-a → cloud-b)", "n1", "n3"},
	{"behind NAT to public (onprem → cloud-a)", "n6", "n1"},
	{"public to behind NAT (cloud-a → onprem)", "n1", "n6"},
	{"relayed, both behind NAT (onprem → cloud-b n5)", "n6", "n5"},
}

// RunNAT runs the NAT benchmark.
func RunNAT(ctx context.Context, cfg NATConfig) (*NATReport, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("bench-nat needs root (network namespaces, TUN devices)")
	}
	if err := prereq.Check("ip", "iperf3", "nft"); err != nil {
		return nil, fmt.Errorf("bench-nat: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(cfg.RunDir)
	rep := &NATReport{Date: time.Now().UTC(), Command: cfg.Command, Reps: cfg.Reps, Duration: cfg.Duration.String()}
	plain := NATRow{Path: "plain lab, WireGuard across sites (weft-wireguard)", From: "n1", To: "n2"}
	rows := make([]NATRow, len(natPaths))
	for i, p := range natPaths {
		rows[i] = NATRow{Path: p.path, From: p.from, To: p.to}
	}
	for r := 1; r <= cfg.Reps; r++ {
		// Interleaved, so that drift on the shared machine hits both labs.
		err := withLab(ctx, cfg, lab.Config{Prefix: fmt.Sprintf("wbp%d", r), Nodes: 2, Sites: 2, Transport: "wireguard"}, func(l *lab.Lab) error {
			return measureNAT(ctx, cfg, l, &plain)
		})
		if err != nil {
			return rep, err
		}
		err = withLab(ctx, cfg, lab.Config{Prefix: fmt.Sprintf("wbn%d", r), Topology: lab.TopologyNAT, Transport: "wireguard-across-sites"}, func(l *lab.Lab) error {
			for i := range rows {
				if err := measureNAT(ctx, cfg, l, &rows[i]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return rep, err
		}
	}
	plain.Median = medianOf(plain.Gbps)
	plain.Ratio = 1
	rep.Rows = append(rep.Rows, plain)
	for _, row := range rows {
		row.Median = medianOf(row.Gbps)
		if plain.Median > 0 {
			row.Ratio = row.Median / plain.Median
		}
		rep.Rows = append(rep.Rows, row)
	}
	if cfg.OutDir != "" {
		if err := rep.write(cfg.OutDir); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// withLab brings up a lab with one pod per node, waits until every node
// routes every peer, runs fn and tears the lab down.
func withLab(ctx context.Context, cfg NATConfig, lc lab.Config, fn func(*lab.Lab) error) (err error) {
	lc.Dir = filepath.Join(cfg.RunDir, lc.Prefix)
	lc.BinDir = cfg.BinDir
	lc.PodsPerNode = 1
	if lc.Topology == "" {
		lc.Sites = 2
	}
	l, err := lab.Up(ctx, lc)
	if err != nil {
		return err
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = derr
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := l.WaitConverged(wctx); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		for _, p := range l.Pods {
			if p.Node == n.Name {
				continue
			}
			if err := waitPodPing(wctx, l, n.Name, p); err != nil {
				return err
			}
		}
	}
	return fn(l)
}

// waitPodPing waits until p answers a ping from node's pod.
func waitPodPing(ctx context.Context, l *lab.Lab, node string, p lab.Pod) error {
	from := l.PodsOn(node)[0]
	for {
		if _, err := l.Ping(ctx, from.Netns, p.Address, 1); err == nil {
			return nil
		} else if ctx.Err() != nil {
			return fmt.Errorf("%s → %s: %w", from.Name, p.Name, err)
		}
	}
}

// measureNAT runs one iperf3 TCP test (one stream) for row and appends it.
func measureNAT(ctx context.Context, cfg NATConfig, l *lab.Lab, row *NATRow) error {
	from, to := l.PodsOn(row.From)[0], l.PodsOn(row.To)[0]
	logf, err := os.CreateTemp(cfg.RunDir, "iperf3-*.log")
	if err != nil {
		return err
	}
	defer logf.Close()
	srv, err := startProcess("iperf3 server", logf, to.Netns, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return err
	}
	defer srv.stop()
	secs := max(1, int(cfg.Duration.Round(time.Second)/time.Second))
	args := []string{"iperf3", "-c", to.Address, "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "3000"}
	var res Iperf3
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+20*time.Second)
		out, _, rerr := run(cctx, from.Netns, args...)
		cancel()
		var perr error
		if res, perr = ParseIperf3(out); perr == nil {
			break
		}
		if attempt == 5 {
			return fmt.Errorf("iperf3 %s → %s: %v (%v): %s", from.Name, to.Name, perr, rerr, bytes.TrimSpace(out))
		}
		time.Sleep(500 * time.Millisecond) // the server is still starting, or busy
	}
	gbps := res.ReceivedBps / 1e9
	row.Gbps = append(row.Gbps, gbps)
	row.Retrans = append(row.Retrans, res.Retransmits)
	cfg.Log("%s (%s → %s): %.2f Gbit/s, %d retransmits", row.Path, row.From, row.To, gbps, res.Retransmits)
	return nil
}

func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Markdown renders the report as the table in bench/results/nat-<date>.md.
func (r *NATReport) Markdown() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# weft across NAT, %s\n\n", r.Date.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "`%s`: iperf3 TCP, 1 stream, %s per test, median of %d, pod to pod; both labs in the same run, interleaved.\n\n", r.Command, r.Duration, r.Reps)
	b.WriteString("| path | pods | TCP Gbit/s | × plain WireGuard | runs |\n|---|---|---:|---:|---|\n")
	for _, row := range r.Rows {
		runs := ""
		for i, g := range row.Gbps {
			if i > 0 {
				runs += ", "
			}
			runs += fmt.Sprintf("%.2f", g)
		}
		fmt.Fprintf(&b, "| %s | %s → %s | %.2f | %.2f | %s |\n", row.Path, row.From, row.To, row.Median, row.Ratio, runs)
	}
	return b.String()
}

func (r *NATReport) write(dir string) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := diskfile.Write(filepath.Join(dir, "nat-latest.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return diskfile.Write(filepath.Join(dir, "nat-"+r.Date.Format("2006-01-02")+".md"), []byte(r.Markdown()), 0o644)
}
