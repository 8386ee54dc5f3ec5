package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Sample is what one repetition measured on one datapath. A failed probe
// leaves its field empty and adds to Errors; the medians skip it.
type Sample struct {
	Rep      int           `json:"rep"`
	Datapath string        `json:"datapath"`
	RTT      time.Duration `json:"rtt"` // ping average on an idle path; 0 if the probe failed
	TCP      []TCPSample   `json:"tcp"`
	UDP      *UDPSample    `json:"udp,omitempty"`
	Errors   []string      `json:"errors,omitempty"`
}

// TCPSample is one iperf3 TCP test, figures from the receiver's side.
type TCPSample struct {
	Streams     int     `json:"streams"`
	Gbps        float64 `json:"gbps"`
	Bytes       int64   `json:"bytes"`
	Retransmits int     `json:"retransmits"`
	// CPU is the process set's CPU time over the test: iperf3 client and
	// server and the datapath's daemons (utime+stime). Softirq work that
	// the kernel books to no process is not in it; Machine is.
	CPU CPUUse `json:"cpu"`
}

// UDPSample is one iperf3 UDP test at the configured offered rate.
type UDPSample struct {
	Gbps    float64 `json:"gbps"` // receiver side
	LossPct float64 `json:"lossPct"`
	CPU     CPUUse  `json:"cpu"`
}

// CPUUse is CPU time spent during one test, in seconds.
type CPUUse struct {
	// Set is utime+stime of the measured processes (iperf3 client and
	// server, the datapath's daemons).
	Set float64 `json:"set"`
	// Machine is every non-idle CPU second of the machine (user, nice,
	// system, irq, softirq, steal), this datapath's softirq work included.
	Machine float64 `json:"machine"`
	// Foreign estimates what others used: user+nice+system of the machine
	// minus Set minus this program. Large values mean the figure is
	// suspect (someone else was busy).
	Foreign float64 `json:"foreign"`
	// Wall is the test's wall time.
	Wall float64 `json:"wall"`
}

// PerGB is CPU seconds per 10^9 bytes moved.
func PerGB(cpuSeconds float64, bytes int64) (float64, bool) {
	if bytes <= 0 || cpuSeconds < 0 {
		return 0, false
	}
	return cpuSeconds / (float64(bytes) / 1e9), true
}

// Median of xs (the mean of the middle two for an even count); false for
// an empty slice. xs is not modified.
func Median(xs []float64) (float64, bool) {
	if len(xs) == 0 {
		return 0, false
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2], true
	}
	return (s[n/2-1] + s[n/2]) / 2, true
}

// Ratio is a/b, or false when either is missing or b is zero.
func Ratio(a, b *float64) (float64, bool) {
	if a == nil || b == nil || *b == 0 {
		return 0, false
	}
	return *a / *b, true
}

// Row is one object of latest.json: one datapath at one stream count.
// Figures that were not measured (a datapath not available, a probe that
// failed every time) are null, never made up.
type Row struct {
	Datapath        string   `json:"datapath"`
	Streams         int      `json:"streams"`
	Gbps            *float64 `json:"gbps"`
	RatioToRaw      *float64 `json:"ratio_to_raw"`
	Baseline        string   `json:"baseline"`
	RatioToBaseline *float64 `json:"ratio_to_baseline"`
	RTTMicros       *float64 `json:"rtt_us"`
	CPUPerGB        *float64 `json:"cpu_s_per_gb"`
	UDPLossPct      *float64 `json:"udp_loss_pct"`
}

// Summarize turns the samples into rows, one per datapath (in the order
// given) and stream count (Streams). Each figure is the median over the
// repetitions; ratios are ratios of those medians, so that the table reads
// consistently (gbps / raw's gbps). RTT and UDP loss are per datapath and
// repeated on both of its rows.
func Summarize(datapaths []string, samples []Sample) []Row {
	type key struct {
		dp      string
		streams int
	}
	gbps := map[key]*float64{}
	var rows []Row
	for _, dp := range datapaths {
		var rtts, losses []float64
		for _, s := range samples {
			if s.Datapath != dp {
				continue
			}
			if s.RTT > 0 {
				rtts = append(rtts, float64(s.RTT)/float64(time.Microsecond))
			}
			if s.UDP != nil {
				losses = append(losses, s.UDP.LossPct)
			}
		}
		for _, n := range Streams {
			var g, cpu []float64
			for _, s := range samples {
				if s.Datapath != dp {
					continue
				}
				for _, t := range s.TCP {
					if t.Streams != n {
						continue
					}
					g = append(g, t.Gbps)
					if c, ok := PerGB(t.CPU.Set, t.Bytes); ok {
						cpu = append(cpu, c)
					}
				}
			}
			r := Row{Datapath: dp, Streams: n, Baseline: Baseline(dp)}
			r.Gbps = median(g)
			r.CPUPerGB = median(cpu)
			r.RTTMicros = median(rtts)
			r.UDPLossPct = median(losses)
			gbps[key{dp, n}] = r.Gbps
			rows = append(rows, r)
		}
	}
	for i := range rows {
		r := &rows[i]
		if v, ok := Ratio(r.Gbps, gbps[key{Raw, r.Streams}]); ok {
			r.RatioToRaw = &v
		}
		if r.Baseline != "" {
			if v, ok := Ratio(r.Gbps, gbps[key{r.Baseline, r.Streams}]); ok {
				r.RatioToBaseline = &v
			}
		}
	}
	for i := range rows {
		r := &rows[i]
		round(r.Gbps, 3)
		round(r.RatioToRaw, 3)
		round(r.RatioToBaseline, 3)
		round(r.RTTMicros, 1)
		round(r.CPUPerGB, 3)
		round(r.UDPLossPct, 3)
	}
	return rows
}

func median(xs []float64) *float64 {
	m, ok := Median(xs)
	if !ok {
		return nil
	}
	return &m
}

func round(p *float64, digits int) {
	if p == nil {
		return
	}
	f := math.Pow(10, float64(digits))
	*p = math.Round(*p*f) / f
}

// WriteJSON writes rows as latest.json: an indented JSON list.
func WriteJSON(w io.Writer, rows []Row) error {
	if rows == nil {
		rows = []Row{}
	}
	b, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return fmt.Errorf("encode rows: %w", err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write rows: %w", err)
	}
	return nil
}
