package lab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"strconv"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// PingResult is what `ping` reported.
type PingResult struct {
	Sent, Received int
	// AvgRTT is ping's average round-trip time; zero if nothing came back.
	AvgRTT time.Duration
	// Output is ping's whole output, for error reports.
	Output string
}

var (
	pingCounts = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTT    = regexp.MustCompile(`= [\d.]+/([\d.]+)/`)
)

// Ping runs `ping -c count -i 0.2 -W 2 addr` inside netns. The error is
// non-nil unless every echo came back.
func (l *Lab) Ping(ctx context.Context, netns, addr string, count int) (PingResult, error) {
	out, err := l.Exec(ctx, netns, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", addr)
	r := PingResult{Output: string(out)}
	if m := pingCounts.FindStringSubmatch(r.Output); m != nil {
		r.Sent, _ = strconv.Atoi(m[1])
		r.Received, _ = strconv.Atoi(m[2])
	}
	if m := pingRTT.FindStringSubmatch(r.Output); m != nil {
		if ms, perr := strconv.ParseFloat(m[1], 64); perr == nil {
			r.AvgRTT = time.Duration(ms * float64(time.Millisecond))
		}
	}
	if err != nil {
		return r, fmt.Errorf("ping %s from %s: %w", addr, netns, err)
	}
	if r.Sent == 0 || r.Received != r.Sent {
		return r, fmt.Errorf("ping %s from %s: %d/%d replies", addr, netns, r.Received, r.Sent)
	}
	return r, nil
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
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()

	var ln net.Listener
	err := ns.WithNetNSPath(to.NetnsPath, func(ns.NetNS) error {
		var lc net.ListenConfig
		var err error
		ln, err = lc.Listen(ctx, "tcp4", net.JoinHostPort(to.Address, "0"))
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
		conn, err = d.DialContext(ctx, "tcp4", ln.Addr().String())
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
