package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"image/png"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
		ok   bool
	}{
		{nil, 0, false},
		{[]float64{7}, 7, true},
		{[]float64{3, 1, 2}, 2, true},
		{[]float64{4, 1, 3, 2}, 2.5, true},
		{[]float64{10, 10, 1}, 10, true},
	} {
		in := slices.Clone(tc.in)
		got, ok := Median(in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Median(%v) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("Median reordered its input: %v", in)
		}
	}
}

func TestRatioAndPerGB(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	if r, ok := Ratio(f(3), f(4)); !ok || r != 0.75 {
		t.Errorf("Ratio(3,4) = %v, %v", r, ok)
	}
	for _, c := range [][2]*float64{{nil, f(1)}, {f(1), nil}, {f(1), f(0)}} {
		if _, ok := Ratio(c[0], c[1]); ok {
			t.Errorf("Ratio(%v, %v) ok, want missing", c[0], c[1])
		}
	}
	if c, ok := PerGB(3, 2e9); !ok || c != 1.5 {
		t.Errorf("PerGB(3 s, 2 GB) = %v, %v", c, ok)
	}
	if _, ok := PerGB(3, 0); ok {
		t.Error("PerGB with nothing moved should be missing")
	}
}

// samples builds three repetitions: raw, kernel-vxlan and weft-vxlan with
// known figures, weft-wireguard absent.
func samples() []Sample {
	var out []Sample
	tcp := func(n int, gbps float64, cpu float64) TCPSample {
		return TCPSample{Streams: n, Gbps: gbps, Bytes: int64(gbps * 1e9 / 8 * 5), CPU: CPUUse{Set: cpu}}
	}
	for rep, k := range []float64{1.0, 1.2, 0.8} {
		out = append(out,
			Sample{Rep: rep + 1, Datapath: Raw, RTT: time.Duration(40*k) * time.Microsecond,
				TCP: []TCPSample{tcp(1, 15*k, 5), tcp(4, 20*k, 6)}, UDP: &UDPSample{LossPct: 0}},
			Sample{Rep: rep + 1, Datapath: KernelVXLAN, RTT: time.Duration(50*k) * time.Microsecond,
				TCP: []TCPSample{tcp(1, 12*k, 5), tcp(4, 24*k, 6)}, UDP: &UDPSample{LossPct: 1 * k}},
			Sample{Rep: rep + 1, Datapath: WeftVXLAN, RTT: time.Duration(90*k) * time.Microsecond,
				TCP: []TCPSample{tcp(1, 6*k, 5)}, UDP: &UDPSample{LossPct: 10 * k},
				Errors: []string{"tcp 4: iperf3: boom"}},
		)
	}
	return out
}

