// Command udpecho measures what one wake-up of a user-space process costs
// on a path: the round trip of a UDP datagram echoed by a Go program, next to
// ping's, whose echo the kernel answers without waking anyone. A user-space
// datapath pays such a wake-up at each pass through its daemon (weft-vxlan:
// three per round trip when idle), so this bounds the RTT it can reach on
// the machine (README: Benchmarks).
//
//	ip netns exec NS2 udpecho -listen :9999 &
//	ip netns exec NS1 udpecho -to ADDR:9999 -n 200 -gap 20ms
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"time"
)

func main() {
	listen := flag.String("listen", "", "echo datagrams received on this address (server mode)")
	to := flag.String("to", "", "send to this echo server and report round trips (client mode)")
	n := flag.Int("n", 200, "round trips to measure")
	gap := flag.Duration("gap", 20*time.Millisecond, "pause between round trips (long enough for the CPUs to go idle)")
	timeout := flag.Duration("timeout", time.Second, "give up on a reply after this long")
	flag.Parse()
	var err error
	switch {
	case *listen != "" && *to == "":
		err = serve(*listen)
	case *to != "" && *listen == "":
		var s stats
		if s, err = measure(*to, *n, *gap, *timeout); err == nil {
			fmt.Println(s)
		}
	default:
		err = errors.New("give exactly one of -listen and -to")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpecho:", err)
		os.Exit(1)
	}
}

func serve(addr string) error {
	a, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp", a)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c)
}

// echo sends every datagram c receives back to its sender, until c fails
// (or is closed).
func echo(c *net.UDPConn) error {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		if _, err := c.WriteToUDPAddrPort(buf[:n], from); err != nil {
			return err
		}
	}
}

type stats struct {
	n             int
	min, p50, p90 time.Duration
}

func (s stats) String() string {
	return fmt.Sprintf("%d round trips: min %v p50 %v p90 %v", s.n, s.min, s.p50, s.p90)
}

func measure(addr string, n int, gap, timeout time.Duration) (stats, error) {
	if n < 1 {
		return stats{}, fmt.Errorf("-n %d: want at least 1", n)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		return stats{}, err
	}
	defer c.Close()
	out, in := make([]byte, 64), make([]byte, 2048)
	rtts := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		out[0], out[1] = byte(i>>8), byte(i)
		start := time.Now()
		if _, err := c.Write(out); err != nil {
			return stats{}, err
		}
		c.SetReadDeadline(start.Add(timeout))
		for {
			m, err := c.Read(in)
			if err != nil {
				return stats{}, fmt.Errorf("round trip %d: %w", i, err)
			}
			if m == len(out) && in[0] == out[0] && in[1] == out[1] {
				break // not a late reply to an earlier round
			}
		}
		rtts = append(rtts, time.Since(start))
		time.Sleep(gap)
	}
	slices.Sort(rtts)
	return stats{n: n, min: rtts[0], p50: rtts[len(rtts)/2], p90: rtts[len(rtts)*9/10]}, nil
}
