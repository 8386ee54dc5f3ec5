package cni

// Spec conformance through libcni, the way containerd drives a plugin: every
// advertised version, every verb, and the failure modes the spec names.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/ipam"
)

var advertised = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// gc runs libcni's GC for the list. With fresh, it uses an empty cache dir,
// so libcni issues no DELs of its own and only the plugin's GC verb acts:
// what happens when a runtime lost track of an attachment, or an ADD died
// before libcni cached it.
func (l *lab) gc(fresh bool, valid ...string) error {
	c := l.cni
	if fresh {
		c = libcni.NewCNIConfigWithCacheDir(c.Path, l.t.TempDir(), nil)
	}
	args := &libcni.GCArgs{}
	for _, id := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: id, IfName: "eth0"})
	}
	return l.inNode(func() error { return c.GCNetworkList(context.Background(), l.confList, args) })
}

func (l *lab) status() error {
	return l.inNode(func() error { return l.cni.GetStatusNetworkList(context.Background(), l.confList) })
}

// hostState is everything weft-cni can leave on a node: allocations, links
// and routes in the node netns.
type hostState struct {
	Allocs map[netip.Addr]string
	Links  []string
	Routes []string
}

func (l *lab) hostState() hostState {
	l.t.Helper()
	st := hostState{Allocs: map[netip.Addr]string{}}
	held, err := l.store().Allocations()
	if err != nil {
		l.t.Fatal(err)
	}
	for a, o := range held {
		st.Allocs[a] = o.ContainerID + "/" + o.IfName
	}
	err = l.inNode(func() error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		names := map[int]string{}
		for _, k := range links {
			names[k.Attrs().Index] = k.Attrs().Name
			st.Links = append(st.Links, fmt.Sprintf("%s(%s)", k.Attrs().Name, k.Type()))
		}
		routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, 0)
		if err != nil {
			return err
		}
		for _, r := range routes {
			st.Routes = append(st.Routes, fmt.Sprintf("%s dev %s table %d", prefixOf(r.Dst), names[r.LinkIndex], r.Table))
		}
		return nil
	})
	if err != nil {
		l.t.Fatal(err)
	}
	slices.Sort(st.Links)
	slices.Sort(st.Routes)
	return st
}

func (l *lab) store() *ipam.Store {
	l.t.Helper()
	s, err := ipam.Open(l.dataDir)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { s.Close() })
	return s
}

