package netpol_test

// Benchmarks of NetworkPolicy on a node (README: NetworkPolicy), as root
// in the netns node of nft_linux_test.go's shape. Run with
//
//	flock /tmp/weft-netns.lock go test -run XXX -bench . -benchtime 5x -timeout 10m ./overlay/netpol
//
// BenchmarkApplyToBlock: from the Create of a policy (through client-go's
// fake clientset, the informers, the controller, the real table) to the
// first packet of a running UDP stream that the kernel drops, with 10,
// 100 and 1,000 pods in the State: three are real namespaces on veths,
// the others exist only in the API (and in the table's sets), since 1,000
// real pods do not fit this machine. BenchmarkThroughput: iperf3 between
// two pods of the node with no policy and with 100 policies selecting the
// receiver.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/deploy/lab"
	"github.com/weftnet/weft/deploy/prereq/prereqtest"
	"github.com/weftnet/weft/overlay/netpol"
	netpolkube "github.com/weftnet/weft/overlay/netpol/kube"
)

// inNetns runs f on a thread in the network namespace ns; sockets f opens
// stay in ns.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine if setns back failed
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		err = f()
		if e := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); e == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func labPod(ns, name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "node"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

// benchCluster is a fake API with the lab's three pods and fake ones up
// to pods, and a controller applying it to the lab node's table.
func benchCluster(b *testing.B, l *nodeLabHandle, pods int) (*fake.Clientset, *netpol.Controller, func()) {
	cs := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}}})
	ctx, cancel := context.WithCancel(context.Background())
	add := func(p *corev1.Pod) {
		if _, err := cs.CoreV1().Pods("x").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	add(labPod("x", "a", "10.244.9.2", map[string]string{"app": "a", "role": "member"}))
	add(labPod("x", "b", "10.244.9.3", map[string]string{"app": "b"}))
	add(labPod("x", "c", "10.244.9.4", map[string]string{"app": "c"}))
	base := netip.MustParseAddr("10.244.16.0")
	for i := 3; i < pods; i++ {
		add(labPod("x", fmt.Sprintf("fake-%d", i), base.String(), map[string]string{"app": fmt.Sprintf("fake-%d", i), "role": "member"}))
		base = base.Next()
	}
	w, err := netpolkube.Watch(ctx, cs, nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg := netpol.DefaultConfig("node")
	cfg.Resync = time.Hour
	c := netpol.NewController(cfg, w, l.table)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.Run(ctx) }()
	if err := w.WaitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	return cs, c, func() { cancel(); wg.Wait(); w.Close() }
}

// udpStream sends numbered datagrams from pod c to pod b every 200 µs and
// records which arrive.
type udpStream struct {
	mu       sync.Mutex
	sent     []time.Time // by sequence number
	received sync.Map    // seq → struct{}
	stop     atomic.Bool
	done     chan struct{}
}

