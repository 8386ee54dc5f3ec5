// Package lab builds weft's network-namespace lab: a router namespace that
// joins up to three "sites" (different TEST-NET /24s, no L2 adjacency between
// them), one namespace per node with an underlay veth into its site, one
// weftd per node, and pod namespaces wired through the real weft-cni plugin
// via libcni. Tests, `weftctl demo` and the benchmarks all use it, so the
// topology lives here once.
//
// Layout (prefix "weftlab", 3 nodes, 2 sites):
//
//	weftlab-rtr: br-site1 192.0.2.1/24, br-site2 198.51.100.1/24, ip_forward=1
//	  rtr-n1 ── eth0 weftlab-n1 192.0.2.11/24    pods 10.244.1.0/24
//	  rtr-n2 ── eth0 weftlab-n2 198.51.100.12/24 pods 10.244.2.0/24
//	  rtr-n3 ── eth0 weftlab-n3 192.0.2.13/24    pods 10.244.3.0/24
//	weftlab-n1-p1 ... pod namespaces, wired from inside their node namespace
//
// Every link is created directly inside a namespace, so nothing ever shows up
// in the root namespace, and nothing is routed toward the host's real
// interfaces: the router knows only its connected TEST-NET subnets.
//
// Teardown is by PID and by name: processes survive `ip netns del`, so Down
// and Cleanup kill whatever `ip netns pids` lists before deleting a
// namespace.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/weftnet/weft/ipam/diskfile"
	"github.com/weftnet/weft/overlay"
)

// Version is the lab.json schema version written by this package.
const Version = 1

// ClusterCIDR is the cluster-wide pod range of every lab.
const ClusterCIDR = "10.244.0.0/16"

// ClusterCIDR6 is the IPv6 pod range of a dual-stack lab (Config.DualStack):
// from the unique local range (RFC 4193), node i gets fd00:10:244:i::/64.
const ClusterCIDR6 = "fd00:10:244::/56"

// stateFile is the name of the lab description inside Config.Dir.
const stateFile = "lab.json"

// sites are the underlay subnets, one per site, in site order. Only TEST-NET
// ranges are used so that nothing in a lab can collide with a real network.
var sites = []Site{
	{Name: "site1", Subnet: "192.0.2.0/24", Gateway: "192.0.2.1"},
	{Name: "site2", Subnet: "198.51.100.0/24", Gateway: "198.51.100.1"},
	{Name: "site3", Subnet: "203.0.113.0/24", Gateway: "203.0.113.1"},
}

// sites6 are the underlay subnets of an IPv6-underlay lab (Config.Underlay
// "ipv6"), one /64 per site from the documentation range 2001:db8::/32,
// in the same order and with the same names as sites.
var sites6 = []Site{
	{Name: "site1", Subnet: "2001:db8:1::/64", Gateway: "2001:db8:1::1"},
	{Name: "site2", Subnet: "2001:db8:2::/64", Gateway: "2001:db8:2::1"},
	{Name: "site3", Subnet: "2001:db8:3::/64", Gateway: "2001:db8:3::1"},
}

// Underlay families of a lab (Config.Underlay).
const (
	UnderlayIPv4 = "ipv4"
	UnderlayIPv6 = "ipv6"
	// UnderlayMixed: every site has both subnets (sites and sites6);
	// node i has IPv4 only when i%3 == 1, IPv6 only when i%3 == 2, and
	// both when i%3 == 0 (its IPv4 address first). Nodes of one family
	// reach each other and the dual nodes; an IPv4-only and an IPv6-only
	// node share no family and do not reach each other (weftctl status
	// says so), while gossip still joins them through the dual nodes.
	UnderlayMixed = "mixed"
)

