package lab

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
)

// podIfName is the interface name inside every pod.
const podIfName = "eth0"

// AddPod makes a new pod namespace <prefix>-<node>-p<k> and wires it by
// running the real weft-cni (from the node's CNIBinDir) through libcni
// from inside the node's namespace, the way a container runtime on that
// node would. lab.json is rewritten with the new pod. On failure the
// namespace is removed again.
func (l *Lab) AddPod(ctx context.Context, node string) (Pod, error) {
	n := l.Node(node)
	if n == nil {
		return Pod{}, fmt.Errorf("add pod: no node %q", node)
	}
	if n.External {
		return Pod{}, fmt.Errorf("add pod: node %s is external (no weftd, no CNI)", node)
	}
	// The lock is held across the plugin call so that two AddPods on one
	// Lab can't pick the same pod number.
	l.mu.Lock()
	defer l.mu.Unlock()

	k := 1
	for _, p := range l.Pods {
		if p.Node != node {
			continue
		}
		if i, err := strconv.Atoi(strings.TrimPrefix(p.Name, node+"-p")); err == nil && i >= k {
			k = i + 1
		}
	}
	name := fmt.Sprintf("%s-p%d", node, k)
	p := Pod{
		Name:        name,
		Netns:       l.Prefix + "-" + name,
		Node:        node,
		ContainerID: l.Prefix + "-" + name,
		IfName:      podIfName,
	}
	p.NetnsPath = filepath.Join(netnsDir, p.Netns)

	if _, err := ip(ctx, "netns", "add", p.Netns); err != nil {
		return Pod{}, fmt.Errorf("add pod %s: %w", name, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = deleteNetns(context.Background(), p.Netns, nil)
		}
	}()
	if _, err := ip(ctx, "-n", p.Netns, "link", "set", "lo", "up"); err != nil {
		return Pod{}, fmt.Errorf("add pod %s: %w", name, err)
	}

	cninet, list, rt, err := l.cni(n, p)
	if err != nil {
		return Pod{}, fmt.Errorf("add pod %s: %w", name, err)
	}
	var res *types100.Result
	err = ns.WithNetNSPath(filepath.Join(netnsDir, n.Netns), func(ns.NetNS) error {
		r, err := cninet.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		// ADD should have rolled itself back; DEL makes sure (it must
		// succeed on a half-made pod) so no address stays allocated.
		_ = l.cniDel(context.Background(), n, p)
		return Pod{}, fmt.Errorf("add pod %s: cni ADD: %w", name, err)
	}
	for _, ipc := range res.IPs {
		if v4 := ipc.Address.IP.To4(); v4 != nil {
			if p.Address == "" {
				p.Address = v4.String()
			}
		} else if p.Address6 == "" {
			p.Address6 = ipc.Address.IP.String()
		}
	}
	if p.Address == "" || n.PodCIDR6 != "" && p.Address6 == "" {
		_ = l.cniDel(context.Background(), n, p)
		return Pod{}, fmt.Errorf("add pod %s: cni result lacks an address of a family (dual-stack %v): %v", name, n.PodCIDR6 != "", res)
	}
	l.Pods = append(l.Pods, p)
	if err := l.saveLocked(); err != nil {
		l.Pods = l.Pods[:len(l.Pods)-1]
		_ = l.cniDel(context.Background(), n, p)
		return Pod{}, err
	}
	ok = true
	return p, nil
}

// DelPod runs CNI DEL for p from inside its node's namespace, deletes the
// pod namespace and rewrites lab.json. It keeps going after an error so a
// half-broken pod still goes away.
func (l *Lab) DelPod(ctx context.Context, p Pod) error {
	n := l.Node(p.Node)
	if n == nil {
		return fmt.Errorf("del pod %s: no node %q", p.Name, p.Node)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	if err := l.cniDel(ctx, n, p); err != nil {
		errs = append(errs, fmt.Errorf("del pod %s: cni DEL: %w", p.Name, err))
	}
	if err := deleteNetns(ctx, p.Netns, nil); err != nil {
		errs = append(errs, fmt.Errorf("del pod %s: %w", p.Name, err))
	}
	for i := range l.Pods {
		if l.Pods[i].Netns == p.Netns {
			l.Pods = append(l.Pods[:i], l.Pods[i+1:]...)
			break
		}
	}
	if err := l.saveLocked(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (l *Lab) cniDel(ctx context.Context, n *Node, p Pod) error {
	cninet, list, rt, err := l.cni(n, p)
	if err != nil {
		return err
	}
	return ns.WithNetNSPath(filepath.Join(netnsDir, n.Netns), func(ns.NetNS) error {
		return cninet.DelNetworkList(ctx, list, rt)
	})
}

// cni returns the libcni pieces for pod p on node n. The cache dir is the
// node's own, as on a real node with its own /var/lib/cni.
func (l *Lab) cni(n *Node, p Pod) (*libcni.CNIConfig, *libcni.NetworkConfigList, *libcni.RuntimeConf, error) {
	list, err := libcni.ConfListFromFile(filepath.Join(n.CNIConfDir, confName))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("load conflist: %w", err)
	}
	cninet := libcni.NewCNIConfigWithCacheDir([]string{n.CNIBinDir}, filepath.Join(l.Dir, n.Name, "cni-cache"), nil)
	rt := &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NetnsPath,
		IfName:      p.IfName,
	}
	return cninet, list, rt, nil
}
