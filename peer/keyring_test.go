package peer

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustKey(t *testing.T) []byte {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKeyFile(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	keys, err := ParseKeyFile(FormatKeyFile([][]byte{a, b}))
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0], a) || !bytes.Equal(keys[1], b) {
		t.Fatalf("round trip: %v, %v", keys, err)
	}
	keys, err = ParseKeyFile([]byte("\n# comment\n  " + EncodeKey(b) + "  \n" + EncodeKey(a) + "\n" + EncodeKey(b) + "\n"))
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0], b) {
		t.Fatalf("comments, spaces, duplicates: %v, %v", keys, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"", "no key"},
		{"# only a comment\n", "no key"},
		{"not base64!\n", "line 1: gossip key: not base64"},
		{EncodeKey(a) + "\n" + EncodeKey([]byte("short")) + "\n", "line 2"},
	} {
		if _, err := ParseKeyFile([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseKeyFile(%q) = %v, want %q", tc.in, err, tc.want)
		}
	}
	if KeyID(a) == KeyID(b) || len(KeyID(a)) != 8 || strings.Contains(EncodeKey(a), KeyID(a)) {
		t.Errorf("KeyID: %s %s", KeyID(a), KeyID(b))
	}
}

func startKeyed(t *testing.T, i int, keys [][]byte, seeds ...string) *Membership {
	t.Helper()
	cfg := fastConfig(t, fmt.Sprintf("n%d", i), seeds...)
	cfg.Keys = keys
	m, err := Join(cfg, nodeRecord(i))
	if err != nil {
		t.Fatalf("Join n%d: %v", i, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestKeyRotation rotates the gossip key of a live three-node cluster in
// the documented three steps and checks after each one that nobody was
// lost, that membership kept flowing (a new record still spreads), and at
// the end that the old key no longer gets anyone in.
func TestKeyRotation(t *testing.T) {
	old, next := mustKey(t), mustKey(t)
	n1 := startKeyed(t, 1, [][]byte{old})
	seed := n1.GossipAddr().String()
	nodes := []*Membership{n1, startKeyed(t, 2, [][]byte{old}, seed), startKeyed(t, 3, [][]byte{old}, seed)}
	all := func(m *Membership) []string {
		var out []string
		for _, o := range nodes {
			if o != m {
				out = append(out, o.Self().Name)
			}
		}
		return out
	}
	for _, m := range nodes {
		waitUpdate(t, m, "converged", hasExactly(all(m)...))
	}
	if !n1.Encrypted() {
		t.Fatal("not encrypted")
	}
	for step, want := range [][][]byte{{old, next}, {next, old}, {next}} {
		for _, m := range nodes {
			if _, err := m.SetKeys(want); err != nil {
				t.Fatalf("step %d: %v", step+1, err)
			}
		}
		// A record change must still reach everyone under the new keys.
		r := n1.Self()
		r.Site = fmt.Sprintf("step%d", step+1)
		if err := n1.UpdateSelf(r, time.Second); err != nil {
			t.Fatal(err)
		}
		for _, m := range nodes[1:] {
			waitUpdate(t, m, fmt.Sprintf("step %d", step+1), func(ps []Peer) bool {
				return hasExactly(all(m)...)(ps) && slices.ContainsFunc(ps, func(p Peer) bool { return p.Record.Name == "n1" && p.Record.Site == r.Site })
			})
		}
		// Nobody was declared dead along the way.
		for _, m := range nodes {
			if got := names(m.Peers()); slices.ContainsFunc(got, func(s string) bool { return !strings.HasSuffix(s, "/alive") }) {
				t.Fatalf("step %d: %s sees %v", step+1, m.Self().Name, got)
			}
		}
	}
	keys, _ := nodes[1].Keys()
	if len(keys) != 1 || !bytes.Equal(keys[0], next) {
		t.Fatalf("final keyring %d keys", len(keys))
	}
	// The retired key no longer opens the door.
	intruder := startKeyed(t, 4, [][]byte{old}, seed)
	assertNotAdmitted(t, intruder, nodes)
}

// assertNotAdmitted checks for two seconds that intruder joins nobody and
// no node's view changes.
func assertNotAdmitted(t *testing.T, intruder *Membership, nodes []*Membership) {
	t.Helper()
	before := make([][]string, len(nodes))
	for i, m := range nodes {
		before[i] = names(m.Peers())
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for i, m := range nodes {
			if got := names(m.Peers()); !slices.Equal(got, before[i]) {
				t.Fatalf("%s's view changed: %v → %v", m.Self().Name, before[i], got)
			}
		}
		if got := intruder.Peers(); len(got) != 0 {
			t.Fatalf("intruder sees %v", names(got))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c := intruder.Counters()["seed_join_failures"]; c == 0 {
		t.Errorf("intruder's joins did not fail (counters %v)", intruder.Counters())
	}
}

func TestWrongOrNoKeyNotAdmitted(t *testing.T) {
	key := mustKey(t)
	n1 := startKeyed(t, 1, [][]byte{key})
	seed := n1.GossipAddr().String()
	n2 := startKeyed(t, 2, [][]byte{key}, seed)
	waitUpdate(t, n1, "n2", hasExactly("n2"))
	waitUpdate(t, n2, "n1", hasExactly("n1"))
	t.Run("wrong key", func(t *testing.T) {
		assertNotAdmitted(t, startKeyed(t, 3, [][]byte{mustKey(t)}, seed), []*Membership{n1, n2})
	})
	t.Run("no key", func(t *testing.T) {
		assertNotAdmitted(t, startKeyed(t, 4, nil, seed), []*Membership{n1, n2})
	})
}

func TestKeyringOps(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	m := startKeyed(t, 1, [][]byte{a})
	if err := m.UseKey(b); err == nil {
		t.Error("UseKey of a key not installed succeeded")
	}
	if err := m.AddKey(b); err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveKey(a); err == nil {
		t.Error("removing the primary key succeeded")
	}
	if err := m.UseKey(b); err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveKey(a); err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveKey(a); err == nil {
		t.Error("removing an unknown key succeeded")
	}
	if keys, _ := m.Keys(); len(keys) != 1 || !bytes.Equal(keys[0], b) {
		t.Fatalf("keys %v", keys)
	}
	if changed, err := m.SetKeys([][]byte{b}); changed || err != nil {
		t.Fatalf("no-op SetKeys: %v %v", changed, err)
	}
	if _, err := m.SetKeys(nil); err == nil {
		t.Error("SetKeys(nil) succeeded")
	}
	plain := startNode(t, 2)
	if _, err := plain.Keys(); !errors.Is(err, ErrNoKeyring) {
		t.Errorf("Keys without encryption: %v", err)
	}
	if _, err := Join(func() Config { c := fastConfig(t, "n3"); c.Keys = [][]byte{[]byte("short")}; return c }(), nodeRecord(3)); err == nil {
		t.Error("Join with a bad key succeeded")
	}
}
