package bench

// The rekey run (`make bench-rekey`, weftbench -rekey): one iperf3 TCP
// stream for three minutes between pods on two nodes joined by weft's
// WireGuard, across the session rekey WireGuard makes every 120 s
// (REKEY_AFTER_TIME; the initiator starts a handshake on its next send
// after that), with a UDP probe every 10 ms beside it. The figures: the
// handshakes n1's device completed during the run (read from weftd's
// status every 500 ms), the longest time between two probes arriving, and
// the iperf3 stream's slowest 100 ms interval. The run passes when at least
// one rekey happened, no probe gap exceeded MaxRekeyStall and no iperf3
// interval was empty.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq"
	"github.com/weftnet/weft/ipam/diskfile"
	"github.com/weftnet/weft/overlay/control"
)

// MaxRekeyStall is the longest gap between probes a rekey may cause (the
// issue's target).
const MaxRekeyStall = 100 * time.Millisecond

// rekeyProbeInterval is the probe's period, the resolution of the gap.
const rekeyProbeInterval = 10 * time.Millisecond

// RekeyConfig is one rekey run.
type RekeyConfig struct {
	Duration time.Duration // the iperf3 run; > 120 s to cross a rekey
	BinDir   string        // weftd and weft-cni
	RunDir   string        // the lab's directory; removed at the end
	OutDir   string        // rekey-latest.json and rekey-<date>.md; empty writes nothing
	Tag      string        // lab prefix
	Command  string
	Log      func(format string, args ...any)
}

// DefaultRekeyConfig: three minutes.
func DefaultRekeyConfig() RekeyConfig {
	return RekeyConfig{Duration: 180 * time.Second, RunDir: "/run/weft-bench-rekey", Tag: "wbrk"}
}

// RekeyReport is what a rekey run measured.
type RekeyReport struct {
	Date     time.Time `json:"date"`
	Command  string    `json:"command"`
	Seconds  float64   `json:"seconds"`
	Gbps     float64   `json:"gbps"` // iperf3 receiver side, whole run
	Retrans  int       `json:"retransmits"`
	Interval float64   `json:"intervalSeconds"` // iperf3 -i
	// SlowestInterval is the iperf3 interval with the fewest bits
	// (Gbit/s) and when it started (seconds into the run).
	SlowestIntervalGbps float64 `json:"slowestIntervalGbps"`
	SlowestIntervalAt   float64 `json:"slowestIntervalAt"`
	EmptyIntervals      int     `json:"emptyIntervals"`
	// Handshakes are the handshake times n1's device reported for n2
	// during the run (seconds into it; the first session's is before 0).
	Handshakes      []float64     `json:"handshakes"`
	ProbesSent      int           `json:"probesSent"`
	ProbesLost      int           `json:"probesLost"`
	LongestProbeGap time.Duration `json:"longestProbeGapNs"`
	GapAt           float64       `json:"gapAt"` // when the longest gap ended, seconds into the run
	// RekeyGap is the longest probe gap that ended within a second before
	// to three seconds after a rekey (what the rekey itself cost).
	RekeyGap time.Duration `json:"rekeyProbeGapNs"`
	Pass     bool          `json:"pass"`
	Why      string        `json:"why,omitempty"`
}

