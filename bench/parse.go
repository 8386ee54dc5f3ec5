package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Iperf3 is what the bench takes from `iperf3 -c … -J` (run on the client,
// which also prints the server's end-of-test figures).
type Iperf3 struct {
	// ReceivedBps and ReceivedBytes are the receiver's view
	// (end.sum_received): what actually arrived.
	ReceivedBps   float64
	ReceivedBytes int64
	// SentBytes is the sender's view (end.sum_sent).
	SentBytes int64
	// Retransmits is TCP's count on the sender (0 for UDP).
	Retransmits int
	// LostPercent is UDP loss seen by the receiver.
	LostPercent float64
	// UDP tells which kind of test it was.
	UDP bool
}

// ErrIperf3Busy is the error iperf3 reports when its server is still
// running another test; callers retry.
var ErrIperf3Busy = errors.New("iperf3 server busy")

type iperfSum struct {
	Bytes         *int64   `json:"bytes"`
	BitsPerSecond *float64 `json:"bits_per_second"`
	Retransmits   int      `json:"retransmits"`
	LostPercent   *float64 `json:"lost_percent"`
}

type iperfDoc struct {
	Start struct {
		TestStart struct {
			Protocol string `json:"protocol"`
		} `json:"test_start"`
	} `json:"start"`
	End struct {
		Sum         *iperfSum `json:"sum"`
		SumSent     *iperfSum `json:"sum_sent"`
		SumReceived *iperfSum `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// ParseIperf3 decodes iperf3's JSON output (iperf3 3.x, -J). An iperf3
// error (its "error" field) comes back as an error; a "server is busy"
// one wraps ErrIperf3Busy.
func ParseIperf3(b []byte) (Iperf3, error) {
	var d iperfDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return Iperf3{}, fmt.Errorf("iperf3 json: %w", err)
	}
	if d.Error != "" {
		if busyRE.MatchString(d.Error) {
			return Iperf3{}, fmt.Errorf("iperf3: %s: %w", d.Error, ErrIperf3Busy)
		}
		return Iperf3{}, fmt.Errorf("iperf3: %s", d.Error)
	}
	r := Iperf3{UDP: d.Start.TestStart.Protocol == "UDP"}
	recv := d.End.SumReceived
	if recv == nil && r.UDP {
		// Older iperf3 reports UDP only in end.sum, with the
		// receiver's loss filled in from the server's results.
		recv = d.End.Sum
	}
	if recv == nil || recv.BitsPerSecond == nil || recv.Bytes == nil {
		return Iperf3{}, fmt.Errorf("iperf3 json: no receiver summary (end.sum_received)")
	}
	r.ReceivedBps = *recv.BitsPerSecond
	r.ReceivedBytes = *recv.Bytes
	if s := d.End.SumSent; s != nil {
		r.Retransmits = s.Retransmits
		if s.Bytes != nil {
			r.SentBytes = *s.Bytes
		}
	}
	if r.UDP {
		switch {
		case recv.LostPercent != nil:
			r.LostPercent = *recv.LostPercent
		case d.End.Sum != nil && d.End.Sum.LostPercent != nil:
			r.LostPercent = *d.End.Sum.LostPercent
		default:
			return Iperf3{}, fmt.Errorf("iperf3 json: UDP test without lost_percent")
		}
	}
	return r, nil
}

var (
	busyRE = regexp.MustCompile(`(?i)server is busy`)
	// rtt min/avg/max/mdev = 0.031/0.046/0.081/0.012 ms (iputils);
	// round-trip min/avg/max = … (busybox).
	pingAvgRE  = regexp.MustCompile(`(?:rtt|round-trip) min/avg/max(?:/mdev)? = [\d.]+/([\d.]+)/[\d.]+(?:/[\d.]+)? ms`)
	pingLossRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
)

// ParsePing returns the average RTT and the packet counts from ping's
// summary. It fails when no reply came back.
func ParsePing(out string) (avg time.Duration, sent, received int, err error) {
	if m := pingLossRE.FindStringSubmatch(out); m != nil {
		sent, _ = strconv.Atoi(m[1])
		received, _ = strconv.Atoi(m[2])
	} else {
		return 0, 0, 0, fmt.Errorf("ping: no summary in %q", out)
	}
	m := pingAvgRE.FindStringSubmatch(out)
	if m == nil || received == 0 {
		return 0, sent, received, fmt.Errorf("ping: %d/%d replies", received, sent)
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, sent, received, fmt.Errorf("ping: rtt %q: %w", m[1], err)
	}
	return time.Duration(ms * float64(time.Millisecond)), sent, received, nil
}
