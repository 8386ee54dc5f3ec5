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

// serveMetrics serves /metrics on addr until ctx ends. A listen error is
// returned at once; after that it returns nil when ctx ends.
func serveMetrics(ctx context.Context, addr string, status func() control.Status) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(control.NewCollector(status, buildinfo.Version)); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %s: %w", addr, err)
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
