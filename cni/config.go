// Package cni is the weft-cni plugin: it wires one pod to the node with a
// point-to-point veth (Calico/ptp style) and hands out its address from the
// node's pod CIDR.
//
// Pod side: <ifname> with <podIP>/32, route <gateway>/32 scope link, default
// via <gateway>. Host side: veth HostVethName(containerID, ifname), up,
// proxy_arp=1, route <podIP>/32 scope link. The gateway address lives on
// weft0 (weftd puts it there), so the host answers the pod's ARP for it and
// routes everything the pod sends.
//
// The plugin reads its node facts from node.json (see NodeState), never from
// weftd's socket, so pods can be wired and unwired while weftd restarts.
package cni

import (
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
)

// Config is the plugin's network configuration, read from stdin.
// Unknown fields are ignored, as the CNI spec asks.
//
// Config embeds types.PluginConf, whose pointer MarshalJSON would be promoted
// and drop weft's own fields: marshal a Config only by value.
type Config struct {
	types.PluginConf

	// RunDir holds node.json, written by weftd.
	RunDir string `json:"runDir,omitempty"`
	// DataDir holds the IP allocations; it must survive reboots of the
	// plugin but belongs to this node only.
	DataDir string `json:"dataDir,omitempty"`
}

// DefaultConfig returns the configuration used for fields the network
// config leaves out: the run dir weftd uses by default, and allocations under
// weft's state dir, which survives restarts.
func DefaultConfig() Config {
	return Config{
		RunDir:  "/run/weft",
		DataDir: "/var/lib/weft/ipam",
	}
}

// ParseConfig decodes the network configuration on the plugin's stdin over
// DefaultConfig. Errors are *types.Error, ready for skel to print.
func ParseConfig(stdin []byte) (Config, error) {
	c := DefaultConfig()
	if err := json.Unmarshal(stdin, &c); err != nil {
		return Config{}, types.NewError(types.ErrDecodingFailure, "weft-cni: parse network config", err.Error())
	}
	def := DefaultConfig()
	if c.RunDir == "" {
		c.RunDir = def.RunDir
	}
	if c.DataDir == "" {
		c.DataDir = def.DataDir
	}
	for _, d := range []struct{ field, path string }{{"runDir", c.RunDir}, {"dataDir", c.DataDir}} {
		if !filepath.IsAbs(d.path) {
			return Config{}, types.NewError(types.ErrInvalidNetworkConfig, "weft-cni: invalid network config",
				fmt.Sprintf("%s %q is not an absolute path", d.field, d.path))
		}
	}
	return c, nil
}

// HostVethName is the host-side veth of an attachment: "weft" and 11 hex
// digits of sha1(containerID+ifName), 15 bytes, the kernel's IFNAMSIZ-1.
// Being derived from the attachment, DEL finds it without any saved state.
func HostVethName(containerID, ifName string) string {
	sum := sha1.Sum([]byte(containerID + ifName))
	return "weft" + hex.EncodeToString(sum[:])[:11]
}