// Config describes the lab to build. Start from DefaultConfig.
type Config struct {
	// Prefix starts the name of every namespace of the lab
	// (<prefix>-rtr, <prefix>-n1, <prefix>-n1-p1). Cleanup removes every
	// namespace named <prefix>-*, so two labs need different prefixes.
	Prefix string
	// Dir holds lab.json and one directory per node (run/, state/,
	// weftd.log, net.d/, ipam/, cni-cache/). Down removes it.
	Dir string
	// BinDir is where the weftd and weft-cni executables are.
	BinDir string
	// Nodes is the number of node namespaces, n1..nN (>= Sites).
	Nodes int
	// Sites is the number of underlay subnets (1..3); node i sits on
	// site ((i-1) % Sites)+1, so consecutive nodes alternate sites.
	Sites int
	// PodsPerNode is how many pods Up makes on each non-external node.
	PodsPerNode int
	// Transport is the weft transport policy every weftd runs with
	// (vxlan, wireguard, wireguard-across-sites); recorded in lab.json.
	Transport string
	// External names nodes (e.g. "n2") that get a namespace and an
	// underlay address but no weftd and no pods: interop peers for tests
	// (a kernel vxlan device, a standalone wireguard-go) live there.
	External []string
	// WeftdArgs are extra flags appended to every weftd command line.
	WeftdArgs []string
	// ClaimCIDRs starts weftd without --pod-cidr, with --node-cidr-size
	// 24: nodes claim their pod CIDRs over gossip (standalone mode), and
	// lab.json's podCIDR stays empty (ask weftd's status).
	ClaimCIDRs bool
	// DualStack gives every node an IPv6 pod CIDR beside the IPv4 one
	// (fd00:10:244:<i>::/64 inside ClusterCIDR6), so every pod gets one
	// address of each family. With ClaimCIDRs weftd claims a /24 and a
	// /64 over gossip instead (--node-cidr-size-ipv6's default).
	DualStack bool
	// Internet adds an "internet" namespace behind the router on
	// 203.0.113.0/24 (so at most 2 sites), host InternetAddr, which has
	// no route to the pod CIDRs: pods reach it only through their node's
	// masquerade.
	Internet bool
	// Underlay is the family of the underlay: "" or "ipv4" (TEST-NET
	// /24s), or "ipv6": every site a /64 of 2001:db8::/32 (sites6) and
	// every node's only underlay address 2001:db8:<site>::<10+i>, so
	// gossip, VXLAN and WireGuard all run over IPv6. Pods are IPv4 (and
	// IPv6 with DualStack) either way. "mixed": see UnderlayMixed. Only
	// with the plain topology and without Internet.
	Underlay string
	// Topology is "" (or "plain"): sites joined by one router, every
	// node reachable at its address; or "nat": three sites behind NAT
	// gateways (TopologyNAT; Nodes and Sites are then fixed).
	Topology string
	// Log receives one line per step of progress; nil discards.
	Log io.Writer
}

// TopologyNAT is the lab across clouds (Config.Topology "nat"):
//
//	weftlab-rtr: br-inet 203.0.113.1/24, the "internet"
//	  weftlab-gwa  wan 203.0.113.2, lan 192.0.2.1/24    cloud-a: 1:1 NAT
//	    n1 192.0.2.11  public 203.0.113.11   pods 10.244.1.0/24
//	    n2 192.0.2.12  public 203.0.113.12   pods 10.244.2.0/24
//	  weftlab-gwb  wan 203.0.113.3, lan 192.0.2.1/24    cloud-b: 1:1 NAT
//	    n3 192.0.2.11  public 203.0.113.21   pods 10.244.3.0/24
//	    n4 192.0.2.12  public 203.0.113.22   pods 10.244.4.0/24
//	    n5 192.0.2.13  no public address     pods 10.244.5.0/24
//	  weftlab-gwp  wan 203.0.113.4, lan 198.51.100.1/24 onprem: masquerade only
//	    n6 198.51.100.11                     pods 10.244.6.0/24
//	    n7 198.51.100.12                     pods 10.244.7.0/24
//
// The two clouds use the same private /24. Each gateway DNATs a node's
// public address to its private one and SNATs it back (a cloud's public
// IP); nodes without one leave through a masquerade that picks a random
// port for each new mapping; the forward chain drops anything from the
// internet that is not a reply or for a public address. The on-premises
// site thus has no inbound path at all, and n5 and n6/n7 are two nodes
// behind NAT in different sites (they reach each other through a relay).
const TopologyNAT = "nat"

// natSite is one site of TopologyNAT.
type natSite struct {
	name, netns, lan, lanGW, wan string
	nodes                        []natNode
}

type natNode struct{ private, public string }

// natSites is TopologyNAT's layout; node i (1-based, in order) is n<i>.
var natSites = []natSite{
	{name: "cloud-a", netns: "gwa", lan: "192.0.2.0/24", lanGW: "192.0.2.1", wan: "203.0.113.2",
		nodes: []natNode{{"192.0.2.11", "203.0.113.11"}, {"192.0.2.12", "203.0.113.12"}}},
	{name: "cloud-b", netns: "gwb", lan: "192.0.2.0/24", lanGW: "192.0.2.1", wan: "203.0.113.3",
		nodes: []natNode{{"192.0.2.11", "203.0.113.21"}, {"192.0.2.12", "203.0.113.22"}, {"192.0.2.13", ""}}},
	{name: "onprem", netns: "gwp", lan: "198.51.100.0/24", lanGW: "198.51.100.1", wan: "203.0.113.4",
		nodes: []natNode{{"198.51.100.11", ""}, {"198.51.100.12", ""}}},
}