// RunRekey makes the run and, with cfg.OutDir set, writes the report.
// Everything it creates is gone when it returns.
func RunRekey(ctx context.Context, cfg RekeyConfig) (rep *RekeyReport, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("bench-rekey needs root (network namespaces, TUN devices)")
	}
	if err := prereq.Check("ip", "iperf3"); err != nil {
		return nil, fmt.Errorf("bench-rekey: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(cfg.RunDir)
	dir := filepath.Join(cfg.RunDir, cfg.Tag)
	if err := lab.Cleanup(cfg.Tag, dir); err != nil {
		return nil, err
	}
	l, err := lab.Up(ctx, lab.Config{Prefix: cfg.Tag, Dir: dir, BinDir: cfg.BinDir, Nodes: 2, Sites: 2, PodsPerNode: 1, Transport: "wireguard", Log: devNull{}})
	if err != nil {
		return nil, err
	}
	defer func() {
		if derr := l.Down(); derr != nil && err == nil {
			err = derr
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := l.WaitConverged(wctx); err != nil {
		return nil, err
	}
	from, to := l.PodsOn("n1")[0], l.PodsOn("n2")[0]

	srv := exec.CommandContext(ctx, "ip", "netns", "exec", to.Netns, "iperf3", "-s", "-1", "-p", "5211")
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() {
		srv.Process.Kill() // by PID: ours
		srv.Wait()
	}()
	pr, err := startProbe(from, to)
	if err != nil {
		return nil, err
	}
	defer pr.stop()
	time.Sleep(500 * time.Millisecond) // the server listens

	rep = &RekeyReport{Date: time.Now().UTC(), Command: cfg.Command, Interval: 0.1}
	start := time.Now()
	hs := &handshakes{sock: l.Node("n1").ControlSocket, peer: "n2", start: start}
	hctx, hstop := context.WithCancel(ctx)
	var hwg sync.WaitGroup
	hwg.Add(1)
	go func() { defer hwg.Done(); hs.watch(hctx) }()

	secs := int(cfg.Duration.Round(time.Second) / time.Second)
	cfg.Log("rekey run: %d s of iperf3 %s → %s over WireGuard, probes every %s", secs, from.Name, to.Name, rekeyProbeInterval)
	out, runErr := exec.CommandContext(ctx, "ip", "netns", "exec", from.Netns, "iperf3", "-c", to.Address, "-p", "5211",
		"-t", strconv.Itoa(secs), "-i", "0.1", "-J", "--connect-timeout", "3000").Output()
	hstop()
	hwg.Wait()
	pres := pr.stop()
	rep.Seconds = time.Since(start).Seconds()
	rep.ProbesSent, rep.ProbesLost, rep.LongestProbeGap = pres.sent, pres.sent-pres.got, pres.gap
	rep.GapAt = pres.gapAt.Sub(start).Seconds()
	rep.Handshakes = hs.seen
	for _, h := range rep.Handshakes[min(1, len(rep.Handshakes)):] {
		for _, g := range pres.gaps {
			at := g.end.Sub(start).Seconds()
			if at >= h-1 && at <= h+3 && g.gap > rep.RekeyGap {
				rep.RekeyGap = g.gap
			}
		}
	}
	if runErr != nil {
		return rep, fmt.Errorf("iperf3: %w", runErr)
	}
	if err := rep.parseIperf(out); err != nil {
		return rep, err
	}
	// The first handshake seen is the session the run starts on; every
	// later one is a rekey.
	rekeys := max(0, len(rep.Handshakes)-1)
	switch {
	case rekeys == 0:
		rep.Why = "no rekey during the run"
	case rep.LongestProbeGap > MaxRekeyStall:
		rep.Why = fmt.Sprintf("a probe gap of %s (> %s)", rep.LongestProbeGap, MaxRekeyStall)
	case rep.EmptyIntervals > 0:
		rep.Why = fmt.Sprintf("%d empty iperf3 intervals", rep.EmptyIntervals)
	default:
		rep.Pass = true
	}
	if cfg.OutDir != "" {
		return rep, rep.write(cfg.OutDir)
	}
	return rep, nil
}

func (r *RekeyReport) parseIperf(out []byte) error {
	var j struct {
		Intervals []struct {
			Sum struct {
				Start float64 `json:"start"`
				Bits  float64 `json:"bits_per_second"`
				Secs  float64 `json:"seconds"`
			} `json:"sum"`
		} `json:"intervals"`
		End struct {
			Sent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			Received struct {
				Bits float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &j); err != nil {
		return fmt.Errorf("iperf3 output: %w", err)
	}
	if j.Error != "" {
		return fmt.Errorf("iperf3: %s", j.Error)
	}
	r.Gbps, r.Retrans = j.End.Received.Bits/1e9, j.End.Sent.Retransmits
	r.SlowestIntervalGbps = -1
	for _, iv := range j.Intervals {
		if iv.Sum.Secs < 0.05 {
			continue // iperf3's short last interval
		}
		g := iv.Sum.Bits / 1e9
		if iv.Sum.Bits == 0 {
			r.EmptyIntervals++
		}
		if r.SlowestIntervalGbps < 0 || g < r.SlowestIntervalGbps {
			r.SlowestIntervalGbps, r.SlowestIntervalAt = g, iv.Sum.Start
		}
	}
	return nil
}

// handshakes records the distinct last-handshake times n1's weftd reports
// for its WireGuard peer, polled every 500 ms.
type handshakes struct {
	sock, peer string
	start      time.Time
	last       time.Time
	seen       []float64
}

func (h *handshakes) watch(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := control.Get(cctx, h.sock)
		cancel()
		if err == nil {
			for _, p := range st.Peers {
				if p.Name == h.peer && !p.WGLastHandshake.IsZero() && !p.WGLastHandshake.Equal(h.last) {
					h.last = p.WGLastHandshake
					h.seen = append(h.seen, p.WGLastHandshake.Sub(h.start).Seconds())
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe sends a numbered UDP datagram from one pod to another every
// rekeyProbeInterval and records, at the receiver, the longest time
// between two arrivals.
type probe struct {
	tx, rx   net.PacketConn
	to       net.Addr
	done     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
	mu       sync.Mutex
	res      probeResult
	lastSeen time.Time
}

type probeResult struct {
	sent, got int
	gap       time.Duration
	gapAt     time.Time
	gaps      []probeGap // every gap over 2 probe intervals
}

type probeGap struct {
	gap time.Duration
	end time.Time
}

func startProbe(from, to lab.Pod) (*probe, error) {
	p := &probe{done: make(chan struct{})}
	if err := ns.WithNetNSPath(to.NetnsPath, func(ns.NetNS) error {
		var err error
		p.rx, err = net.ListenPacket("udp4", net.JoinHostPort(to.Address, "0"))
		return err
	}); err != nil {
		return nil, fmt.Errorf("probe: listen in %s: %w", to.Name, err)
	}
	p.to = p.rx.LocalAddr()
	if err := ns.WithNetNSPath(from.NetnsPath, func(ns.NetNS) error {
		var err error
		p.tx, err = net.ListenPacket("udp4", net.JoinHostPort(from.Address, "0"))
		return err
	}); err != nil {
		p.rx.Close()
		return nil, fmt.Errorf("probe: socket in %s: %w", from.Name, err)
	}
	p.wg.Add(2)
	go p.send()
	go p.receive()
	return p, nil
}

func (p *probe) send() {
	defer p.wg.Done()
	t := time.NewTicker(rekeyProbeInterval)
	defer t.Stop()
	var b [8]byte
	for seq := uint64(0); ; seq++ {
		binary.BigEndian.PutUint64(b[:], seq)
		if _, err := p.tx.WriteTo(b[:], p.to); err == nil {
			p.mu.Lock()
			p.res.sent++
			p.mu.Unlock()
		}
		select {
		case <-p.done:
			return
		case <-t.C:
		}
	}
}

func (p *probe) receive() {
	defer p.wg.Done()
	var b [64]byte
	for {
		if _, _, err := p.rx.ReadFrom(b[:]); err != nil {
			return
		}
		now := time.Now()
		p.mu.Lock()
		p.res.got++
		if !p.lastSeen.IsZero() {
			g := now.Sub(p.lastSeen)
			if g > p.res.gap {
				p.res.gap, p.res.gapAt = g, now
			}
			if g > 2*rekeyProbeInterval {
				p.res.gaps = append(p.res.gaps, probeGap{g, now})
			}
		}
		p.lastSeen = now
		p.mu.Unlock()
	}
}

// stop ends the probe (idempotent) and returns its figures; datagrams
// still in flight when it stops count as lost.
func (p *probe) stop() probeResult {
	p.once.Do(func() {
		close(p.done)
		time.Sleep(50 * time.Millisecond) // the last probes arrive
		p.tx.Close()
		p.rx.Close()
		p.wg.Wait()
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.res
}

// Markdown is the report as a small table.
func (r *RekeyReport) Markdown() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# weft WireGuard across a rekey, %s\n\n`%s`\n\n", r.Date.Format("2006-01-02 15:04 UTC"), r.Command)
	hs := slices.Clone(r.Handshakes)
	fmt.Fprintf(&b, "| run s | TCP Gbit/s | retransmits | slowest %.1f s interval Gbit/s (at s) | empty intervals | handshakes (s into the run) | probes lost / sent | longest probe gap (at s) | longest gap at a rekey | pass |\n", r.Interval)
	b.WriteString("|---:|---:|---:|---:|---:|---|---:|---:|---:|---|\n")
	fmt.Fprintf(&b, "| %.0f | %.2f | %d | %.2f (%.1f) | %d | %s | %d / %d | %.1f ms (%.1f) | %.1f ms | %v%s |\n",
		r.Seconds, r.Gbps, r.Retrans, r.SlowestIntervalGbps, r.SlowestIntervalAt, r.EmptyIntervals, fmtSeconds(hs),
		r.ProbesLost, r.ProbesSent, ms(r.LongestProbeGap), r.GapAt, ms(r.RekeyGap), r.Pass, why(r.Why))
	return b.String()
}

func why(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func fmtSeconds(v []float64) string {
	if len(v) == 0 {
		return "none"
	}
	var b bytes.Buffer
	for i, x := range v {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%.1f", x)
	}
	return b.String()
}

func (r *RekeyReport) write(dir string) error {
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{
		"rekey-latest.json":                            append(j, '\n'),
		"rekey-" + r.Date.Format("2006-01-02") + ".md": []byte(r.Markdown()),
	} {
		if err := diskfile.Write(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
