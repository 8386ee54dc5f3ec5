package cni

// Failure modes the spec names, through the real binary with a raw exec
// (no libcni in between): CNI error JSON on stdout with the spec's code, a
// non-zero exit, and nothing left behind.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// exec runs weft-cni in the node netns with exactly env (plus PATH) and
// stdin, and returns its decoded error (nil on exit 0) and stdout.
func (l *lab) exec(env map[string]string, stdin string) (*types.Error, []byte) {
	l.t.Helper()
	var stdout, stderr bytes.Buffer
	var runErr error
	err := l.inNode(func() error {
		cmd := exec.Command(filepath.Join(l.bin, "weft-cni"))
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Stdin = bytes.NewBufferString(stdin)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr = cmd.Run()
		return nil
	})
	if err != nil {
		l.t.Fatal(err)
	}
	if runErr == nil {
		return nil, stdout.Bytes()
	}
	var ee *exec.ExitError
	if !errors.As(runErr, &ee) || ee.ExitCode() == 0 {
		l.t.Fatalf("weft-cni: %v (stderr %s)", runErr, stderr.String())
	}
	var ce types.Error
	if err := json.Unmarshal(stdout.Bytes(), &ce); err != nil || ce.Code == 0 || ce.Msg == "" {
		l.t.Fatalf("exit %d but stdout is not CNI error JSON: %q (%v)", ee.ExitCode(), stdout.String(), err)
	}
	return &ce, stdout.Bytes()
}

// assertClean fails unless the node has no weft veth and no allocation
// beyond keep, and the pod netns holds only lo.
func (l *lab) assertClean(pod string, keep int) {
	l.t.Helper()
	if links := l.weftLinks(); len(links) != keep {
		l.t.Fatalf("weft links left: %v", links)
	}
	held, err := l.store().Allocations()
	if err != nil {
		l.t.Fatal(err)
	}
	if len(held) != keep {
		l.t.Fatalf("allocations left: %v", held)
	}
	if got := podLinks(l.t, pod); !slices.Equal(got, []string{"lo"}) {
		l.t.Fatalf("pod links: %v", got)
	}
}

