package bench

// The restart benchmark (`make bench-restart`): how pod traffic lives
// through a restart of the sending node's weftd. For each transport and
// way (a hand-off to a new weftd started beside the running one; SIGKILL
// or SIGTERM and a start at once; for WireGuard also SIGKILL and a start
// only once the peer has declared the node dead), a lab of two nodes on
// two sites, a lab.Flow (one TCP stream, a UDP probe every 10 ms) from
// n1's pod to n2's; the figures are the Flow's, measured at the receiver,
// median over the repetitions.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq"
	"github.com/weftnet/weft/ipam/diskfile"
	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

// RestartConfig is one restart benchmark run.
type RestartConfig struct {
	Transports []string // weft transport policies, e.g. vxlan, wireguard
	Ways       []Way    // how weftd is replaced
	Reps       int
	// Before and After are how long the flow runs before the signal and
	// after the new weftd is ready.
	Before, After time.Duration
	BinDir        string // weftd and weft-cni
	RunDir        string // the labs' directories; removed at the end
	OutDir        string // restart-latest.json and restart-<date>.md; empty writes nothing
	Tag           string // lab prefix start
	Command       string
	Log           func(format string, args ...any)
}

// Way is how n1's weftd is replaced.
type Way string

const (
	// HandOff: a new weftd started beside the running one takes over.
	HandOff Way = "hand-off"
	// Kill and Term: the signal, then a new weftd at once.
	Kill Way = "SIGKILL"
	Term Way = "SIGTERM"
	// KillLong: SIGKILL, and a new weftd only once n2 has declared n1
	// dead (WireGuard only: n2 keeps n1's peer on standby).
	KillLong Way = "SIGKILL, down until dead"
)

// DefaultRestartConfig: VXLAN and WireGuard, every way, three repetitions,
// 1 s of flow either side.
func DefaultRestartConfig() RestartConfig {
	return RestartConfig{
		Transports: []string{"vxlan", "wireguard"},
		Ways:       []Way{HandOff, Kill, Term, KillLong},
		Reps:       3, Before: time.Second, After: time.Second,
		RunDir: "/run/weft-bench-restart", Tag: "wbrs",
	}
}

// RestartSample is one measured restart.
type RestartSample struct {
	Transport string        `json:"transport"`
	Way       Way           `json:"way"`
	Rep       int           `json:"rep"`
	Back      time.Duration `json:"backNs"` // signal (or hand-off start) → new weftd ready
	// FirstProbe: the new weftd's start → the first probe it carried
	// (ways with a stop only).
	FirstProbe time.Duration  `json:"firstProbeNs,omitempty"`
	Result     restartFigures `json:"result"`
}

type restartFigures struct {
	Survived       bool          `json:"survived"`
	Error          string        `json:"error,omitempty"`
	StallNs        time.Duration `json:"longestStallNs"`
	ProbeGapNs     time.Duration `json:"longestProbeGapNs"`
	ProbesLost     int           `json:"probesLost"`
	ProbesSent     int           `json:"probesSent"`
	Retransmits    uint64        `json:"retransmits"`
	BytesDelivered int64         `json:"bytes"`
}

// RestartReport is a whole run.
type RestartReport struct {
	Date    time.Time       `json:"date"`
	Command string          `json:"command"`
	Samples []RestartSample `json:"samples"`
}