// natInternet is TopologyNAT's internet segment and the router's address on it.
var natInternet = Site{Name: "inet", Subnet: "203.0.113.0/24", Gateway: "203.0.113.1"}

func natNodes() int {
	n := 0
	for _, s := range natSites {
		n += len(s.nodes)
	}
	return n
}

// DefaultConfig returns the lab of `make demo`: three nodes on two sites
// (so both same-site and cross-site paths are exercised), one pod each.
func DefaultConfig() Config {
	bin := ""
	if exe, err := os.Executable(); err == nil {
		bin = filepath.Dir(exe)
	}
	return Config{
		Prefix:      "weftlab",
		Dir:         "/run/weft-lab",
		BinDir:      bin,
		Nodes:       3,
		Sites:       2,
		PodsPerNode: 1,
		Transport:   "vxlan",
	}
}

// Lab is a running lab. It is also the schema of <Dir>/lab.json, which Up
// writes (first partially, as soon as PIDs exist, so that a crashed run can
// still be cleaned up; then complete) and AddPod/DelPod rewrite atomically.
//
// lab.json fields:
//
//	version      schema version (1)
//	prefix       namespace prefix; every namespace of the lab is <prefix>-*
//	dir          the lab directory that holds lab.json
//	transport    the transport policy of every weftd ("vxlan", "wireguard",
//	             "wireguard-across-sites")
//	clusterCIDR  pod range of the whole cluster ("10.244.0.0/16")
//	dualStack    true when pods get an IPv6 address too (Config.DualStack)
//	underlay     "ipv6" for an IPv6 underlay (Config.Underlay): site
//	             subnets 2001:db8:<k>::/64, gateways 2001:db8:<k>::1, node
//	             addresses 2001:db8:<k>::<10+i>; "mixed" for both families
//	             (UnderlayMixed); absent: IPv4
//	clusterCIDR6 the IPv6 pod range of a dual-stack lab ("fd00:10:244::/56")
//	router       the router namespace:
//	  netns        its name (<prefix>-rtr)
//	  sites[]      one per site: name ("site1"), subnet ("192.0.2.0/24"),
//	               gateway (the router's address on it, "192.0.2.1", which is
//	               also the nodes' default gateway); the bridge inside the
//	               router namespace is br-<name>; with a mixed underlay also
//	               subnet6 and gateway6 ("2001:db8:1::/64", "2001:db8:1::1")
//	nodes[]      one per node:
//	  name          "n1".."nN"
//	  netns         <prefix>-<name>
//	  site          the site the node's eth0 is on
//	  underlayAddr  the node's address on its site ("192.0.2.11")
//	  underlayIf    its interface inside the node namespace ("eth0")
//	  altUnderlayAddr its address of the other family, mixed underlay
//	                only, for a node with both ("2001:db8:1::13"); absent:
//	                none
//	  podCIDR       the node's pod range ("10.244.1.0/24"); set for external
//	                nodes too, for tests that configure them by hand
//	  podCIDR6      its IPv6 pod range in a dual-stack lab
//	                ("fd00:10:244:1::/64"); absent otherwise
//	  weftdPID      PID of the node's weftd (0 when none runs)
//	  controlSocket weftd's unix socket (<runDir>/weftd.sock)
//	  runDir        weftd --run-dir (node.json, weftd.sock)
//	  stateDir      weftd --state-dir
//	  logFile       weftd's stdout+stderr
//	  cniConfDir    holds 10-weft.conflist
//	  cniBinDir     where weft-cni is
//	  ipamDir       weft-cni's allocation store (dataDir)
//	  external      true for interop peers: no weftd, no pods, and the
//	                directory fields above are empty
//	  publicAddr    the node's public address (NAT topology); absent: none
//	topology     "nat" for the NAT topology (TopologyNAT); absent: plain
//	gateways[]   NAT topology only, one per site:
//	  site          "cloud-a", "cloud-b", "onprem"
//	  netns         <prefix>-gwa, -gwb, -gwp
//	  lan           the site's private subnet (both clouds: 192.0.2.0/24)
//	  lanGateway    the gateway's address on it, the nodes' default route
//	  wan           the gateway's address on the internet segment
//	                (203.0.113.0/24; the router is 203.0.113.1)
//	  public        node name → public address DNATed to it (1:1 NAT)
//	pods[]       one per pod:
//	  name          "n1-p1"
//	  netns         <prefix>-<node>-p<k>
//	  netnsPath     /run/netns/<netns>
//	  node          the node the pod is on
//	  address       the pod's IPv4 address, without a prefix length
//	  address6      its IPv6 address in a dual-stack lab; absent otherwise
//	  containerID   the CNI container ID (the pod namespace name)
//	  ifName        the pod's interface ("eth0")
type Lab struct {
	Version     int    `json:"version"`
	Prefix      string `json:"prefix"`
	Dir         string `json:"dir"`
	Transport   string `json:"transport"`
	ClusterCIDR string `json:"clusterCIDR"`
	// DualStack and ClusterCIDR6: Config.DualStack and the IPv6 range.
	DualStack    bool   `json:"dualStack,omitempty"`
	ClusterCIDR6 string `json:"clusterCIDR6,omitempty"`
	// Underlay is Config.Underlay ("" for IPv4).
	Underlay string `json:"underlay,omitempty"`
	Router   Router `json:"router"`
	// Internet is the "internet" namespace (Config.Internet), nil without.
	Internet *Internet `json:"internet,omitempty"`
	// Topology is Config.Topology ("" for plain); Gateways the NAT
	// gateways of TopologyNAT, one per site.
	Topology string    `json:"topology,omitempty"`
	Gateways []Gateway `json:"gateways,omitempty"`
	Nodes    []Node    `json:"nodes"`
	Pods     []Pod     `json:"pods"`
	// GossipKeyFile is the lab's gossip key file (<dir>/gossip.key, made
	// by Up), given to every weftd with --gossip-key-file.
	GossipKeyFile string `json:"gossipKeyFile,omitempty"`
	// Seed is the --seeds value every weftd gets; WeftdArgs the extra
	// flags; ClaimCIDRs whether pod CIDRs are claimed. Kept so that
	// StartWeftd restarts a node exactly as Up started it.
	Seed       string   `json:"seed,omitempty"`
	WeftdArgs  []string `json:"weftdArgs,omitempty"`
	ClaimCIDRs bool     `json:"claimCIDRs,omitempty"`

	// mu serialises changes to Pods and rewrites of lab.json.
	mu sync.Mutex
	// procs are the weftd processes this Lab value started, so Down can
	// reap its own children instead of polling a zombie.
	procs map[int]*proc
	// log is Config.Log (never nil once Up has run).
	log io.Writer
	// binDir is Config.BinDir.
	binDir string
}