func TestSummarize(t *testing.T) {
	rows := Summarize(Datapaths, samples())
	if len(rows) != len(Datapaths)*len(Streams) {
		t.Fatalf("%d rows, want %d", len(rows), len(Datapaths)*len(Streams))
	}
	get := func(dp string, n int) Row {
		for _, r := range rows {
			if r.Datapath == dp && r.Streams == n {
				return r
			}
		}
		t.Fatalf("no row %s×%d", dp, n)
		return Row{}
	}
	eq := func(name string, p *float64, want float64) {
		t.Helper()
		if p == nil {
			t.Errorf("%s is null, want %v", name, want)
			return
		}
		if math.Abs(*p-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, *p, want)
		}
	}
	null := func(name string, p *float64) {
		t.Helper()
		if p != nil {
			t.Errorf("%s = %v, want null", name, *p)
		}
	}

	raw1 := get(Raw, 1)
	eq("raw gbps", raw1.Gbps, 15)
	eq("raw ratio_to_raw", raw1.RatioToRaw, 1)
	null("raw ratio_to_baseline", raw1.RatioToBaseline)
	eq("raw rtt", raw1.RTTMicros, 40)
	// 5 s of CPU for 15 Gbit/s × 5 s = 9.375 GB → 0.533 s/GB
	eq("raw cpu", raw1.CPUPerGB, 0.533)
	eq("raw loss", raw1.UDPLossPct, 0)
	if raw1.Baseline != "" {
		t.Errorf("raw baseline %q", raw1.Baseline)
	}

	kv4 := get(KernelVXLAN, 4)
	eq("kernel-vxlan×4 gbps", kv4.Gbps, 24)
	eq("kernel-vxlan×4 ratio_to_raw", kv4.RatioToRaw, 1.2)
	eq("kernel-vxlan loss", kv4.UDPLossPct, 1)

	for dp, base := range map[string]string{WeftVXLAN6: WeftVXLAN, WeftWireGuard6: WeftWireGuard} {
		if got := Baseline(dp); got != base {
			t.Errorf("%s baseline %q, want %q", dp, got, base)
		}
	}
	wv1 := get(WeftVXLAN, 1)
	if wv1.Baseline != KernelVXLAN {
		t.Errorf("weft-vxlan baseline %q", wv1.Baseline)
	}
	eq("weft-vxlan gbps", wv1.Gbps, 6)
	eq("weft-vxlan ratio_to_raw", wv1.RatioToRaw, 0.4)
	eq("weft-vxlan ratio_to_baseline", wv1.RatioToBaseline, 0.5)
	eq("weft-vxlan rtt", wv1.RTTMicros, 90)
	// Every 4-stream test failed: no figure, but RTT and loss stay.
	wv4 := get(WeftVXLAN, 4)
	null("weft-vxlan×4 gbps", wv4.Gbps)
	null("weft-vxlan×4 ratio_to_baseline", wv4.RatioToBaseline)
	eq("weft-vxlan×4 rtt", wv4.RTTMicros, 90)

	wg := get(WeftWireGuard, 1)
	if wg.Baseline != WireGuardGo {
		t.Errorf("weft-wireguard baseline %q", wg.Baseline)
	}
	for name, p := range map[string]*float64{"gbps": wg.Gbps, "ratio_to_raw": wg.RatioToRaw,
		"ratio_to_baseline": wg.RatioToBaseline, "rtt": wg.RTTMicros, "cpu": wg.CPUPerGB, "loss": wg.UDPLossPct} {
		null("weft-wireguard "+name, p)
	}
}

// TestJSONSchema pins latest.json: a list of objects with exactly these
// keys, nulls where nothing was measured.
func TestJSONSchema(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, Summarize(Datapaths, samples())); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("latest.json is not a JSON list of objects: %v\n%s", err, buf.String())
	}
	want := []string{"baseline", "cpu_s_per_gb", "datapath", "gbps", "ratio_to_baseline", "ratio_to_raw", "rtt_us", "streams", "udp_loss_pct"}
	seen := map[string]bool{}
	for _, o := range got {
		var keys []string
		for k := range o {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if !slices.Equal(keys, want) {
			t.Fatalf("keys %v, want exactly %v", keys, want)
		}
		dp, _ := o["datapath"].(string)
		if !slices.Contains(Datapaths, dp) {
			t.Errorf("datapath %q", o["datapath"])
		}
		if s, ok := o["streams"].(float64); !ok || (s != 1 && s != 4) {
			t.Errorf("streams %v", o["streams"])
		}
		if b, ok := o["baseline"].(string); !ok || b != Baseline(dp) {
			t.Errorf("%s: baseline %v", dp, o["baseline"])
		}
		for _, k := range []string{"gbps", "ratio_to_raw", "ratio_to_baseline", "rtt_us", "cpu_s_per_gb", "udp_loss_pct"} {
			switch o[k].(type) {
			case float64, nil:
			default:
				t.Errorf("%s: %s is %T, want number or null", dp, k, o[k])
			}
		}
		seen[dp] = true
	}
	if len(got) != 16 || len(seen) != 8 {
		t.Errorf("%d objects over %d datapaths, want 16 over 8", len(got), len(seen))
	}
	if got[len(got)-1]["gbps"] != nil {
		t.Errorf("weft-wireguard was not measured but has gbps %v", got[len(got)-1]["gbps"])
	}
	var empty bytes.Buffer
	if err := WriteJSON(&empty, nil); err != nil || strings.TrimSpace(empty.String()) != "[]" {
		t.Errorf("no rows: %q, %v; want []", empty.String(), err)
	}
}

