package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/deploy/lab"
)

// rolloutUnderTraffic rolls the weft DaemonSet (`kubectl rollout restart`:
// maxSurge 1, maxUnavailable 0, so on each node the new pod starts beside
// the old one and its weftd takes the datapath over) while a pod on n1
// streams TCP, and sends a UDP probe every 10 ms, to a pod on n2 (a
// lab.Flow in the pods' network namespaces). The stream survives; its
// longest stretch without bytes goes in the log; each node's weftd reports
// the hand-off; the old pods are gone and no container restarted.
func (c *cluster) rolloutUnderTraffic(t *testing.T, cidrs map[string]netip.Prefix) {
	src := c.sleeperPod("stream-src", "n1", cidrs["n1"])
	dst := c.sleeperPod("stream-dst", "n2", cidrs["n2"])
	before := map[string]uint64{} // pids are 1 in the pods: generations tell the weftds apart
	for _, n := range []string{"n1", "n2"} {
		before[n] = c.status(n).Process.Generation
	}
	f, err := c.lab.StartFlow(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	time.Sleep(time.Second)
	start := time.Now()
	c.mustKubectl("", "rollout", "restart", "daemonset/weft", "-n", "weft-system")
	c.rollout()
	took := time.Since(start)
	time.Sleep(time.Second)
	r := f.Stop()
	t.Logf("rollout under traffic (%s): TCP %d MB delivered, longest stretch without bytes %s, %d retransmits; 10 ms probes: longest gap %s, %d of %d lost; connection survived %v",
		took.Round(100*time.Millisecond), r.Bytes>>20, r.LongestStall, r.Retransmits, r.LongestProbeGap, r.ProbesLost, r.ProbesSent, r.Survived)
	if !r.Survived || r.Bytes == 0 {
		t.Fatalf("the pod's TCP stream did not survive the rollout: %+v", r)
	}
	for _, n := range []string{"n1", "n2"} {
		p := c.status(n).Process
		if p.Start != "handoff" || p.Generation == before[n] || p.WarmPeers != 1 {
			t.Errorf("%s: weftd after the rollout %+v, want a new one (not generation %d) started by a hand-off with 1 peer", n, p, before[n])
		}
	}
	c.eventually("old weft pods gone", 60*time.Second, func() error {
		out, err := c.kubectl("", "get", "pods", "-n", "weft-system", "-o", "name")
		if err != nil {
			return err
		}
		if n := len(strings.Fields(out)); n != 2 {
			return fmt.Errorf("%d weft pods: %s", n, out)
		}
		return nil
	})
	c.noRestarts()
	c.mustKubectl("", "delete", "pod", "stream-src", "stream-dst", "--grace-period=1", "--wait=true", "--timeout=60s")
}

// sleeperPod runs a pod that only sleeps on node and returns it as a
// lab.Pod: its address and its network namespace, found through its
// container's process in the node's containerd.
func (c *cluster) sleeperPod(name, node string, cidr netip.Prefix) lab.Pod {
	t := c.t
	ip := c.runPod(name, node, "exec sleep 3600", false, cidr)
	id := strings.TrimPrefix(c.mustKubectl("", "get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].containerID}"), "containerd://")
	sock := filepath.Join(c.nodeDir(node), "containerd", "containerd.sock")
	out, err := exec.Command("ctr", "--address", sock, "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr tasks ls on %s: %v: %s", node, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == strings.TrimSpace(id) {
			return lab.Pod{Name: name, Node: node, Address: ip, NetnsPath: "/proc/" + f[1] + "/ns/net"}
		}
	}
	t.Fatalf("pod %s: container %s not among %s's tasks:\n%s", name, id, node, out)
	return lab.Pod{}
}