// proc is a weftd this process started. done closes once it has been reaped.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Router is the namespace that routes between the sites.
type Router struct {
	Netns string `json:"netns"`
	Sites []Site `json:"sites"`
}

// InternetAddr is the host of the lab's "internet" namespace.
const InternetAddr = "203.0.113.100"

// Internet is a host outside the cluster, routed by the router namespace,
// that knows no route to the pod CIDRs.
type Internet struct {
	Netns   string `json:"netns"`
	Addr    string `json:"addr"`
	Gateway string `json:"gateway"` // the router's address on its link
}

// Gateway is one site's NAT gateway namespace (TopologyNAT): its LAN is the
// site's subnet on bridge br-lan, its WAN interface "wan" is on the
// router's br-inet. Public maps node names to their 1:1 public addresses.
type Gateway struct {
	Site   string            `json:"site"`
	Netns  string            `json:"netns"`
	LAN    string            `json:"lan"`
	LANGW  string            `json:"lanGateway"`
	WAN    string            `json:"wan"`
	Public map[string]string `json:"public,omitempty"`
}

// Gateway returns the NAT gateway of site, or nil.
func (l *Lab) Gateway(site string) *Gateway {
	for i := range l.Gateways {
		if l.Gateways[i].Site == site {
			return &l.Gateways[i]
		}
	}
	return nil
}