// RunRestart measures every transport × signal cfg.Reps times and, with
// cfg.OutDir set, writes the report. Everything it creates is gone when it
// returns.
func RunRestart(ctx context.Context, cfg RestartConfig) (*RestartReport, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("bench-restart needs root (network namespaces, TUN devices)")
	}
	if err := prereq.Check("ip"); err != nil {
		return nil, fmt.Errorf("bench-restart: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(cfg.RunDir)
	rep := &RestartReport{Date: time.Now().UTC(), Command: cfg.Command}
	for r := 1; r <= cfg.Reps; r++ {
		for _, tr := range cfg.Transports {
			for _, way := range cfg.Ways {
				if way == KillLong && tr == "vxlan" {
					continue // VXLAN has no session to resume
				}
				s, err := restartOnce(ctx, cfg, tr, way, r)
				if err != nil {
					return rep, err
				}
				cfg.Log("rep %d %s %s: back %s, first probe %s, stall %s, probe gap %s, %d/%d probes lost, %d retransmits, survived %v",
					r, tr, way, s.Back.Round(time.Millisecond), s.FirstProbe.Round(time.Millisecond), s.Result.StallNs, s.Result.ProbeGapNs, s.Result.ProbesLost, s.Result.ProbesSent, s.Result.Retransmits, s.Result.Survived)
				rep.Samples = append(rep.Samples, s)
			}
		}
	}
	if cfg.OutDir != "" {
		return rep, rep.write(cfg.OutDir)
	}
	return rep, nil
}

func restartOnce(ctx context.Context, cfg RestartConfig, transport string, way Way, r int) (s RestartSample, err error) {
	s = RestartSample{Transport: transport, Way: way, Rep: r}
	prefix := fmt.Sprintf("%s%s", cfg.Tag, transport[:2])
	dir := filepath.Join(cfg.RunDir, prefix)
	lc := lab.Config{Prefix: prefix, Dir: dir, BinDir: cfg.BinDir, Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: transport, Log: devNull{}}
	if err := lab.Cleanup(prefix, dir); err != nil {
		return s, err
	}
	l, err := lab.Up(ctx, lc)
	if err != nil {
		return s, err
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = derr
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := l.WaitConverged(wctx); err != nil {
		return s, err
	}
	f, err := l.StartFlow(ctx, l.PodsOn("n1")[0], l.PodsOn("n2")[0])
	if err != nil {
		return s, err
	}
	time.Sleep(cfg.Before)
	if err := replace(ctx, l, way, f, &s); err != nil {
		f.Stop()
		return s, err
	}
	time.Sleep(cfg.After)
	fr := f.Stop()
	s.Result = restartFigures{Survived: fr.Survived, StallNs: fr.LongestStall, ProbeGapNs: fr.LongestProbeGap,
		ProbesLost: fr.ProbesLost, ProbesSent: fr.ProbesSent, Retransmits: fr.Retransmits, BytesDelivered: fr.Bytes}
	if fr.Err != nil {
		s.Result.Error = fr.Err.Error()
	}
	return s, nil
}

// replace replaces n1's weftd the way asked, filling s.Back and
// s.FirstProbe.
func replace(ctx context.Context, l *lab.Lab, way Way, f *lab.Flow, s *RestartSample) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	at := time.Now()
	if way == HandOff {
		err := l.HandOffWeftd(ctx, "n1")
		s.Back = time.Since(at)
		return err
	}
	sig := syscall.SIGKILL
	if way == Term {
		sig = syscall.SIGTERM
	}
	if err := l.StopWeftd("n1", sig, 5*time.Second); err != nil {
		return err
	}
	if way == KillLong {
		for {
			st, err := l.Status(ctx, "n2")
			if err != nil {
				return err
			}
			if slices.ContainsFunc(st.Peers, func(p control.Node) bool { return p.Name == "n1" && p.State == peer.StateDead }) {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("n2 never declared n1 dead: %w", ctx.Err())
			}
			time.Sleep(50 * time.Millisecond)
		}
		at = time.Now() // the outage is not the figure; the resumption is
	}
	_, before := f.Probes()
	started := time.Now()
	if err := l.StartWeftd(ctx, "n1"); err != nil {
		return err
	}
	s.Back = time.Since(at)
	for _, n := f.Probes(); n == before; _, n = f.Probes() {
		if time.Since(started) > 10*time.Second {
			return fmt.Errorf("no probe through within 10 s of the new weftd's start")
		}
		time.Sleep(time.Millisecond)
	}
	s.FirstProbe = time.Since(started)
	return nil
}

type devNull struct{}

func (devNull) Write(b []byte) (int, error) { return len(b), nil }

// Markdown is the report's table: per transport and signal, medians over
// the repetitions, and whether every repetition's connection survived.
func (r *RestartReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# weft restart bench — %s\n\nCommand: `%s`  \n", r.Date.Format("2006-01-02 15:04 UTC"), r.Command)
	fmt.Fprintf(&b, "Per row: a lab of two nodes on two sites; one TCP stream and a UDP probe every %s from n1's pod to n2's, measured at the receiver; n1's weftd handed off to a new weftd started beside it, or stopped with the signal and started again at once, or (WireGuard) killed and started only once n2 has declared it dead. *Back*: the hand-off's or the signal's start to the new weftd ready (for the long stop: from n2's verdict). *First probe*: the new weftd's start to the first probe it carried. Medians over the repetitions (gaps at %s resolution).\n\n", lab.FlowProbeInterval, lab.FlowProbeInterval)
	b.WriteString("| transport | way | reps | back | first probe | longest TCP stall | longest probe gap | probes lost | TCP retransmits | connection survived |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	type key struct {
		t string
		s Way
	}
	var keys []key
	groups := map[key][]RestartSample{}
	for _, s := range r.Samples {
		k := key{s.Transport, s.Way}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], s)
	}
	for _, k := range keys {
		g := groups[k]
		back, first, stall, gap, lost, retr := make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g))
		survived := 0
		for i, s := range g {
			back[i], first[i], stall[i], gap[i] = ms(s.Back), ms(s.FirstProbe), ms(s.Result.StallNs), ms(s.Result.ProbeGapNs)
			lost[i], retr[i] = float64(s.Result.ProbesLost), float64(s.Result.Retransmits)
			if s.Result.Survived {
				survived++
			}
		}
		med := func(xs []float64) float64 { m, _ := Median(xs); return m }
		firstCell := "–"
		if k.s != HandOff {
			firstCell = fmt.Sprintf("%.0f ms", med(first))
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f ms | %s | %.0f ms | %.0f ms | %.0f | %.0f | %d of %d |\n",
			k.t, k.s, len(g), med(back), firstCell, med(stall), med(gap), med(lost), med(retr), survived, len(g))
	}
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *RestartReport) write(dir string) error {
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString(r.Markdown())
	for name, data := range map[string][]byte{
		"restart-latest.json":                            append(j, '\n'),
		"restart-" + r.Date.Format("2006-01-02") + ".md": buf.Bytes(),
	} {
		if err := diskfile.Write(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