// podLinks lists the links inside a pod netns.
func podLinks(t *testing.T, pod string) []string {
	t.Helper()
	var names []string
	err := withNS(pod, func() error {
		links, err := netlinksafe.LinkList()
		for _, k := range links {
			names = append(names, k.Attrs().Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func cniCode(err error) uint {
	var ce *types.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

// TestSpecVersions drives ADD, CHECK, DEL, GC and STATUS through libcni for
// every advertised version, with results converted to the version asked.
func TestSpecVersions(t *testing.T) {
	for _, v := range advertised {
		t.Run(v, func(t *testing.T) {
			l := newLab(t, v)
			atLeast := func(min string) bool { return versionAtLeast(v, min) }

			// STATUS: not ready without node.json, nor with one that
			// has no pod CIDR; ready once weftd wrote it. libcni skips
			// STATUS below 1.1.0.
			err := l.status()
			if atLeast("1.1.0") {
				if cniCode(err) != types.ErrPluginNotAvailable {
					t.Fatalf("STATUS without node.json: %v (code %d), want code 50", err, cniCode(err))
				}
				if err := os.MkdirAll(l.runDir, 0o755); err != nil {
					t.Fatal(err)
				}
				noCIDR := `{"nodeName":"n7","podCIDRs":[],"gateway":"10.244.7.1","mtu":1450,"clusterCIDR":"10.244.0.0/16"}`
				if err := os.WriteFile(filepath.Join(l.runDir, NodeStateFile), []byte(noCIDR), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := l.status(); cniCode(err) != types.ErrPluginNotAvailable {
					t.Fatalf("STATUS with no pod CIDR: %v, want code 50", err)
				}
			} else if err != nil {
				t.Fatalf("STATUS on %s: %v, want libcni to skip it", v, err)
			}
			l.writeNode()
			if err := l.status(); err != nil {
				t.Fatalf("STATUS with node.json: %v", err)
			}

			p1 := addNetns(t, l.suffix, "p1")
			p2 := addNetns(t, l.suffix, "p2")
			for i, pod := range []string{p1, p2} {
				res, err := l.add(pod)
				if err != nil {
					t.Fatalf("ADD %s: %v", pod, err)
				}
				if res.Version() != v {
					t.Fatalf("result version %s, want %s", res.Version(), v)
				}
				want := fmt.Sprintf("10.244.7.%d/32", i+2)
				checkResultJSON(t, res, v, want)
			}

			// CHECK exists from 0.4.0 on.
			err = l.check(p1)
			if atLeast("0.4.0") {
				if err != nil {
					t.Fatalf("CHECK: %v", err)
				}
				run(t, "ip", "-n", p1, "addr", "flush", "dev", "eth0")
				if err := l.check(p1); err == nil {
					t.Fatal("CHECK passed with the pod address gone")
				}
			} else if !errors.Is(err, libcni.ErrorCheckNotSupp) {
				t.Fatalf("CHECK on %s: %v, want ErrorCheckNotSupp", v, err)
			}

			// DEL twice, and DEL of a container never seen.
			for range 2 {
				if err := l.del(p1); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			if _, ok := l.lookup(p1); ok {
				t.Fatal("allocation left after DEL")
			}
			if err := l.del("never-added"); err != nil {
				t.Fatalf("DEL of unknown container: %v", err)
			}

			// GC: p3 is added and then dropped from the valid list.
			// Below 1.1.0 libcni DELs it from its cache; from 1.1.0
			// the plugin's GC verb must find it with no cache at all.
			p3 := addNetns(t, l.suffix, "p3")
			if _, err := l.add(p3); err != nil {
				t.Fatalf("ADD p3: %v", err)
			}
			if err := l.gc(atLeast("1.1.0"), p2); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if _, ok := l.lookup(p3); ok {
				t.Fatal("GC left p3's allocation")
			}
			if links := l.weftLinks(); !slices.Equal(links, []string{HostVethName(p2, "eth0")}) {
				t.Fatalf("links after GC %v, want only p2's", links)
			}
			if got := podLinks(t, p3); !slices.Equal(got, []string{"lo"}) {
				t.Fatalf("p3 links after GC %v", got)
			}
			if a, ok := l.lookup(p2); !ok || a.String() != "10.244.7.3" {
				t.Fatalf("GC touched p2: %v %v", a, ok)
			}
			if atLeast("0.4.0") {
				if err := l.check(p2); err != nil {
					t.Fatalf("CHECK p2 after GC: %v", err)
				}
			}
			if err := l.del(p2); err != nil {
				t.Fatal(err)
			}
			if links := l.weftLinks(); len(links) != 0 {
				t.Fatalf("links left: %v", links)
			}
		})
	}
}

func versionAtLeast(v, min string) bool {
	return slices.Index(advertised, v) >= slices.Index(advertised, min)
}

// checkResultJSON decodes the result as the runtime would for version v and
// checks the fields that version defines.
func checkResultJSON(t *testing.T, res types.Result, v, addr string) {
	t.Helper()
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if v < "1.0.0" {
		var r types040.Result
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		if r.CNIVersion != v || len(r.IPs) != 1 || r.IPs[0].Version != "4" || r.IPs[0].Address.String() != addr ||
			r.IPs[0].Interface == nil || *r.IPs[0].Interface != 1 || len(r.Interfaces) != 2 {
			t.Fatalf("%s result %s", v, b)
		}
		return
	}
	var r types100.Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"version"`) {
		t.Fatalf("%s result carries the pre-1.0 ip version field: %s", v, b)
	}
	if r.CNIVersion != v || len(r.IPs) != 1 || r.IPs[0].Address.String() != addr || len(r.Interfaces) != 2 ||
		r.Interfaces[1].Mtu != 1450 {
		t.Fatalf("%s result %s", v, b)
	}
}

// TestCheckDetects breaks one thing at a time and expects CHECK to fail.
func TestCheckDetects(t *testing.T) {
	l := newLab(t, "1.1.0")
	l.writeNode()
	host := func(pod string) string { return HostVethName(pod, "eth0") }
	for i, tc := range []struct {
		name   string
		break_ func(pod string)
	}{
		{"pod address", func(pod string) { run(t, "ip", "-n", pod, "addr", "flush", "dev", "eth0") }},
		{"pod default route", func(pod string) { run(t, "ip", "-n", pod, "route", "del", "default") }},
		{"pod gateway route", func(pod string) {
			run(t, "ip", "-n", pod, "route", "del", "default")
			run(t, "ip", "-n", pod, "route", "del", "10.244.7.1/32")
			// Re-add the default route through another way of making the
			// gateway reachable, so only the scope-link route is missing.
			run(t, "ip", "-n", pod, "route", "add", "default", "via", "10.244.7.1", "dev", "eth0", "onlink")
		}},
		{"pod mtu", func(pod string) { run(t, "ip", "-n", pod, "link", "set", "eth0", "mtu", "1400") }},
		{"pod link down", func(pod string) { run(t, "ip", "-n", pod, "link", "set", "eth0", "down") }},
		{"host route", func(pod string) {
			run(t, "ip", "-n", l.nodeNS, "route", "flush", "dev", host(pod))
		}},
		{"host mtu", func(pod string) { run(t, "ip", "-n", l.nodeNS, "link", "set", host(pod), "mtu", "1400") }},
		{"host proxy_arp", func(pod string) {
			run(t, "ip", "netns", "exec", l.nodeNS, "sysctl", "-qw", "net.ipv4.conf."+host(pod)+".proxy_arp=0")
		}},
		{"host veth gone", func(pod string) { run(t, "ip", "-n", l.nodeNS, "link", "del", host(pod)) }},
		{"allocation gone", func(pod string) {
			if err := l.store().Release(ipam.Owner{ContainerID: pod, IfName: "eth0"}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := addNetns(t, l.suffix, fmt.Sprintf("c%d", i))
			if _, err := l.add(pod); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Cleanup(func() {
				if err := l.del(pod); err != nil {
					t.Errorf("DEL: %v", err)
				}
			})
			if err := l.check(pod); err != nil {
				t.Fatalf("CHECK on a healthy pod: %v", err)
			}
			tc.break_(pod)
			err := l.check(pod)
			if err == nil {
				t.Fatal("CHECK passed")
			}
			t.Logf("CHECK: %v", err)
		})
	}
}