// Site is one underlay subnet, a bridge inside the router namespace.
type Site struct {
	Name    string `json:"name"`
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
	// Subnet6 and Gateway6 are the site's IPv6 half in a mixed-underlay
	// lab (UnderlayMixed); empty otherwise.
	Subnet6  string `json:"subnet6,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
}

// Node is one node namespace. See Lab for the meaning of each field.
type Node struct {
	Name         string `json:"name"`
	Netns        string `json:"netns"`
	Site         string `json:"site"`
	UnderlayAddr string `json:"underlayAddr"`
	UnderlayIf   string `json:"underlayIf"`
	// AltUnderlayAddr is the node's address of the other family (mixed
	// underlay, nodes with both); weftd gets both in --underlay-addr.
	AltUnderlayAddr string `json:"altUnderlayAddr,omitempty"`
	PodCIDR         string `json:"podCIDR"`
	PodCIDR6        string `json:"podCIDR6,omitempty"`
	WeftdPID        int    `json:"weftdPID"`
	ControlSocket   string `json:"controlSocket"`
	RunDir          string `json:"runDir"`
	StateDir        string `json:"stateDir"`
	LogFile         string `json:"logFile"`
	CNIConfDir      string `json:"cniConfDir"`
	CNIBinDir       string `json:"cniBinDir"`
	IPAMDir         string `json:"ipamDir"`
	External        bool   `json:"external"`
	WGName          string `json:"wgName,omitempty"`
	// PublicAddr is the node's 1:1 public address on its site's gateway
	// (TopologyNAT), given to weftd as --public-addr; "" for none.
	PublicAddr string `json:"publicAddr,omitempty"`
}

// Pod is one pod namespace wired by weft-cni. See Lab for each field.
type Pod struct {
	Name        string `json:"name"`
	Netns       string `json:"netns"`
	NetnsPath   string `json:"netnsPath"`
	Node        string `json:"node"`
	Address     string `json:"address"`
	Address6    string `json:"address6,omitempty"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Load reads <dir>/lab.json. The returned Lab can Down, Exec, AddPod and
// DelPod like the one Up returned (BinDir is taken from the nodes'
// cniBinDir).
func Load(dir string) (*Lab, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("load lab: %w", err)
	}
	l := &Lab{}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, fmt.Errorf("load lab %s: %w", filepath.Join(dir, stateFile), err)
	}
	if l.Version != Version {
		return nil, fmt.Errorf("load lab %s: schema version %d, want %d", dir, l.Version, Version)
	}
	l.log = io.Discard
	for _, n := range l.Nodes {
		if n.CNIBinDir != "" {
			l.binDir = n.CNIBinDir
			break
		}
	}
	return l, nil
}

// SetLog directs progress lines of a loaded Lab to w (nil discards).
func (l *Lab) SetLog(w io.Writer) {
	if w == nil {
		w = io.Discard
	}
	l.log = w
}

// Node returns the node called name, or nil.
func (l *Lab) Node(name string) *Node {
	for i := range l.Nodes {
		if l.Nodes[i].Name == name {
			return &l.Nodes[i]
		}
	}
	return nil
}

// PodsOn returns a copy of the pods on node, in creation order.
func (l *Lab) PodsOn(node string) []Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Pod
	for _, p := range l.Pods {
		if p.Node == node {
			out = append(out, p)
		}
	}
	return out
}

// JSON returns lab.json's content for l.
func (l *Lab) JSON() ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.marshalLocked()
}

func (l *Lab) marshalLocked() ([]byte, error) {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode lab.json: %w", err)
	}
	return append(b, '\n'), nil
}

// save writes lab.json atomically (temp file + rename) so that a reader
// never sees half a file.
func (l *Lab) save() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.saveLocked()
}

func (l *Lab) saveLocked() error {
	b, err := l.marshalLocked()
	if err != nil {
		return err
	}
	return diskfile.Write(filepath.Join(l.Dir, stateFile), b, 0o644)
}