func TestErrorsRealBinary(t *testing.T) {
	l := newLab(t, "1.1.0")
	l.writeNode()
	pod := addNetns(t, l.suffix, "p1")
	good := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":%q,"dataDir":%q}`, l.runDir, l.dataDir)
	env := func(cmd string, drop ...string) map[string]string {
		m := map[string]string{
			"CNI_COMMAND": cmd, "CNI_CONTAINERID": pod, "CNI_NETNS": nsPath(pod),
			"CNI_IFNAME": "eth0", "CNI_PATH": l.bin,
		}
		for _, k := range drop {
			delete(m, k)
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		stdin string
		code  uint
	}{
		{"truncated stdin", env("ADD"), `{"cniVersion":"1.1.0","name":`, types.ErrDecodingFailure},
		{"not json", env("ADD"), `cniVersion=1.1.0`, types.ErrDecodingFailure},
		{"empty stdin", env("ADD"), ``, types.ErrDecodingFailure},
		{"runDir wrong type", env("ADD"), fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":5,"dataDir":%q}`, l.dataDir), types.ErrDecodingFailure},
		{"dataDir wrong type", env("ADD"), fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":%q,"dataDir":["x"]}`, l.runDir), types.ErrDecodingFailure},
		{"cniVersion wrong type", env("ADD"), `{"cniVersion":1.1,"name":"weft","type":"weft-cni"}`, types.ErrDecodingFailure},
		{"relative dataDir", env("ADD"), fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":%q,"dataDir":"ipam"}`, l.runDir), types.ErrInvalidNetworkConfig},
		{"missing name", env("ADD"), `{"cniVersion":"1.1.0","type":"weft-cni"}`, types.ErrInvalidNetworkConfig},
		{"unsupported version", env("ADD"), fmt.Sprintf(`{"cniVersion":"0.2.0","name":"weft","type":"weft-cni","runDir":%q,"dataDir":%q}`, l.runDir, l.dataDir), types.ErrIncompatibleCNIVersion},
		{"no CNI_CONTAINERID", env("ADD", "CNI_CONTAINERID"), good, types.ErrInvalidEnvironmentVariables},
		{"no CNI_NETNS", env("ADD", "CNI_NETNS"), good, types.ErrInvalidEnvironmentVariables},
		{"no CNI_IFNAME", env("ADD", "CNI_IFNAME"), good, types.ErrInvalidEnvironmentVariables},
		{"no CNI_PATH", env("ADD", "CNI_PATH"), good, types.ErrInvalidEnvironmentVariables},
		{"unknown CNI_COMMAND", env("FROB"), good, types.ErrInvalidEnvironmentVariables},
		{"DEL without CNI_CONTAINERID", env("DEL", "CNI_CONTAINERID"), good, types.ErrInvalidEnvironmentVariables},
		{"CHECK without CNI_NETNS", env("CHECK", "CNI_NETNS"), good, types.ErrInvalidEnvironmentVariables},
		{"bad CNI_IFNAME", func() map[string]string { m := env("ADD"); m["CNI_IFNAME"] = "eth/0"; return m }(), good, types.ErrInvalidEnvironmentVariables},
		{"nonexistent netns", func() map[string]string {
			m := env("ADD")
			m["CNI_NETNS"] = "/run/netns/wcni-" + l.suffix + "-missing"
			return m
		}(), good, types.ErrInvalidNetNS},
		{"netns path not a netns", func() map[string]string { m := env("ADD"); m["CNI_NETNS"] = l.dataDir; return m }(), good, types.ErrInvalidNetNS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce, out := l.exec(tc.env, tc.stdin)
			if ce == nil {
				t.Fatalf("exit 0, stdout %s", out)
			}
			if ce.Code != tc.code {
				t.Fatalf("code %d (%s), want %d", ce.Code, out, tc.code)
			}
			l.assertClean(pod, 0)
		})
	}

	// Unknown fields of any type are ignored, as the spec asks.
	ce, out := l.exec(env("ADD"), fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":%q,"dataDir":%q,"frobnicate":{"a":[1]},"mtu":"big"}`, l.runDir, l.dataDir))
	if ce != nil {
		t.Fatalf("ADD with unknown fields: %s", out)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct{ Address string }
	}
	if err := json.Unmarshal(out, &res); err != nil || res.CNIVersion != "1.1.0" || len(res.IPs) != 1 {
		t.Fatalf("ADD result %s (%v)", out, err)
	}
	if ce, out := l.exec(env("DEL"), good); ce != nil {
		t.Fatalf("DEL: %s", out)
	}
	l.assertClean(pod, 0)
}

// TestErrorExhausted fills a /30 (one usable address besides the gateway)
// and expects the next ADD to fail with "try again later", leaving nothing.
func TestErrorExhausted(t *testing.T) {
	l := newLab(t, "1.1.0")
	st := NodeState{
		NodeName: "n7", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/30")},
		Gateway: netip.MustParseAddr("10.244.7.1"), MTU: 1450, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"),
	}
	if err := WriteNodeState(l.runDir, st); err != nil {
		t.Fatal(err)
	}
	p1 := addNetns(t, l.suffix, "p1")
	p2 := addNetns(t, l.suffix, "p2")
	if _, err := l.add(p1); err != nil {
		t.Fatalf("ADD p1: %v", err)
	}
	if err := l.status(); cniCode(err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS on a full range: %v, want code 50", err)
	}
	env := map[string]string{
		"CNI_COMMAND": "ADD", "CNI_CONTAINERID": p2, "CNI_NETNS": nsPath(p2), "CNI_IFNAME": "eth0", "CNI_PATH": l.bin,
	}
	ce, out := l.exec(env, fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","runDir":%q,"dataDir":%q}`, l.runDir, l.dataDir))
	if ce == nil || ce.Code != types.ErrTryAgainLater {
		t.Fatalf("ADD on a full range: %s, want code 11", out)
	}
	l.assertClean(p2, 1)
	if err := l.del(p1); err != nil {
		t.Fatal(err)
	}
	if err := l.status(); err != nil {
		t.Fatalf("STATUS after a pod left: %v", err)
	}
}
