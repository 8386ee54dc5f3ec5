package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/weftnet/weft/ipam/diskfile"
)

// NodeStateFile is the name of the hand-off file inside weftd's run dir.
const NodeStateFile = "node.json"

// NodeState is what weftd tells weft-cni about its node: written by weftd
// once the gateway address sits on weft0, read by every plugin call. It lives
// in the run dir (tmpfs), so pods can still be wired while weftd restarts.
//
//	{"nodeName":"n1","podCIDRs":["10.244.1.0/24"],"gateway":"10.244.1.1",
//	 "mtu":1450,"clusterCIDR":"10.244.0.0/16"}
type NodeState struct {
	NodeName string `json:"nodeName"`
	// PodCIDRs are the node's pod prefixes, at most one per family.
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	// Gateway is the first host of the pod CIDR; weftd puts it on weft0 and
	// every pod routes through it.
	Gateway netip.Addr `json:"gateway"`
	// MTU is the pod MTU: underlay MTU minus the transport's overhead.
	MTU         int          `json:"mtu"`
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
}

// Validate reports whether st is usable for wiring pods.
func (st NodeState) Validate() error {
	if len(st.PodCIDRs) == 0 {
		return errors.New("no pod CIDRs")
	}
	for _, p := range st.PodCIDRs {
		if !p.IsValid() {
			return errors.New("invalid pod CIDR")
		}
		if p != p.Masked() {
			return fmt.Errorf("pod CIDR %v has host bits set", p)
		}
		if st.ClusterCIDR.IsValid() && !(st.ClusterCIDR.Contains(p.Addr()) && st.ClusterCIDR.Bits() <= p.Bits()) {
			return fmt.Errorf("pod CIDR %v outside cluster CIDR %v", p, st.ClusterCIDR)
		}
	}
	if !st.Gateway.IsValid() {
		return errors.New("no gateway")
	}
	inside := false
	for _, p := range st.PodCIDRs {
		inside = inside || p.Contains(st.Gateway)
	}
	if !inside {
		return fmt.Errorf("gateway %v outside pod CIDRs %v", st.Gateway, st.PodCIDRs)
	}
	// 68 is the IPv4 minimum (RFC 791); a veth accepts up to 65535.
	if st.MTU < 68 || st.MTU > 65535 {
		return fmt.Errorf("mtu %d out of range [68, 65535]", st.MTU)
	}
	return nil
}

// WriteNodeState validates st and writes it to runDir/node.json
// crash-safely (diskfile.Write), so a plugin never reads half a file.
func WriteNodeState(runDir string, st NodeState) error {
	if err := st.Validate(); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	// World-readable: it holds nothing secret.
	if err := diskfile.Write(filepath.Join(runDir, NodeStateFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	return nil
}

// ReadNodeState reads and validates runDir/node.json. A missing file yields
// an error matching os.ErrNotExist: weftd has not started (yet).
func ReadNodeState(runDir string) (NodeState, error) {
	path := filepath.Join(runDir, NodeStateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return NodeState{}, fmt.Errorf("read node state: %w", err)
	}
	var st NodeState
	if err := json.Unmarshal(b, &st); err != nil {
		return NodeState{}, fmt.Errorf("decode %s: %w", path, err)
	}
	if err := st.Validate(); err != nil {
		return NodeState{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}
