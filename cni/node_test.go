package cni

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func testNode() NodeState {
	return NodeState{
		NodeName:    "n1",
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Gateway:     netip.MustParseAddr("10.244.1.1"),
		MTU:         1450,
		ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"),
	}
}

func TestNodeStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	st := testNode()
	if err := WriteNodeState(dir, st); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "node.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The wire shape is the contract with weftd's other readers.
	want := `{"nodeName":"n1","podCIDRs":["10.244.1.0/24"],"gateway":"10.244.1.1","mtu":1450,"clusterCIDR":"10.244.0.0/16"}`
	if strings.TrimSpace(string(b)) != want {
		t.Fatalf("node.json = %s\nwant        %s", b, want)
	}
	got, err := ReadNodeState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("read %+v, want %+v", got, st)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	// Overwrite in place.
	st.MTU = 1420
	if err := WriteNodeState(dir, st); err != nil {
		t.Fatal(err)
	}
	if got, _ := ReadNodeState(dir); got.MTU != 1420 {
		t.Fatalf("rewrite not seen: %+v", got)
	}
}

func TestReadNodeStateMissing(t *testing.T) {
	if _, err := ReadNodeState(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want os.ErrNotExist", err)
	}
}

func TestNodeStateInvalid(t *testing.T) {
	for name, mut := range map[string]func(*NodeState){
		"no cidrs":        func(s *NodeState) { s.PodCIDRs = nil },
		"host bits":       func(s *NodeState) { s.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.5/24")} },
		"outside cluster": func(s *NodeState) { s.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.9.1.0/24")} },
		"cidr wider":      func(s *NodeState) { s.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} },
		"no gateway":      func(s *NodeState) { s.Gateway = netip.Addr{} },
		"gateway outside": func(s *NodeState) { s.Gateway = netip.MustParseAddr("10.244.2.1") },
		"mtu zero":        func(s *NodeState) { s.MTU = 0 },
		"mtu huge":        func(s *NodeState) { s.MTU = 70000 },
	} {
		t.Run(name, func(t *testing.T) {
			st := testNode()
			mut(&st)
			if err := st.Validate(); err == nil {
				t.Fatal("Validate accepted it")
			}
			if err := WriteNodeState(t.TempDir(), st); err == nil {
				t.Fatal("WriteNodeState accepted it")
			}
		})
	}
	// Without a cluster CIDR the containment check is skipped.
	st := testNode()
	st.ClusterCIDR = netip.Prefix{}
	if err := st.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestReadNodeStateBad(t *testing.T) {
	for name, body := range map[string]string{
		"garbage":   "{",
		"bad cidr":  `{"podCIDRs":["10.244.1.0/99"],"gateway":"10.244.1.1","mtu":1450}`,
		"bad gw":    `{"podCIDRs":["10.244.1.0/24"],"gateway":"x","mtu":1450}`,
		"invalid":   `{"podCIDRs":["10.244.1.0/24"],"gateway":"10.244.1.1","mtu":1}`,
		"empty obj": `{}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "node.json"), []byte(body), 0o644)
			if _, err := ReadNodeState(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				t.Fatalf("err = %v, want a decode/validation error", err)
			}
		})
	}
}

// testDualNode is testNode with an IPv6 pod CIDR (fd00:10:244::/56, the
// ULA range the lab's dual-stack option uses).
func testDualNode() NodeState {
	st := testNode()
	st.PodCIDRs = append(st.PodCIDRs, netip.MustParsePrefix("fd00:10:244:1::/64"))
	st.Gateway6 = netip.MustParseAddr("fd00:10:244:1::1")
	st.ClusterCIDR6 = netip.MustParsePrefix("fd00:10:244::/56")
	return st
}

func TestNodeStateDualStack(t *testing.T) {
	dir := t.TempDir()
	st := testDualNode()
	if err := WriteNodeState(dir, st); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "node.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"nodeName":"n1","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"],"gateway":"10.244.1.1","mtu":1450,"clusterCIDR":"10.244.0.0/16","gateway6":"fd00:10:244:1::1","clusterCIDR6":"fd00:10:244::/56"}`
	if strings.TrimSpace(string(b)) != want {
		t.Fatalf("node.json = %s\nwant        %s", b, want)
	}
	got, err := ReadNodeState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("read %+v, want %+v", got, st)
	}
	if p, ok := got.CIDROf(true); !ok || p != st.PodCIDRs[1] || got.GatewayOf(true) != st.Gateway6 {
		t.Fatalf("IPv6 half: %v %v %v", p, ok, got.GatewayOf(true))
	}
	for name, mut := range map[string]func(*NodeState){
		"no gateway6":           func(s *NodeState) { s.Gateway6 = netip.Addr{} },
		"gateway6 outside":      func(s *NodeState) { s.Gateway6 = netip.MustParseAddr("fd00:10:244:2::1") },
		"outside cluster6":      func(s *NodeState) { s.PodCIDRs[1] = netip.MustParsePrefix("fd00:99::/64") },
		"two IPv6 CIDRs":        func(s *NodeState) { s.PodCIDRs = append(s.PodCIDRs, netip.MustParsePrefix("fd00:10:244:2::/64")) },
		"gateway6 without v6":   func(s *NodeState) { s.PodCIDRs = s.PodCIDRs[:1] },
		"IPv6 only, no IPv4 gw": func(s *NodeState) { s.PodCIDRs = s.PodCIDRs[1:]; s.Gateway = netip.Addr{} },
	} {
		t.Run(name, func(t *testing.T) {
			st := testDualNode()
			st.PodCIDRs = append([]netip.Prefix(nil), st.PodCIDRs...)
			mut(&st)
			if err := st.Validate(); err == nil {
				t.Fatal("Validate accepted it")
			}
		})
	}
}
