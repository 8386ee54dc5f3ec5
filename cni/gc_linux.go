package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/ipam"
)

// hostVethRE matches the names HostVethName makes, and nothing else weft
// owns: weft0 (the TUN) is too short to match.
var hostVethRE = regexp.MustCompile(`^weft[0-9a-f]{11}$`)

// Status reports whether ADD can succeed now: node.json must be present and
// valid (weftd has started and the node has a pod CIDR), and each pod CIDR
// (one per family: ADD takes an address of each) must have a free address. Anything else is error 50, "the plugin is not
// available"; existing pods keep working, so 51 would overstate it.
func Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	node, err := ReadNodeState(conf.RunDir)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "weft-cni: node state not ready (is weftd running?)", err.Error())
	}
	store, err := ipam.Open(conf.DataDir)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "weft-cni: open ipam store", err.Error())
	}
	defer store.Close()
	// ADD takes one address of each family: each pod CIDR needs room.
	for _, p := range node.PodCIDRs {
		n, err := store.Free(p, []netip.Addr{node.GatewayOf(p.Addr().Is6())}, 1)
		if err != nil {
			return types.NewError(types.ErrPluginNotAvailable, "weft-cni: read ipam store", err.Error())
		}
		if n == 0 {
			return types.NewError(types.ErrPluginNotAvailable, "weft-cni: pod CIDR exhausted",
				fmt.Sprintf("no free address in %v", p))
		}
	}
	return nil
}

// GC removes every attachment the runtime did not list in
// cni.dev/valid-attachments: its allocation, its host veth (which takes the
// pod end and the /32 host route with it). This is what cleans up after a
// pod whose DEL never came and after an ADD killed midway, which left an
// allocation or a veth but never reported a result. GC does not need
// node.json, so it works while weftd is down. It keeps going past errors
// and reports them together, as the spec asks.
func GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid := make(map[ipam.Owner]bool, len(conf.ValidAttachments))
	validVeth := make(map[string]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName}] = true
		validVeth[HostVethName(a.ContainerID, a.IfName)] = true
	}

	// Links first, then addresses: an address must not become free while
	// a stale veth still routes it, as in DEL. An attachment whose veth
	// could not be deleted keeps its address until the next GC.
	var errs []error
	links, err := netlinksafe.LinkList()
	if err != nil {
		return types.NewError(types.ErrInternal, "weft-cni: garbage collection", fmt.Sprintf("list links: %v", err))
	}
	stuck := make(map[string]bool)
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() != "veth" || !hostVethRE.MatchString(name) || validVeth[name] {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
			// A pod netns being deleted takes the veth with it
			// asynchronously; only a link still there is a failure.
			if _, lerr := netlinksafe.LinkByName(name); !errors.As(lerr, new(netlink.LinkNotFoundError)) {
				errs = append(errs, fmt.Errorf("delete stale veth %s: %w", name, err))
				stuck[name] = true
			}
		}
	}
	store, err := ipam.Open(conf.DataDir)
	if err != nil {
		errs = append(errs, err)
	} else {
		_, err := store.Prune(func(o ipam.Owner) bool {
			return valid[o] || stuck[HostVethName(o.ContainerID, o.IfName)]
		})
		if err != nil {
			errs = append(errs, err)
		}
		store.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "weft-cni: garbage collection incomplete", err.Error())
	}
	return nil
}
