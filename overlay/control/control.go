// Package control is weftd's local control API: JSON over HTTP on a unix
// socket, read by weftctl, the lab and tests. The socket is root-only (0600).
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/weftnet/weft/peer"
)

// Status is the answer to GET /v1/status.
type Status struct {
	Self     Node              `json:"self"`
	Peers    []Node            `json:"peers"`
	Counters map[string]uint64 `json:"counters"`
	Process  Process           `json:"process,omitzero"`
	// NetworkPolicy is nil unless weftd runs with --network-policy.
	NetworkPolicy *NetworkPolicy `json:"networkPolicy,omitempty"`
}

// Process is how this weftd process started.
type Process struct {
	PID int `json:"pid"`
	// Generation is the node record's generation at start (its start
	// time in nanoseconds): every start has a new one.
	Generation uint64    `json:"generation"`
	Started    time.Time `json:"started"`
	// Start is "cold" (gossip alone fills the peer table), "warm" (it
	// forwarded from the peer table its predecessor left, WarmPeers
	// peers, until gossip replaced it) or "handoff" (it took the running
	// datapath of weftd HandOffFrom, and its WarmPeers peers, over).
	Start       string `json:"start"`
	WarmPeers   int    `json:"warmPeers,omitempty"`
	HandOffFrom int    `json:"handOffFrom,omitempty"`
}

// Node describes this node or a peer.
type Node struct {
	Name         string `json:"name"`
	Site         string `json:"site,omitempty"`
	UnderlayAddr string `json:"underlayAddr"`         // ip:port of the VXLAN endpoint, the internal address
	PublicAddr   string `json:"publicAddr,omitempty"` // where other sites reach the node; empty: none
	// AltUnderlayAddr is the node's underlay address of the other family
	// (peer.Record.AltUnderlay), ip:port; empty: none.
	AltUnderlayAddr string `json:"altUnderlayAddr,omitempty"`
	// Unreachable says why this node does not route to a live peer at
	// all (for example, no underlay family in common); empty otherwise.
	Unreachable string `json:"unreachable,omitempty"`
	// Path is how this node reaches a peer: "internal" or "public" (the
	// address it sends to), "learned" (a peer behind NAT, at the address
	// its packets come from), "relay <name>", or "-" (not routed).
	Path        string   `json:"path,omitempty"`
	PodCIDRs    []string `json:"podCIDRs"`
	VTEPMAC     string   `json:"vtepMAC"`
	WGPublicKey string   `json:"wgPublicKey,omitempty"` // base64; empty without WireGuard
	WGEndpoint  string   `json:"wgEndpoint,omitempty"`  // ip:port
	// WireGuard counters of a peer on this node's device: its last
	// handshake and the bytes received from and sent to it.
	WGLastHandshake time.Time  `json:"wgLastHandshake,omitzero"`
	WGRxBytes       uint64     `json:"wgRxBytes,omitempty"`
	WGTxBytes       uint64     `json:"wgTxBytes,omitempty"`
	Transport       string     `json:"transport"`
	State           peer.State `json:"state"`
	LastSeen        time.Time  `json:"lastSeen,omitzero"`
	MTU             int        `json:"mtu,omitempty"` // self only
}

// API is what the daemon answers: GET /v1/status, and POST /v1/<action>
// for each entry of Actions, with a JSON object of string arguments in and
// the action's result as JSON out.
type API struct {
	Status  func() Status
	Actions map[string]func(args map[string]string) (any, error)
}

// Serve answers requests on a unix socket at path until ctx ends. A stale
// socket file from a crashed daemon is replaced.
func Serve(ctx context.Context, path string, api API) error {
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
		json.NewEncoder(w).Encode(api.Status())
	})
	for name, action := range api.Actions {
		mux.HandleFunc("POST /v1/"+name, func(w http.ResponseWriter, r *http.Request) {
			var args map[string]string
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&args); err != nil && !errors.Is(err, io.EOF) {
				http.Error(w, "bad arguments: "+err.Error(), http.StatusBadRequest)
				return
			}
			res, err := action(args)
			if err != nil {
				http.Error(w, err.Error(), http.StatusUnprocessableEntity)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(res)
		})
	}
	// Profiles, for finding where a datapath's CPU goes; the socket is
	// root-only, like the rest of this API.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
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
	var st Status
	err := call(ctx, path, http.MethodGet, "status", nil, &st)
	return st, err
}

// Do runs action name with args on the daemon behind the socket at path
// and decodes its result into out (which may be nil).
func Do(ctx context.Context, path, name string, args map[string]string, out any) error {
	return call(ctx, path, http.MethodPost, name, args, out)
}

func call(ctx context.Context, path, method, name string, args map[string]string, out any) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer client.CloseIdleConnections()
	var body io.Reader
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://weftd/v1/"+name, body)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("ask weftd at %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("weftd at %s: %s: %s", path, name, strings.TrimSpace(string(msg)))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s answer from %s: %w", name, path, err)
	}
	return nil
}
