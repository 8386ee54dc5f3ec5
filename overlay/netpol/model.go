// Package netpol enforces Kubernetes NetworkPolicy on one node.
//
// Design. The model (this file) is weft's own copy of what a
// networking.k8s.io/v1 NetworkPolicy says, with the pods and namespaces it
// refers to; netpol/kube fills it from informers, so nothing here imports
// client-go. Compile (compile.go) turns a whole State into a Ruleset for
// this node: named address sets and, per policy and direction, an ordered
// list of allow matches. The Ruleset knows nothing of netlink; nft_linux.go
// writes it into the nftables table inet weft-netpol in one atomic batch,
// replacing what is there (declarative, idempotent, so the periodic
// resync of Controller repairs drift). A policy is enforced on the node of
// the pods it selects: ingress where the destination pod runs, egress
// where the source pod runs, so every pod packet is checked once per
// direction, whichever node its peer is on.
//
// Where packets are checked (nft_linux.go): the forward hook sees every
// pod packet that crosses this node (veth to veth, veth to weft0, weft0 to
// veth, after kube-proxy's DNAT), the input hook sees pod to node. Packets
// the node itself sends to its pods (kubelet probes) go through output,
// which weft does not filter, as upstream requires. Replies of allowed
// connections pass by conntrack (ct state established,related).
package netpol

import (
	"fmt"
	"net/netip"
	"slices"
)

// Proto is an IP protocol a policy port names.
type Proto uint8

// The protocols of NetworkPolicyPort.protocol (IANA numbers).
const (
	TCP  Proto = 6
	UDP  Proto = 17
	SCTP Proto = 132
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ParseProto reads a Kubernetes protocol name; "" is TCP, the API default.
func ParseProto(s string) (Proto, error) {
	switch s {
	case "", "TCP":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "SCTP":
		return SCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: want TCP, UDP or SCTP", s)
}

// State is everything the policies of a cluster depend on: a whole
// snapshot, copied out of the informers' caches.
type State struct {
	Pods       []Pod
	Namespaces []Namespace
	Policies   []Policy
}

// Pod is a pod as policies see it. Pods without an address yet and
// hostNetwork pods (whose address is the node's) are left out by the
// translator: policies neither select nor name them.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	// IPs are the pod's addresses, one per family on a dual-stack
	// cluster (status.podIPs); a policy selects or names all of them.
	IPs   []netip.Addr
	Node  string      // spec.nodeName
	Ports []NamedPort // containers' named ports
}

// NamedPort is a container port with a name.
type NamedPort struct {
	Name  string
	Proto Proto
	Port  uint16
}

// Namespace is a namespace's name and labels (kubernetes.io/metadata.name
// among them, set by the API server).
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Policy is one NetworkPolicy. Ingress and Egress are its policyTypes: a
// pod it selects is isolated in that direction, and allowed only what a
// rule of some policy selecting it allows.
type Policy struct {
	Namespace, Name string
	PodSelector     Selector
	Ingress, Egress bool
	IngressRules    []Rule
	EgressRules     []Rule
}

// Key is the policy's namespace/name.
func (p Policy) Key() string { return p.Namespace + "/" + p.Name }

// Rule is one ingress or egress rule: traffic to (egress) or from
// (ingress) any of Peers, on any of Ports. A nil Peers or Ports means all
// (the API's empty or missing list).
type Rule struct {
	Peers []Peer
	Ports []Port
}

// Peer is one NetworkPolicyPeer: pods (Pods, in the policy's namespace
// unless Namespaces is set), pods of namespaces, both, or a CIDR block.
type Peer struct {
	Pods       *Selector
	Namespaces *Selector
	Block      *IPBlock
}

// IPBlock is a CIDR minus its exceptions. It matches any address in it,
// pod addresses included.
type IPBlock struct {
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// Port is one NetworkPolicyPort: Proto, and a port number (with EndPort a
// range Port..EndPort), a container port name (Name), or neither (every
// port of Proto).
type Port struct {
	Proto   Proto
	Port    uint16
	EndPort uint16
	Name    string
}

// Selector is a label selector: every MatchLabels pair and every
// requirement must hold. The zero Selector matches everything.
type Selector struct {
	MatchLabels map[string]string
	Exprs       []Requirement
}

// Operator is a set-based requirement's operator.
type Operator string

// The operators of metav1.LabelSelectorRequirement.
const (
	In           Operator = "In"
	NotIn        Operator = "NotIn"
	Exists       Operator = "Exists"
	DoesNotExist Operator = "DoesNotExist"
)

// Requirement is one matchExpressions entry.
type Requirement struct {
	Key    string
	Op     Operator
	Values []string
}

// Matches reports whether labels satisfy s.
func (s Selector) Matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.Exprs {
		v, ok := labels[r.Key]
		switch r.Op {
		case In:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case NotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case Exists:
			if !ok {
				return false
			}
		case DoesNotExist:
			if ok {
				return false
			}
		default:
			return false // an unknown operator selects nothing (the translator rejects it first)
		}
	}
	return true
}

// Validate checks what the API server validates too, for States built by
// hand: operators and their values.
func (s Selector) Validate() error {
	for _, r := range s.Exprs {
		switch r.Op {
		case In, NotIn:
			if len(r.Values) == 0 {
				return fmt.Errorf("selector key %q: operator %s needs values", r.Key, r.Op)
			}
		case Exists, DoesNotExist:
			if len(r.Values) != 0 {
				return fmt.Errorf("selector key %q: operator %s takes no values", r.Key, r.Op)
			}
		default:
			return fmt.Errorf("selector key %q: unknown operator %q", r.Key, r.Op)
		}
	}
	return nil
}
