package main

import (
	"strings"
	"testing"
	"time"
)

func TestNetpolFlags(t *testing.T) {
	base := []string{"--name", "n1", "--underlay-addr", "192.0.2.11", "--pod-cidr", "10.244.1.0/24"}
	c, err := parseFlags(base)
	if err != nil {
		t.Fatal(err)
	}
	if c.NetworkPolicy || c.NetworkPolicyResync != 30*time.Second {
		t.Errorf("defaults: --network-policy %v, resync %s; want off, 30s", c.NetworkPolicy, c.NetworkPolicyResync)
	}
	if c, err := parseFlags([]string{"--name", "n1", "--kubeconfig", "/k", "--network-policy"}); err != nil || !c.NetworkPolicy {
		t.Errorf("--network-policy with --kubeconfig: %v", err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(base, "--network-policy"), "--network-policy needs Kubernetes mode"},
		{append(base, "--network-policy-resync", "0s"), "--network-policy-resync 0s"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
