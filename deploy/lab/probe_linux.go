package lab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// PingResult is the outcome of Ping.
type PingResult struct {
	Sent, Received int
	// AvgRTT is the average round-trip time of the replies; zero if
	// nothing came back.
	AvgRTT time.Duration
	// Output is a ping(8)-style transcript, for error reports.
	Output string
}

// Ping timing, as `ping -i 0.2 -W 2`: an echo every 200 ms, each waited
// for up to 2 s.
const (
	pingInterval = 200 * time.Millisecond
	pingWait     = 2 * time.Second
)

// Ping sends count ICMP echo requests (ICMPv6 for an IPv6 addr) to addr from inside
// the network namespace netns and waits for each reply. It needs no ping
// program: the raw ICMP socket is made on a thread inside netns and stays
// there. The error is non-nil unless every echo came back.
func (l *Lab) Ping(ctx context.Context, netns, addr string, count int) (PingResult, error) {
	var r PingResult
	dst, err := netip.ParseAddr(addr)
	if err != nil {
		return r, fmt.Errorf("ping %s from %s: not an IP address", addr, netns)
	}
	dst = dst.Unmap()
	var c *icmp.PacketConn
	err = ns.WithNetNSPath(filepath.Join(netnsDir, netns), func(ns.NetNS) error {
		var err error
		if dst.Is6() {
			// The kernel fills in the ICMPv6 checksum of a raw socket.
			c, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		} else {
			c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		}
		return err
	})
	if err != nil {
		return r, fmt.Errorf("ping %s from %s: icmp socket: %w", addr, netns, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var out strings.Builder
	fmt.Fprintf(&out, "PING %s from %s\n", addr, netns)
	id := int(rand.Uint32() & 0xffff)
	var total time.Duration
	for seq := 1; seq <= count && ctx.Err() == nil; seq++ {
		sent := time.Now()
		rtt, err := echo(c, dst, id, seq, sent)
		r.Sent++
		if err != nil {
			fmt.Fprintf(&out, "icmp_seq=%d: %v\n", seq, err)
		} else {
			r.Received++
			total += rtt
			fmt.Fprintf(&out, "reply from %s: icmp_seq=%d time=%.3f ms\n", addr, seq, float64(rtt)/float64(time.Millisecond))
		}
		if seq < count {
			sleepCtx(ctx, time.Until(sent.Add(pingInterval)))
		}
	}
	if r.Received > 0 {
		r.AvgRTT = total / time.Duration(r.Received)
	}
	fmt.Fprintf(&out, "%d packets transmitted, %d received\n", r.Sent, r.Received)
	r.Output = out.String()
	if err := ctx.Err(); err != nil {
		return r, fmt.Errorf("ping %s from %s: %w", addr, netns, err)
	}
	if r.Sent == 0 || r.Received != r.Sent {
		return r, fmt.Errorf("ping %s from %s: %d/%d replies", addr, netns, r.Received, r.Sent)
	}
	return r, nil
}

// echo sends one echo request and waits up to pingWait for its reply. The
// raw socket sees every ICMP message of the namespace, so replies are
// matched by source, identifier and sequence number.
func echo(c *icmp.PacketConn, dst netip.Addr, id, seq int, sent time.Time) (time.Duration, error) {
	payload := make([]byte, 56)
	copy(payload, "weft lab ping")
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1 // ICMP
	if dst.Is6() {
		reqType, replyType, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	req := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq, Data: payload}}
	b, err := req.Marshal(nil)
	if err != nil {
		return 0, err
	}
	to := &net.IPAddr{IP: dst.AsSlice()}
	if _, err := c.WriteTo(b, to); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	if err := c.SetReadDeadline(sent.Add(pingWait)); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return 0, fmt.Errorf("no reply: %w", err)
		}
		if a, ok := from.(*net.IPAddr); !ok || !a.IP.Equal(to.IP) {
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != replyType {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq {
			return time.Since(sent), nil
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// TransferResult is one TCP transfer between two pods.
type TransferResult struct {
	Bytes    int64
	Duration time.Duration
}

// MBps is the goodput in MB/s (10^6 bytes per second).
func (r TransferResult) MBps() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) / r.Duration.Seconds() / 1e6
}

// Transfer sends size pseudo-random bytes over TCP from pod from to pod to
// and checks that the SHA-256 of what arrived equals that of what was sent.
// It runs in this process: the listening socket is made on a thread inside
// to's namespace and the dialing one inside from's, and a socket stays in
// the namespace it was created in, so the rest of the I/O runs anywhere.
func (l *Lab) Transfer(ctx context.Context, from, to Pod, size int64) (TransferResult, error) {
	return l.TransferTo(ctx, from, to, to.Address, size)
}

// TransferTo is Transfer to the address addr of pod to: its Address6
// for IPv6 in a dual-stack lab.
func (l *Lab) TransferTo(ctx context.Context, from, to Pod, addr string, size int64) (TransferResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()

	var ln net.Listener
	err := ns.WithNetNSPath(to.NetnsPath, func(ns.NetNS) error {
		var lc net.ListenConfig
		var err error
		ln, err = lc.Listen(ctx, "tcp", net.JoinHostPort(addr, "0"))
		return err
	})
	if err != nil {
		return TransferResult{}, fmt.Errorf("transfer %s→%s: listen: %w", from.Name, to.Name, err)
	}
	defer ln.Close()

	type recv struct {
		sum [sha256.Size]byte
		n   int64
		at  time.Time
		err error
	}
	got := make(chan recv, 1)
	go func() {
		var r recv
		defer func() { got <- r }()
		c, err := ln.Accept()
		if err != nil {
			r.err = fmt.Errorf("accept: %w", err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		h := sha256.New()
		r.n, r.err = io.Copy(h, c)
		r.at = time.Now()
		copy(r.sum[:], h.Sum(nil))
	}()
	// Unblock Accept and the receiver's read if the context ends first.
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var conn net.Conn
	err = ns.WithNetNSPath(from.NetnsPath, func(ns.NetNS) error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp", ln.Addr().String())
		return err
	})
	if err != nil {
		ln.Close()
		<-got
		return TransferResult{}, fmt.Errorf("transfer %s→%s: dial: %w", from.Name, to.Name, err)
	}
	start := time.Now()
	sent, werr := send(conn, size, deadline)
	conn.Close()
	r := <-got
	res := TransferResult{Bytes: r.n, Duration: r.at.Sub(start)}
	if err := errors.Join(werr, r.err); err != nil {
		return res, fmt.Errorf("transfer %s→%s: %w", from.Name, to.Name, err)
	}
	if r.n != size || r.sum != sent {
		return res, fmt.Errorf("transfer %s→%s: received %d bytes, sent %d; sha256 match %v", from.Name, to.Name, r.n, size, r.sum == sent)
	}
	return res, nil
}

// send writes size pseudo-random bytes to c, half-closes it, and returns
// the SHA-256 of what it wrote.
func send(c net.Conn, size int64, deadline time.Time) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	_ = c.SetDeadline(deadline)
	rng := rand.NewChaCha8([32]byte{'w', 'e', 'f', 't'})
	buf := make([]byte, 64<<10)
	h := sha256.New()
	for left := size; left > 0; {
		b := buf
		if int64(len(b)) > left {
			b = b[:left]
		}
		_, _ = rng.Read(b)
		h.Write(b)
		if _, err := c.Write(b); err != nil {
			return sum, fmt.Errorf("send: %w", err)
		}
		left -= int64(len(b))
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.CloseWrite(); err != nil {
			return sum, fmt.Errorf("send: close write: %w", err)
		}
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
