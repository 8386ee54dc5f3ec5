// Package control is weftd's local control API: JSON over HTTP on a unix
// socket, read by weftctl, the lab and tests. The socket is root-only (0600).
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// Status is the answer to GET /v1/status.
type Status struct {
	Self     Node              `json:"self"`
	Peers    []Node            `json:"peers"`
	Counters map[string]uint64 `json:"counters"`
}

// Node describes this node or a peer.
type Node struct {
	Name         string    `json:"name"`
	Site         string    `json:"site,omitempty"`
	UnderlayAddr string    `json:"underlayAddr"` // ip:port of the VXLAN endpoint
	PodCIDRs     []string  `json:"podCIDRs"`
	VTEPMAC      string    `json:"vtepMAC"`
	Transport    string    `json:"transport"`
	State        string    `json:"state"` // alive, suspect, dead, left, static
	LastSeen     time.Time `json:"lastSeen,omitzero"`
	MTU          int       `json:"mtu,omitempty"` // self only
}

// Serve answers status requests on a unix socket at path until ctx ends. A
// stale socket file from a crashed daemon is replaced.
func Serve(ctx context.Context, path string, status func() Status) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(status())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err = srv.Serve(l)
	os.Remove(path)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Get asks the daemon behind the socket at path for its status.
func Get(ctx context.Context, path string) (Status, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://weftd/v1/status", nil)
	if err != nil {
		return Status{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Status{}, fmt.Errorf("ask weftd at %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Status{}, fmt.Errorf("weftd at %s: %s", path, resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return Status{}, fmt.Errorf("decode status from %s: %w", path, err)
	}
	return st, nil
}