func TestParseIperf3(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The samples were made with iperf3 3.12 over loopback in a netns:
	// TCP -P 2 -t 1, UDP -u -b 1G -l 1392 -t 1, and a client with no server.
	tcp, err := ParseIperf3(read("iperf3-tcp.json"))
	if err != nil {
		t.Fatal(err)
	}
	if tcp.UDP || tcp.ReceivedBps != 16996260281.70703 || tcp.ReceivedBytes != 2125987840 || tcp.SentBytes != 2125987840 || tcp.Retransmits != 8 {
		t.Errorf("tcp sample: %+v", tcp)
	}
	udp, err := ParseIperf3(read("iperf3-udp.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Receiver side: 122945616 of the 124962624 bytes sent arrived.
	if !udp.UDP || udp.ReceivedBytes != 122945616 || udp.SentBytes != 124962624 || math.Abs(udp.LostPercent-1.6085193601568417) > 1e-12 ||
		math.Abs(udp.ReceivedBps-983481332.0867727) > 1e-6 {
		t.Errorf("udp sample: %+v", udp)
	}
	if _, err := ParseIperf3(read("iperf3-error.json")); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("error sample: %v", err)
	}
	busy := []byte(`{"start":{},"intervals":[],"end":{},"error":"error - the server is busy running a test. try again later"}`)
	if _, err := ParseIperf3(busy); !errors.Is(err, ErrIperf3Busy) {
		t.Errorf("busy server: %v, want ErrIperf3Busy", err)
	}
	// Old iperf3: UDP only in end.sum.
	old := []byte(`{"start":{"test_start":{"protocol":"UDP"}},"end":{"sum":{"bytes":100,"bits_per_second":800,"lost_percent":2.5}}}`)
	if r, err := ParseIperf3(old); err != nil || r.LostPercent != 2.5 || r.ReceivedBytes != 100 {
		t.Errorf("old UDP: %+v, %v", r, err)
	}
	for _, bad := range []string{``, `{`, `[]`, `{"end":{}}`, `{"start":{"test_start":{"protocol":"UDP"}},"end":{"sum_received":{"bytes":1,"bits_per_second":8}}}`} {
		if r, err := ParseIperf3([]byte(bad)); err == nil {
			t.Errorf("ParseIperf3(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestParsePing(t *testing.T) {
	iputils := `PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.

--- 10.244.2.2 ping statistics ---
20 packets transmitted, 20 received, 0% packet loss, time 969ms
rtt min/avg/max/mdev = 0.031/0.046/0.081/0.012 ms
`
	avg, sent, recv, err := ParsePing(iputils)
	if err != nil || avg != 46*time.Microsecond || sent != 20 || recv != 20 {
		t.Errorf("iputils: %v %d %d %v", avg, sent, recv, err)
	}
	busybox := "5 packets transmitted, 4 packets received, 20% packet loss\nround-trip min/avg/max = 0.100/1.250/3.000 ms\n"
	if avg, _, recv, err := ParsePing(busybox); err != nil || avg != 1250*time.Microsecond || recv != 4 {
		t.Errorf("busybox: %v %d %v", avg, recv, err)
	}
	if _, _, _, err := ParsePing("3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n"); err == nil {
		t.Error("no replies should be an error")
	}
	if _, _, _, err := ParsePing("ping: connect: Network is unreachable\n"); err == nil {
		t.Error("no summary should be an error")
	}
}

func TestConfigFromEnv(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	c, err := DefaultConfig().FromEnv(env(nil))
	if err != nil || c.Reps != 3 || c.Duration != 5*time.Second || len(c.Datapaths) != 8 || c.OutDir != "bench/results" {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	c, err = DefaultConfig().FromEnv(env(map[string]string{"BENCH_QUICK": "1"}))
	if err != nil || !c.Quick || c.Reps != 1 || c.QuietWait != 0 || c.OutDir != "bench/results/quick" {
		t.Fatalf("quick: %+v, %v", c, err)
	}
	c, err = DefaultConfig().FromEnv(env(map[string]string{"BENCH_QUICK": "1", "BENCH_REPS": "5", "BENCH_OUT": "/tmp/x",
		"BENCH_DATAPATHS": "kernel-vxlan,raw", "BENCH_SECONDS": "2", "BENCH_UDP_WINDOW": "-"}))
	if err != nil || c.Reps != 5 || c.OutDir != "/tmp/x" || !slices.Equal(c.Datapaths, []string{Raw, KernelVXLAN}) ||
		c.Duration != 2*time.Second || c.UDPWindow != "" {
		t.Fatalf("overrides: %+v, %v", c, err)
	}
	for _, bad := range []map[string]string{
		{"BENCH_REPS": "0"}, {"BENCH_REPS": "x"}, {"BENCH_DATAPATHS": "raw,flannel"}, {"BENCH_SECONDS": "0.1"},
	} {
		if _, err := DefaultConfig().FromEnv(env(bad)); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestTableAndMarkdown(t *testing.T) {
	rows := Summarize(Datapaths, samples())
	un := map[string]string{WeftWireGuard: "lab config: transport \"wireguard\" not supported"}
	tab := Table(rows, un, map[string]string{WireGuardGo: "wg: not found\nsecond line"})
	lines := strings.Split(tab, "\n")
	if !strings.HasPrefix(lines[0], "| datapath | streams | Gbit/s | ratio to raw |") || len(lines) < 14 {
		t.Fatalf("table:\n%s", tab)
	}
	for _, want := range []string{
		"| raw | 1 | 15.00 | 1.00 | — | n/a | 40 | 0.53 | 0.00 |",
		"| weft-vxlan | 1 | 6.00 | 0.40 | kernel-vxlan | 0.50 | 90 |",
		"| weft-wireguard | 4 | n/a | n/a | wireguard-go | n/a | n/a | n/a | n/a |",
		"weft-wireguard: not available — lab config: transport \"wireguard\" not supported",
		"wireguard-go: failed — wg: not found second line",
	} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
	r := &Report{Started: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC), Reps: 3, Duration: 5 * time.Second,
		UDPRate: "1G", UDPLen: 1392, Rows: rows, Samples: samples(), Unavailable: un}
	r.Finished = r.Started.Add(5 * time.Minute)
	md := r.Markdown()
	for _, want := range []string{"# weft bench — 2026-11-23 09:00 UTC", "median of 3", "| 2 | raw | tcp ×1 | 18.00 |", "rep 1 weft-vxlan: tcp 4: iperf3: boom"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
}

func TestWriteAndChart(t *testing.T) {
	dir := t.TempDir()
	r := &Report{Started: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC), Reps: 3, Duration: 5 * time.Second,
		Rows: Summarize(Datapaths, samples())}
	files, err := r.Write(dir)
	if err != nil || len(files) != 3 {
		t.Fatalf("Write: %v %v", files, err)
	}
	f, err := os.Open(dir + "/latest.png")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != chartW || b.Dy() != chartH {
		t.Errorf("chart is %v", b)
	}
	// Both bar colours are on the chart (raw has both stream counts).
	count := map[[3]uint32]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			count[[3]uint32{r >> 8, g >> 8, bl >> 8}]++
		}
	}
	for _, c := range colStream {
		if count[[3]uint32{uint32(c.R), uint32(c.G), uint32(c.B)}] < 100 {
			t.Errorf("colour %v hardly on the chart", c)
		}
	}
	if _, err := os.Stat(dir + "/2026-11-23.md"); err != nil {
		t.Error(err)
	}
	if niceStep(3.2) != 5 || niceStep(0.9) != 1 || niceStep(12) != 20 || niceStep(0) != 1 {
		t.Errorf("niceStep: %v %v %v", niceStep(3.2), niceStep(0.9), niceStep(12))
	}
}
