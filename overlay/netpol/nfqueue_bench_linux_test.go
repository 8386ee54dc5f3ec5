package netpol_test

// The baseline of README: NetworkPolicy. kube-network-policies (v0.8.0)
// sends the first packet of every new connection of a pod under policy
// to user space through nfqueue, judges it there and answers with a
// verdict; established packets stay in the kernel. It cannot run on this
// machine's kernel: it queues with the nftables queue expression, and the
// kernel has no nft_queue (CONFIG_NFT_QUEUE is not set: "nft add rule ...
// queue num 100" fails with "No such file or directory"). The x_tables
// NFQUEUE target is there (through iptables-nft), so this benchmark
// measures the floor of that design with the library kube-network-policies
// uses (github.com/florianl/go-nfqueue, its configuration: GSO, 128-byte
// copies, queue length 1,024): each new connection's first packet to b
// goes to a Go callback that accepts it at once, evaluating no policy.

import (
	"context"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	nfqueue "github.com/florianl/go-nfqueue"

	"github.com/weftnet/weft/overlay/netpol"
)

// BenchmarkConnRateNFQueue: new TCP connections per second from pod a to
// pod b, interleaved round by round: no policy, weft's table with 100
// policies selecting b (BenchmarkConnRate's), and the first packet of each
// new connection through nfqueue to user space and back with no policy.
func BenchmarkConnRateNFQueue(b *testing.B) {
	l := newBenchLab(b)
	node := l.ns("node")
	f, err := os.Open("/run/netns/" + node)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue: 100, Flags: nfqueue.NfQaCfgFlagGSO, MaxPacketLen: 128, MaxQueueLen: 1024,
		Copymode: nfqueue.NfQnlCopyPacket, WriteTimeout: 100e6, NetNS: int(f.Fd()),
	})
	if err != nil {
		b.Fatalf("nfqueue: %v", err)
	}
	defer nf.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var queued atomic.Uint64
	if err := nf.RegisterWithErrorFunc(ctx, func(a nfqueue.Attribute) int {
		queued.Add(1)
		nf.SetVerdict(*a.PacketID, nfqueue.NfAccept)
		return 0
	}, func(e error) int {
		if ctx.Err() != nil {
			return 1
		}
		b.Logf("nfqueue: %v", e)
		return 0
	}); err != nil {
		b.Fatal(err)
	}
	// No bypass: without the reader the SYN is dropped and the round
	// fails, so a passing round went through user space.
	rule := []string{"FORWARD", "-d", "10.244.9.3", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE", "--queue-num", "100"}
	ipt := func(op string) {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", node, "iptables", op}, rule...)...).CombinedOutput(); err != nil {
			b.Fatalf("iptables %s: %v: %s", op, err, out)
		}
	}
	none, _ := netpol.Compile("node", netpol.State{})
	hundred := hundredPolicies(b)
	var cNone, cWeft, cQueue float64
	for i := 0; i < b.N; i++ {
		for _, c := range []struct {
			name  string
			rs    *netpol.Ruleset
			queue bool
			conn  *float64
		}{{"none", none, false, &cNone}, {"weft-100", hundred, false, &cWeft}, {"nfqueue", none, true, &cQueue}} {
			if err := l.table.Apply(c.rs); err != nil {
				b.Fatal(err)
			}
			if c.queue {
				ipt("-A")
			}
			before := queued.Load()
			r := connRate(b, l)
			if c.queue {
				ipt("-D")
				if queued.Load() == before {
					b.Fatal("no packet went through nfqueue")
				}
			}
			b.Logf("round %d, %s: %.0f conn/s (%d packets queued)", i, c.name, r, queued.Load()-before)
			*c.conn += r
		}
	}
	b.ReportMetric(cNone/float64(b.N), "conn/s-none")
	b.ReportMetric(cWeft/float64(b.N), "conn/s-weft-100-policies")
	b.ReportMetric(cQueue/float64(b.N), "conn/s-nfqueue-floor")
	b.ReportMetric(cWeft/cNone, "ratio-weft")
	b.ReportMetric(cQueue/cNone, "ratio-nfqueue")
	b.ReportMetric(0, "ns/op")
}
