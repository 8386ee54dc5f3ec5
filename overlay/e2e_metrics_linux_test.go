package overlay_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/deploy/lab"
)

// TestNetnsMetrics scrapes a real weftd's --metrics-addr after pod traffic:
// the packet counters moved, the peer is alive over VXLAN, the drops and
// the build info are there.
func TestNetnsMetrics(t *testing.T) {
	needNetns(t)
	l := startLab(t, lab.Config{Nodes: 2, Sites: 2, PodsPerNode: 1, WeftdArgs: []string{"--metrics-addr", "127.0.0.1:9995"}})
	waitConverged(t, l)
	ping(t, l, l.PodsOn("n1")[0].Netns, l.PodsOn("n2")[0].Address)
	var conn net.Conn
	if err := ns.WithNetNSPath("/run/netns/"+l.Node("n1").Netns, func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", "127.0.0.1:9995", 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := client.Get("http://weftd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	value := func(series string) float64 {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("no %s in the scrape:\n%s", series, text)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	if v := value("weft_tx_packets_total"); v < 3 {
		t.Errorf("weft_tx_packets_total %v after 3 pings", v)
	}
	if v := value("weft_rx_packets_total"); v < 3 {
		t.Errorf("weft_rx_packets_total %v after 3 replies", v)
	}
	if v := value(`weft_peers{state="alive",transport="vxlan"}`); v != 1 {
		t.Errorf("alive vxlan peers %v, want 1", v)
	}
	value(`weft_drops_total{reason="no_route"}`)
	value("weft_process_start_time_seconds")
	if !regexp.MustCompile(`weft_build_info\{start="cold",version="[^"]+"\} 1`).MatchString(text) {
		t.Errorf("no weft_build_info in the scrape:\n%s", text)
	}
}