func startStream(b *testing.B, l *nodeLabHandle, port int) *udpStream {
	s := &udpStream{done: make(chan struct{})}
	var rx *net.UDPConn
	var tx *net.UDPConn
	if err := inNetns(l.ns("b"), func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	if err := inNetns(l.ns("c"), func() (err error) {
		tx, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP("10.244.9.3"), Port: port})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := rx.Read(buf)
			if err != nil {
				return
			}
			if n >= 4 {
				s.received.Store(int(buf[0])<<24|int(buf[1])<<16|int(buf[2])<<8|int(buf[3]), struct{}{})
			}
		}
	}()
	go func() {
		defer close(s.done)
		defer tx.Close()
		defer func() { time.Sleep(50 * time.Millisecond); rx.Close() }()
		for seq := 0; !s.stop.Load(); seq++ {
			s.mu.Lock()
			s.sent = append(s.sent, time.Now())
			s.mu.Unlock()
			tx.Write([]byte{byte(seq >> 24), byte(seq >> 16), byte(seq >> 8), byte(seq)})
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return s
}

// firstLost is when the first datagram sent after t0 that never arrived
// was sent.
func (s *udpStream) firstLost(t0 time.Time) (time.Duration, bool) {
	s.stop.Store(true)
	<-s.done
	for seq, at := range s.sent {
		if at.Before(t0) {
			continue
		}
		if _, ok := s.received.Load(seq); !ok {
			return at.Sub(t0), true
		}
	}
	return 0, false
}

type nodeLabHandle struct {
	ns    func(string) string
	table *netpol.Table
}

func BenchmarkApplyToBlock(b *testing.B) {
	for _, pods := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) {
			l := newBenchLab(b)
			cs, ctrl, stop := benchCluster(b, l, pods)
			defer stop()
			policy := &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "members-only"},
				Spec: networkingv1.NetworkPolicySpec{
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
						{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "member"}}},
					}}},
				},
			}
			var total, applyTotal time.Duration
			for i := 0; i < b.N; i++ {
				ctx := context.Background()
				s := startStream(b, l, 9000+i)
				time.Sleep(100 * time.Millisecond)
				t0 := time.Now()
				if _, err := cs.NetworkingV1().NetworkPolicies("x").Create(ctx, policy, metav1.CreateOptions{}); err != nil {
					b.Fatal(err)
				}
				time.Sleep(300 * time.Millisecond)
				d, ok := s.firstLost(t0)
				if !ok {
					b.Fatalf("pods=%d: no datagram of c was dropped after the policy", pods)
				}
				total += d
				applyTotal += ctrl.Status().LastTook
				st := ctrl.Status()
				if st.Pods != pods || st.Selecting != 1 {
					b.Fatalf("status %+v, want %d pods", st, pods)
				}
				if err := cs.NetworkingV1().NetworkPolicies("x").Delete(ctx, policy.Name, metav1.DeleteOptions{}); err != nil {
					b.Fatal(err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms-to-block")
			b.ReportMetric(float64(applyTotal.Microseconds())/float64(b.N)/1000, "ms-compile+apply")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func iperf(b *testing.B, l *nodeLabHandle) float64 {
	srv := exec.Command("ip", "netns", "exec", l.ns("b"), "iperf3", "-s", "-1", "-p", "5201")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(300 * time.Millisecond)
	out, err := exec.Command("ip", "netns", "exec", l.ns("a"), "iperf3", "-c", "10.244.9.3", "-p", "5201", "-t", "4", "-J").Output()
	if err != nil {
		b.Fatalf("iperf3: %v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatal(err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}

func BenchmarkThroughput(b *testing.B) {
	l := newBenchLab(b)
	none, _ := netpol.Compile("node", netpol.State{})
	hundred := hundredPolicies(b)
	var gNone, gHundred, cNone, cHundred float64
	for i := 0; i < b.N; i++ {
		for _, c := range []struct {
			rs        *netpol.Ruleset
			sum, conn *float64
		}{{none, &gNone, &cNone}, {hundred, &gHundred, &cHundred}} {
			if err := l.table.Apply(c.rs); err != nil {
				b.Fatal(err)
			}
			*c.sum += iperf(b, l)
			*c.conn += connRate(b, l)
		}
	}
	b.ReportMetric(gNone/float64(b.N), "Gbit/s-none")
	b.ReportMetric(gHundred/float64(b.N), "Gbit/s-100-policies")
	b.ReportMetric(gHundred/gNone, "ratio")
	b.ReportMetric(cNone/float64(b.N), "conn/s-none")
	b.ReportMetric(cHundred/float64(b.N), "conn/s-100-policies")
	b.ReportMetric(0, "ns/op")
}

func newBenchLab(b *testing.B) *nodeLabHandle {
	ns, tab := netpol.NewBenchLab(b)
	return &nodeLabHandle{ns: ns, table: tab}
}

// connRate is TCP connections per second from pod a to pod b:5201 (each
// a new flow through every policy's chain), one at a time for 2 s.
//
// The client resets each connection (SO_LINGER 0) instead of closing it:
// a FIN close leaves a TIME_WAIT socket in b and a TIME_WAIT conntrack
// entry in the node (120 s) per connection, and at some 6,000 a second
// the client wraps its 28,000 ephemeral ports within a few rounds, after
// which every connect meets a TIME_WAIT of its own tuple and the rate
// falls to about 150 a second, policies or none (what an earlier version
// of this benchmark measured as the cost of 100 policies). A reset leaves
// no TIME_WAIT on either side and a conntrack entry in CLOSE (10 s), so
// each round
// measures the SYN's path, not the history of the rounds before it.
func connRate(b *testing.B, l *nodeLabHandle) float64 {
	var ln net.Listener
	if err := inNetns(l.ns("b"), func() (err error) {
		ln, err = net.Listen("tcp4", ":5201")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	n := 0
	start := time.Now()
	if err := inNetns(l.ns("a"), func() error {
		for time.Since(start) < 2*time.Second {
			c, err := net.DialTimeout("tcp4", "10.244.9.3:5201", time.Second)
			if err != nil {
				return err
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			n++
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkThroughputAcrossWeft: iperf3 from a pod on n1 to a pod on n2 of
// the netns lab (two weftd, VXLAN), with no policy and with 100 policies
// selecting the receiver in both nodes' tables (the allowing one last).
func BenchmarkThroughputAcrossWeft(b *testing.B) {
	bin := prereqtest.Binaries(b)
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Prefix: fmt.Sprintf("wnpb%d", os.Getpid()%10000), Dir: b.TempDir(), BinDir: bin, Nodes: 2, Sites: 1, PodsPerNode: 1, Transport: "vxlan"})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Down()
	src, dst := l.PodsOn("n1")[0], l.PodsOn("n2")[0]
	addr := func(p lab.Pod) netip.Addr {
		if pf, err := netip.ParsePrefix(p.Address); err == nil {
			return pf.Addr()
		}
		return netip.MustParseAddr(p.Address)
	}
	var tables []*netpol.Table
	for _, n := range []string{"n1", "n2"} {
		f, err := os.Open("/run/netns/" + l.Node(n).Netns)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		t := netpol.NewTable(int(f.Fd()))
		defer t.Remove()
		tables = append(tables, t)
	}
	st := netpol.State{Namespaces: []netpol.Namespace{{Name: "x"}}, Pods: []netpol.Pod{
		{Namespace: "x", Name: "src", Labels: map[string]string{"app": "a"}, IPs: []netip.Addr{addr(src)}, Node: "n1"},
		{Namespace: "x", Name: "dst", Labels: map[string]string{"app": "b"}, IPs: []netip.Addr{addr(dst)}, Node: "n2"},
	}}
	for i := 0; i < 100; i++ {
		port := uint16(1000 + i)
		if i == 99 {
			port = 5201
		}
		st.Policies = append(st.Policies, netpol.Policy{Namespace: "x", Name: fmt.Sprintf("p%03d", i), Ingress: true,
			PodSelector:  netpol.Selector{MatchLabels: map[string]string{"app": "b"}},
			IngressRules: []netpol.Rule{{Peers: []netpol.Peer{{Pods: &netpol.Selector{MatchLabels: map[string]string{"app": "a"}}}}, Ports: []netpol.Port{{Proto: netpol.TCP, Port: port}}}}})
	}
	run := func() float64 {
		srv := exec.Command("ip", "netns", "exec", dst.Netns, "iperf3", "-s", "-1", "-p", "5201")
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		out, err := exec.Command("ip", "netns", "exec", src.Netns, "iperf3", "-c", addr(dst).String(), "-p", "5201", "-t", "4", "-J").Output()
		if err != nil {
			b.Fatalf("iperf3: %v: %s", err, out)
		}
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			b.Fatal(err)
		}
		return res.End.SumReceived.BitsPerSecond / 1e9
	}
	var gNone, gHundred float64
	for i := 0; i < b.N; i++ {
		for _, c := range []struct {
			st  netpol.State
			sum *float64
		}{{netpol.State{}, &gNone}, {st, &gHundred}} {
			for j, t := range tables {
				rs, _ := netpol.Compile([]string{"n1", "n2"}[j], c.st)
				if err := t.Apply(rs); err != nil {
					b.Fatal(err)
				}
			}
			*c.sum += run()
		}
	}
	b.ReportMetric(gNone/float64(b.N), "Gbit/s-none")
	b.ReportMetric(gHundred/float64(b.N), "Gbit/s-100-policies")
	b.ReportMetric(gHundred/gNone, "ratio")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkConnRate: new TCP connections per second from pod a to pod b,
// one at a time, with no policy and with 100 policies selecting b (the
// allowing one last), interleaved round by round; each round's figures
// are logged.
func BenchmarkConnRate(b *testing.B) {
	l := newBenchLab(b)
	none, _ := netpol.Compile("node", netpol.State{})
	hundred := hundredPolicies(b)
	var cNone, cHundred float64
	for i := 0; i < b.N; i++ {
		for _, c := range []struct {
			rs   *netpol.Ruleset
			conn *float64
		}{{none, &cNone}, {hundred, &cHundred}} {
			if err := l.table.Apply(c.rs); err != nil {
				b.Fatal(err)
			}
			r := connRate(b, l)
			b.Logf("round %d, %d rules: %.0f conn/s", i, c.rs.Rules(), r)
			*c.conn += r
		}
	}
	b.ReportMetric(cNone/float64(b.N), "conn/s-none")
	b.ReportMetric(cHundred/float64(b.N), "conn/s-100-policies")
	b.ReportMetric(cHundred/cNone, "ratio")
	b.ReportMetric(0, "ns/op")
}

// hundredPolicies is BenchmarkThroughput's Ruleset: 100 policies selecting
// b, each admitting a on another TCP port, the one for 5201 last.
func hundredPolicies(b *testing.B) *netpol.Ruleset {
	var pols []netpol.Policy
	for i := 0; i < 100; i++ {
		port := uint16(1000 + i)
		if i == 99 {
			port = 5201
		}
		pols = append(pols, netpol.Policy{Namespace: "x", Name: fmt.Sprintf("p%03d", i), Ingress: true,
			PodSelector:  netpol.Selector{MatchLabels: map[string]string{"app": "b"}},
			IngressRules: []netpol.Rule{{Peers: []netpol.Peer{{Pods: &netpol.Selector{MatchLabels: map[string]string{"app": "a"}}}}, Ports: []netpol.Port{{Proto: netpol.TCP, Port: port}}}}})
	}
	st := netpol.State{Namespaces: []netpol.Namespace{{Name: "x"}}, Policies: pols, Pods: []netpol.Pod{
		{Namespace: "x", Name: "a", Labels: map[string]string{"app": "a"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.9.2")}, Node: "node"},
		{Namespace: "x", Name: "b", Labels: map[string]string{"app": "b"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.9.3")}, Node: "node"},
	}}
	rs, errs := netpol.Compile("node", st)
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	return rs
}