// validate fills defaults into cfg and checks its numbers.
func (cfg *Config) validate() error {
	def := DefaultConfig()
	if cfg.Prefix == "" {
		cfg.Prefix = def.Prefix
	}
	if cfg.Dir == "" {
		cfg.Dir = def.Dir
	}
	if cfg.BinDir == "" {
		cfg.BinDir = def.BinDir
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = def.Nodes
	}
	if cfg.Sites == 0 {
		cfg.Sites = def.Sites
	}
	if cfg.Transport == "" {
		cfg.Transport = def.Transport
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	var errs []error
	switch cfg.Topology {
	case "", "plain":
		cfg.Topology = ""
	case TopologyNAT:
		// The layout is fixed; Nodes and Sites follow from it.
		if cfg.Nodes == 0 || cfg.Nodes == def.Nodes || cfg.Nodes == natNodes() {
			cfg.Nodes = natNodes()
		} else {
			errs = append(errs, fmt.Errorf("topology nat has %d nodes, not %d", natNodes(), cfg.Nodes))
		}
		cfg.Sites = 1 // unused: the router has one segment, the internet
		if cfg.Internet {
			errs = append(errs, errors.New("topology nat: the internet segment is the gateways' (no --internet)"))
		}
		if cfg.Transport == "vxlan" {
			errs = append(errs, errors.New("topology nat: nodes behind NAT are reached over WireGuard only; use transport wireguard-across-sites or wireguard"))
		}
	default:
		errs = append(errs, fmt.Errorf("topology %q: want plain or nat", cfg.Topology))
	}
	switch cfg.Underlay {
	case "", UnderlayIPv4:
		cfg.Underlay = ""
	case UnderlayIPv6, UnderlayMixed:
		if cfg.Topology != "" {
			errs = append(errs, fmt.Errorf("underlay %s: only with the plain topology (the NAT topology is IPv4)", cfg.Underlay))
		}
		if cfg.Internet {
			errs = append(errs, fmt.Errorf("underlay %s: the internet namespace is IPv4 (no --internet)", cfg.Underlay))
		}
	default:
		errs = append(errs, fmt.Errorf("underlay %q: want ipv4, ipv6 or mixed", cfg.Underlay))
	}
	if cfg.Sites < 1 || cfg.Sites > len(sites) {
		errs = append(errs, fmt.Errorf("sites %d: want 1..%d", cfg.Sites, len(sites)))
	}
	// Node addresses are .(10+i) and pod CIDRs 10.244.i.0/24.
	if cfg.Internet && cfg.Sites > 2 {
		errs = append(errs, fmt.Errorf("internet: needs 203.0.113.0/24, which a third site takes (sites %d: want 1..2)", cfg.Sites))
	}
	if cfg.Nodes < cfg.Sites || cfg.Nodes > 200 {
		errs = append(errs, fmt.Errorf("nodes %d: want %d..200 (at least one per site)", cfg.Nodes, cfg.Sites))
	}
	if cfg.PodsPerNode < 0 || cfg.PodsPerNode > 200 {
		errs = append(errs, fmt.Errorf("pods per node %d: want 0..200", cfg.PodsPerNode))
	}
	if _, err := overlay.ParsePolicy(cfg.Transport); err != nil {
		errs = append(errs, err)
	}
	if err := checkPrefix(cfg.Prefix); err != nil {
		errs = append(errs, err)
	}
	if err := checkDir(cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	for _, e := range cfg.External {
		found := false
		for i := 1; i <= cfg.Nodes; i++ {
			if e == fmt.Sprintf("n%d", i) {
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("external node %q is not one of n1..n%d", e, cfg.Nodes))
		}
	}
	return errors.Join(errs...)
}

// checkPrefix keeps namespace names short and free of path characters:
// pod namespace names are <prefix>-nNNN-pNNN.
func checkPrefix(p string) error {
	if p == "" || len(p) > 32 {
		return fmt.Errorf("prefix %q: want 1..32 characters", p)
	}
	for _, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("prefix %q: only letters, digits, '_' and '.' (the '-' separates names)", p)
		}
	}
	return nil
}

// checkDir refuses directories whose removal would hurt: Down and Cleanup
// delete the lab directory recursively.
func checkDir(d string) error {
	if !filepath.IsAbs(d) {
		return fmt.Errorf("lab dir %q: want an absolute path", d)
	}
	c := filepath.Clean(d)
	if c == "/" || filepath.Dir(c) == "/" {
		return fmt.Errorf("lab dir %q: refusing a top-level directory", d)
	}
	return nil
}

// Families reports which underlay families node has addresses in.
func (n *Node) Families() (v4, v6 bool) {
	for _, a := range []string{n.UnderlayAddr, n.AltUnderlayAddr} {
		switch {
		case a == "":
		case strings.Contains(a, ":"):
			v6 = true
		default:
			v4 = true
		}
	}
	return v4, v6
}

// ShareFamily reports whether nodes a and b have an underlay family in
// common: in a mixed-underlay lab an IPv4-only and an IPv6-only node do
// not, and do not reach each other.
func (l *Lab) ShareFamily(a, b string) bool {
	na, nb := l.Node(a), l.Node(b)
	if na == nil || nb == nil {
		return false
	}
	a4, a6 := na.Families()
	b4, b6 := nb.Families()
	return a4 && b4 || a6 && b6
}
