package bench

// The restart benchmark (`make bench-restart`): how pod traffic lives
// through a restart of the sending node's weftd. For each transport and
// way of stopping, a lab of two nodes on two sites, a lab.Flow (one TCP
// stream, a UDP probe every 10 ms) from n1's pod to n2's, and n1's weftd
// stopped with the signal and started again at once; the figures are the
// Flow's, measured at the receiver, median over the repetitions.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq"
	"github.com/weftnet/weft/ipam/diskfile"
)

// RestartConfig is one restart benchmark run.
type RestartConfig struct {
	Transports []string         // weft transport policies, e.g. vxlan, wireguard
	Signals    []syscall.Signal // how weftd is stopped before the restart
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

// DefaultRestartConfig: VXLAN and WireGuard, SIGKILL (a crash) and SIGTERM
// (a rollout), three repetitions, 1 s of flow either side.
func DefaultRestartConfig() RestartConfig {
	return RestartConfig{
		Transports: []string{"vxlan", "wireguard"},
		Signals:    []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM},
		Reps:       3, Before: time.Second, After: time.Second,
		RunDir: "/run/weft-bench-restart", Tag: "wbrs",
	}
}

// RestartSample is one measured restart.
type RestartSample struct {
	Transport string         `json:"transport"`
	Signal    string         `json:"signal"`
	Rep       int            `json:"rep"`
	Back      time.Duration  `json:"backNs"` // signal → new weftd ready
	Result    restartFigures `json:"result"`
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
			for _, sig := range cfg.Signals {
				s, err := restartOnce(ctx, cfg, tr, sig, r)
				if err != nil {
					return rep, err
				}
				cfg.Log("rep %d %s %s: back %s, stall %s, probe gap %s, %d/%d probes lost, %d retransmits, survived %v",
					r, tr, sig, s.Back.Round(time.Millisecond), s.Result.StallNs, s.Result.ProbeGapNs, s.Result.ProbesLost, s.Result.ProbesSent, s.Result.Retransmits, s.Result.Survived)
				rep.Samples = append(rep.Samples, s)
			}
		}
	}
	if cfg.OutDir != "" {
		return rep, rep.write(cfg.OutDir)
	}
	return rep, nil
}

func restartOnce(ctx context.Context, cfg RestartConfig, transport string, sig syscall.Signal, r int) (s RestartSample, err error) {
	s = RestartSample{Transport: transport, Signal: signalName(sig), Rep: r}
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
	at := time.Now()
	if err := l.StopWeftd("n1", sig, 5*time.Second); err != nil {
		f.Stop()
		return s, err
	}
	if err := l.StartWeftd(wctx, "n1"); err != nil {
		f.Stop()
		return s, err
	}
	s.Back = time.Since(at)
	time.Sleep(cfg.After)
	fr := f.Stop()
	s.Result = restartFigures{Survived: fr.Survived, StallNs: fr.LongestStall, ProbeGapNs: fr.LongestProbeGap,
		ProbesLost: fr.ProbesLost, ProbesSent: fr.ProbesSent, Retransmits: fr.Retransmits, BytesDelivered: fr.Bytes}
	if fr.Err != nil {
		s.Result.Error = fr.Err.Error()
	}
	return s, nil
}

type devNull struct{}

func (devNull) Write(b []byte) (int, error) { return len(b), nil }

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// Markdown is the report's table: per transport and signal, medians over
// the repetitions, and whether every repetition's connection survived.
func (r *RestartReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# weft restart bench — %s\n\nCommand: `%s`  \n", r.Date.Format("2006-01-02 15:04 UTC"), r.Command)
	fmt.Fprintf(&b, "Per row: a lab of two nodes on two sites; one TCP stream and a UDP probe every %s from n1's pod to n2's, measured at the receiver; n1's weftd stopped with the signal and started again at once. Medians over the repetitions (gaps at %s resolution).\n\n", lab.FlowProbeInterval, lab.FlowProbeInterval)
	b.WriteString("| transport | signal | reps | weftd back after the signal | longest TCP stall | longest probe gap | probes lost | TCP retransmits | connection survived |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	type key struct{ t, s string }
	var keys []key
	groups := map[key][]RestartSample{}
	for _, s := range r.Samples {
		k := key{s.Transport, s.Signal}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], s)
	}
	for _, k := range keys {
		g := groups[k]
		back, stall, gap, lost, retr := make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g)), make([]float64, len(g))
		survived := 0
		for i, s := range g {
			back[i], stall[i], gap[i] = ms(s.Back), ms(s.Result.StallNs), ms(s.Result.ProbeGapNs)
			lost[i], retr[i] = float64(s.Result.ProbesLost), float64(s.Result.Retransmits)
			if s.Result.Survived {
				survived++
			}
		}
		med := func(xs []float64) float64 { m, _ := Median(xs); return m }
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f ms | %.0f ms | %.0f ms | %.0f | %.0f | %d of %d |\n",
			k.t, k.s, len(g), med(back), med(stall), med(gap), med(lost), med(retr), survived, len(g))
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
