package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/peer"
)

func warmRecord(name string, n byte) peer.Record {
	return peer.Record{
		Name:       name,
		Underlay:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, 10 + n}), 4789),
		PodCIDRs:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, n, 0}), 24)},
		VTEPMAC:    [6]byte{0xaa, 0, 0, 0, 0, n},
		Caps:       peer.CapVXLAN,
		Generation: 1,
	}
}

// TestWarmSnapshotRoundTrip: the admitted live peers come back as they were
// saved; dead ones are not kept.
func TestWarmSnapshotRoundTrip(t *testing.T) {
	c := config{Name: "n1", RunDir: t.TempDir()}
	now := time.Now()
	saved := []peer.Peer{
		{Record: warmRecord("n2", 2), State: peer.StateAlive},
		{Record: warmRecord("n3", 3), State: peer.StateAlive},
		{Record: warmRecord("n4", 4), State: peer.StateDead},
	}
	if err := saveWarm(c, saved, now); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(c.RunDir, warmFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v %v", st, err)
	}
	got, err := loadWarm(c, time.Minute, now.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Record.Equal(saved[0].Record) || !got[1].Record.Equal(saved[1].Record) || got[0].State != peer.StateAlive {
		t.Fatalf("loaded %+v", got)
	}
}

// TestWarmSnapshotRefused: no file is a cold start without error; a
// snapshot too old, of another node, of another version, unparsable, or
// with one record that does not decode is refused whole.
func TestWarmSnapshotRefused(t *testing.T) {
	c := config{Name: "n1", RunDir: t.TempDir()}
	now := time.Now()
	if got, err := loadWarm(c, time.Minute, now); err != nil || got != nil {
		t.Fatalf("no snapshot: %v, %v", got, err)
	}
	good, _ := json.Marshal(warmSnapshot{Version: warmVersion, Node: "n1", Saved: now, Records: [][]byte{mustMarshal(t, warmRecord("n2", 2))}})
	for _, tc := range []struct {
		name string
		file []byte
		at   time.Time
		want string
	}{
		{"too old", good, now.Add(2 * time.Minute), "beyond --warm-start-max-age"},
		{"from the future", good, now.Add(-2 * time.Minute), "beyond --warm-start-max-age"},
		{"other node", mustJSON(t, warmSnapshot{Version: warmVersion, Node: "n9", Saved: now}), now, "of node"},
		{"other version", mustJSON(t, warmSnapshot{Version: 99, Node: "n1", Saved: now}), now, "version 99"},
		{"not json", []byte("{"), now, "warm snapshot"},
		{"bad record", mustJSON(t, warmSnapshot{Version: warmVersion, Node: "n1", Saved: now, Records: [][]byte{{1, 2, 3}}}), now, "record 0"},
	} {
		if err := os.WriteFile(filepath.Join(c.RunDir, warmFile), tc.file, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := loadWarm(c, time.Minute, tc.at)
		if err == nil || got != nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, %v; want an error with %q", tc.name, got, err, tc.want)
		}
	}
}

func mustMarshal(t *testing.T, r peer.Record) []byte {
	t.Helper()
	b, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
