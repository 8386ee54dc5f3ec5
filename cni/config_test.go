package cni

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		code    uint // 0: must succeed
		runDir  string
		dataDir string
	}{
		{name: "defaults", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`,
			runDir: "/run/weft", dataDir: "/var/lib/weft/ipam"},
		{name: "explicit", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","runDir":"/x/run","dataDir":"/x/ipam"}`,
			runDir: "/x/run", dataDir: "/x/ipam"},
		{name: "empty strings mean default", in: `{"name":"weft","runDir":"","dataDir":""}`,
			runDir: "/run/weft", dataDir: "/var/lib/weft/ipam"},
		{name: "unknown fields tolerated", in: `{"name":"weft","runtimeConfig":{"x":1},"somethingNew":[1,2],"ipam":{}}`,
			runDir: "/run/weft", dataDir: "/var/lib/weft/ipam"},
		{name: "prevResult kept raw", in: `{"name":"weft","prevResult":{"cniVersion":"1.0.0","ips":[]}}`,
			runDir: "/run/weft", dataDir: "/var/lib/weft/ipam"},
		{name: "truncated", in: `{"name":"weft",`, code: types.ErrDecodingFailure},
		{name: "not json", in: `runDir=/x`, code: types.ErrDecodingFailure},
		{name: "empty", in: ``, code: types.ErrDecodingFailure},
		{name: "array", in: `[]`, code: types.ErrDecodingFailure},
		{name: "wrong type", in: `{"runDir":7}`, code: types.ErrDecodingFailure},
		{name: "relative runDir", in: `{"runDir":"run"}`, code: types.ErrInvalidNetworkConfig},
		{name: "relative dataDir", in: `{"dataDir":"../ipam"}`, code: types.ErrInvalidNetworkConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.in))
			if tc.code != 0 {
				var ce *types.Error
				if !errors.As(err, &ce) {
					t.Fatalf("err = %v, want *types.Error code %d", err, tc.code)
				}
				if ce.Code != tc.code {
					t.Fatalf("code %d (%v), want %d", ce.Code, ce, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.RunDir != tc.runDir || c.DataDir != tc.dataDir {
				t.Fatalf("dirs %q %q, want %q %q", c.RunDir, c.DataDir, tc.runDir, tc.dataDir)
			}
		})
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("c1", "eth0")
	if len(a) != 15 || a[:4] != "weft" {
		t.Fatalf("name %q: want weft + 11 hex, 15 bytes", a)
	}
	// sha1("c1eth0") starts 0924fa252d6: pins the derivation, which
	// DEL and the lab rely on to find the veth without saved state.
	if a != "weft0924fa252d6" {
		t.Fatalf("HostVethName(c1, eth0) = %q", a)
	}
	if a == HostVethName("c2", "eth0") || a == HostVethName("c1", "eth1") {
		t.Fatal("different attachments share a name")
	}
}
