package bench

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/prereq/prereqtest"
)

// TestSmokeQuick is BENCH_QUICK for the two cheapest datapaths (raw and
// kernel-vxlan) end to end: labs, hand-made pods, flannel-style vxlan,
// iperf3, ping, outputs, and a teardown that leaves nothing behind. Root
// only; skipped with -short.
func TestSmokeQuick(t *testing.T) {
	prereqtest.Netns(t, "ip", "bridge", "ping", "iperf3")
	wd, _ := os.Getwd()
	cfg := DefaultConfig().QuickConfig()
	cfg.Datapaths = []string{Raw, KernelVXLAN}
	cfg.Tag = "wbt"
	cfg.RunDir = filepath.Join(t.TempDir(), "run")
	cfg.OutDir = t.TempDir()
	cfg.ModuleDir = ModuleRoot(wd)
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("quick run of raw + kernel-vxlan took %v\n%s", time.Since(start).Round(time.Second), Table(rep.Rows, rep.Unavailable, rep.Failed))
	if len(rep.Failed) > 0 {
		t.Fatalf("failed: %v", rep.Failed)
	}
	if len(rep.Rows) != 4 {
		t.Fatalf("%d rows, want 4", len(rep.Rows))
	}
	for _, r := range rep.Rows {
		if r.Gbps == nil || *r.Gbps <= 0.1 || r.RTTMicros == nil || *r.RTTMicros <= 0 || r.UDPLossPct == nil || r.CPUPerGB == nil || *r.CPUPerGB <= 0 {
			t.Errorf("%s×%d: missing or implausible figures: %+v", r.Datapath, r.Streams, r)
		}
	}
	if r := rep.Rows[0]; r.Datapath != Raw || r.RatioToRaw == nil || *r.RatioToRaw != 1 {
		t.Errorf("first row %+v, want raw with ratio 1", r)
	}

	b, err := os.ReadFile(filepath.Join(cfg.OutDir, "latest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []Row
	if err := json.Unmarshal(b, &rows); err != nil || len(rows) != 4 {
		t.Fatalf("latest.json: %v, %d rows", err, len(rows))
	}
	for _, f := range []string{"latest.png", rep.Started.UTC().Format("2006-01-02") + ".md"} {
		if _, err := os.Stat(filepath.Join(cfg.OutDir, f)); err != nil {
			t.Error(err)
		}
	}

	// Nothing left: no namespace of ours, no run dir, no lock.
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), cfg.Tag+string(bedHostGW)+"-") || strings.HasPrefix(e.Name(), cfg.Tag+string(bedKernelVXLAN)+"-") {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	for _, p := range []string{cfg.RunDir, cfg.RunDir + ".lock"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestRestartSmoke runs the restart benchmark once, VXLAN, a hand-off and
// a SIGKILL: the connection survives both, the figures are there, the
// report is written, and nothing is left.
func TestRestartSmoke(t *testing.T) {
	prereqtest.Netns(t, "ip")
	cfg := DefaultRestartConfig()
	cfg.Transports, cfg.Ways, cfg.Reps = []string{"vxlan"}, []Way{HandOff, Kill}, 1
	cfg.Before, cfg.After = 300*time.Millisecond, 300*time.Millisecond
	cfg.BinDir = prereqtest.Binaries(t)
	cfg.RunDir = filepath.Join(t.TempDir(), "run")
	cfg.OutDir = t.TempDir()
	cfg.Tag = "wbr"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := RunRestart(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Samples) != 2 {
		t.Fatalf("%d samples, want 2", len(rep.Samples))
	}
	for _, s := range rep.Samples {
		t.Logf("%s: %+v", s.Way, s.Result)
		if !s.Result.Survived || s.Result.BytesDelivered == 0 || s.Result.ProbesSent == 0 || s.Back <= 0 || s.Result.StallNs <= 0 {
			t.Fatalf("implausible %s sample: back %s, %+v", s.Way, s.Back, s.Result)
		}
		if (s.Way == Kill) != (s.FirstProbe > 0) {
			t.Fatalf("%s: first probe %s (only a stop has one)", s.Way, s.FirstProbe)
		}
	}
	md, err := os.ReadFile(filepath.Join(cfg.OutDir, "restart-"+rep.Date.Format("2006-01-02")+".md"))
	if err != nil || !strings.Contains(string(md), "| vxlan | SIGKILL | 1 |") || !strings.Contains(string(md), "| vxlan | hand-off | 1 |") || strings.Count(string(md), "1 of 1") != 2 {
		t.Fatalf("report: %v\n%s", err, md)
	}
	var back RestartReport
	if b, err := os.ReadFile(filepath.Join(cfg.OutDir, "restart-latest.json")); err != nil || json.Unmarshal(b, &back) != nil || len(back.Samples) != 2 {
		t.Fatalf("restart-latest.json: %v", err)
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), cfg.Tag) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	if _, err := os.Stat(cfg.RunDir); !os.IsNotExist(err) {
		t.Errorf("%s left behind (%v)", cfg.RunDir, err)
	}
}
