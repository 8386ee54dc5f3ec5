package main

// Warm start: the last peer table this node applied is kept in the run
// directory (peers.snapshot), so that a restarted weftd forwards at once,
// before gossip has joined, and gossip then replaces it (pipeline.route).
// The snapshot holds the admitted records in the gossip codec
// (peer.Record, versioned and fuzzed), and a starting weftd decodes,
// validates and admits them as it does gossiped ones. A snapshot older
// than --warm-start-max-age is ignored: peers may have moved by then, and
// a cold start only waits for one gossip round trip.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/ipam/diskfile"
	"github.com/weftnet/weft/peer"
)

const (
	warmFile    = "peers.snapshot"
	warmVersion = 1
)

// warmSnapshot is peers.snapshot.
type warmSnapshot struct {
	Version int       `json:"version"`
	Node    string    `json:"node"`
	Saved   time.Time `json:"saved"`
	Records [][]byte  `json:"records"` // peer.Record.MarshalBinary of each admitted peer
}

// saveWarm writes the admitted peers of one snapshot for the next start.
func saveWarm(c config, admitted []peer.Peer, now time.Time) error {
	records, err := encodeRecords(admitted)
	if err != nil {
		return fmt.Errorf("warm snapshot: %w", err)
	}
	b, err := json.Marshal(warmSnapshot{Version: warmVersion, Node: c.Name, Saved: now.UTC(), Records: records})
	if err != nil {
		return err
	}
	return diskfile.Write(filepath.Join(c.RunDir, warmFile), b, 0o600)
}

// loadWarm reads the snapshot a previous weftd left. It returns no peers
// and no error when there is none; an error when it is unreadable, of
// another node, another version, older than maxAge, or holds a record that
// does not decode and validate (the whole snapshot is then unused).
func loadWarm(c config, maxAge time.Duration, now time.Time) ([]peer.Peer, error) {
	b, err := os.ReadFile(filepath.Join(c.RunDir, warmFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("warm snapshot: %w", err)
	}
	var s warmSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("warm snapshot: %w", err)
	}
	switch age := now.Sub(s.Saved); {
	case s.Version != warmVersion:
		return nil, fmt.Errorf("warm snapshot: version %d, want %d", s.Version, warmVersion)
	case s.Node != c.Name:
		return nil, fmt.Errorf("warm snapshot: of node %q, not %q", s.Node, c.Name)
	case age > maxAge || age < -time.Minute:
		return nil, fmt.Errorf("warm snapshot: saved %s ago, beyond --warm-start-max-age %s", age.Round(time.Second), maxAge)
	}
	return decodeRecords(s.Records, s.Saved)
}

// decodeRecords decodes and validates peer records in the gossip codec, as
// gossiped ones are: one bad record refuses them all.
func decodeRecords(records [][]byte, seen time.Time) ([]peer.Peer, error) {
	peers := make([]peer.Peer, 0, len(records))
	for i, rb := range records {
		var r peer.Record
		if err := r.UnmarshalBinary(rb); err != nil {
			return nil, fmt.Errorf("warm snapshot: record %d: %w", i, err)
		}
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("warm snapshot: record %d (%s): %w", i, r.Name, err)
		}
		peers = append(peers, peer.Peer{Record: r, State: peer.StateAlive, LastSeen: seen})
	}
	return peers, nil
}

// encodeRecords is decodeRecords' inverse for the live peers of a table.
func encodeRecords(admitted []peer.Peer) ([][]byte, error) {
	var out [][]byte
	for _, p := range admitted {
		if p.State != peer.StateAlive {
			continue
		}
		b, err := p.Record.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("peer record %s: %w", p.Record.Name, err)
		}
		out = append(out, b)
	}
	return out, nil
}
