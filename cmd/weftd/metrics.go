package main

// Prometheus metrics over HTTP (--metrics-addr): overlay/control's
// collector on a registry of its own, read on each scrape.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/cmd/internal/buildinfo"
	"github.com/weftnet/weft/overlay/control"
)

type metricsFlags struct {
	MetricsAddr string
}

func (m *metricsFlags) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&m.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. :9995 (README: Metrics); empty: off")
}

// listenMetrics opens --metrics-addr, unless a hand-off passed its
// listener (ln); nil when metrics are off.
func listenMetrics(addr string, ln net.Listener) (net.Listener, error) {
	if addr == "" {
		if ln != nil {
			ln.Close()
		}
		return nil, nil
	}
	if ln != nil {
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	return ln, nil
}

// serveMetrics serves /metrics on ln until ctx ends; then it returns nil.
func serveMetrics(ctx context.Context, ln net.Listener, status func() control.Status) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(control.NewCollector(status, buildinfo.Version)); err != nil {
		ln.Close()
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}
