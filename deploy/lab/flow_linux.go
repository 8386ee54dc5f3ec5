package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// A Flow is what a pod's traffic looks like through a disturbance (a
// weftd restart, say), measured at the receiver: one TCP stream sent as
// fast as it goes, and a UDP probe datagram every FlowProbeInterval. Both
// run between two pods from StartFlow until Stop.
type Flow struct {
	from Pod
	stop chan struct{}
	wg   sync.WaitGroup

	stopOnce sync.Once
	final    FlowResult // Stop's result

	mu     sync.Mutex // guards the fields below
	res    FlowResult
	lastRx time.Time // last TCP bytes delivered
	lastPr time.Time // last probe arrived
	got    int       // probes arrived
	retr0  uint64
}

// FlowProbeInterval is the probe's period, and the resolution of the gaps
// a Flow reports.
const FlowProbeInterval = 10 * time.Millisecond

// FlowResult is what Stop reports.
type FlowResult struct {
	Bytes int64 // TCP payload delivered
	// Survived: the one TCP connection carried on to the end, no error.
	Survived bool
	Err      error // what ended the TCP stream early, if anything
	// LongestStall is the longest stretch in which no TCP byte arrived.
	LongestStall time.Duration
	// ProbesSent and ProbesLost count the UDP probes; LongestProbeGap is
	// the longest time between two that arrived.
	ProbesSent, ProbesLost int
	LongestProbeGap        time.Duration
	// Retransmits is the sender namespace's TCP retransmitted segments
	// during the flow (TcpRetransSegs).
	Retransmits uint64
}

// StartFlow starts a Flow from pod from to pod to. The sockets are made on
// threads inside the pods' namespaces and stay there.
func (l *Lab) StartFlow(ctx context.Context, from, to Pod) (*Flow, error) {
	f := &Flow{from: from, stop: make(chan struct{})}
	var ln net.Listener
	var rx net.PacketConn
	if err := ns.WithNetNSPath(to.NetnsPath, func(ns.NetNS) error {
		var err error
		if ln, err = net.Listen("tcp4", net.JoinHostPort(to.Address, "0")); err != nil {
			return err
		}
		rx, err = net.ListenPacket("udp4", net.JoinHostPort(to.Address, "0"))
		return err
	}); err != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, fmt.Errorf("flow %s→%s: listen: %w", from.Name, to.Name, err)
	}
	var conn net.Conn
	var tx net.PacketConn
	err := ns.WithNetNSPath(from.NetnsPath, func(ns.NetNS) error {
		var err error
		if f.retr0, err = retransmits(); err != nil {
			return err
		}
		var d net.Dialer
		if conn, err = d.DialContext(ctx, "tcp4", ln.Addr().String()); err != nil {
			return err
		}
		tx, err = net.ListenPacket("udp4", net.JoinHostPort(from.Address, "0"))
		return err
	})
	if err != nil {
		ln.Close()
		rx.Close()
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("flow %s→%s: %w", from.Name, to.Name, err)
	}
	accepted, err := ln.Accept()
	ln.Close()
	if err != nil {
		conn.Close()
		rx.Close()
		tx.Close()
		return nil, fmt.Errorf("flow %s→%s: accept: %w", from.Name, to.Name, err)
	}
	now := time.Now()
	f.lastRx, f.lastPr = now, now
	f.wg.Add(4)
	go f.send(conn)
	go f.receive(accepted)
	go f.probe(tx, rx.LocalAddr())
	go f.listen(rx)
	return f, nil
}

// FlowMarker is the payload of every probe: a capture on the underlay
// finds a plaintext copy by it.
var FlowMarker = []byte("weft-flow-probe-7c41")

func (f *Flow) send(c net.Conn) {
	defer f.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-f.stop:
			if tc, ok := c.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		default:
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			f.fail(fmt.Errorf("send: %w", err))
			c.Close()
			return
		}
	}
}

func (f *Flow) receive(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	buf := make([]byte, 256<<10)
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := c.Read(buf)
		now := time.Now()
		f.mu.Lock()
		if n > 0 {
			f.res.Bytes += int64(n)
			f.res.LongestStall = max(f.res.LongestStall, now.Sub(f.lastRx))
			f.lastRx = now
		}
		f.mu.Unlock()
		if errors.Is(err, io.EOF) {
			f.mu.Lock()
			f.res.Survived = f.res.Err == nil
			f.mu.Unlock()
			return
		}
		if err != nil {
			f.fail(fmt.Errorf("receive: %w", err))
			return
		}
	}
}

func (f *Flow) probe(tx net.PacketConn, to net.Addr) {
	defer f.wg.Done()
	defer tx.Close()
	t := time.NewTicker(FlowProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			if _, err := tx.WriteTo(FlowMarker, to); err == nil {
				f.mu.Lock()
				f.res.ProbesSent++
				f.mu.Unlock()
			}
		}
	}
}

func (f *Flow) listen(rx net.PacketConn) {
	defer f.wg.Done()
	defer rx.Close()
	buf := make([]byte, 256)
	defer func() {
		f.mu.Lock()
		f.res.ProbesLost = max(0, f.res.ProbesSent-f.got)
		f.mu.Unlock()
	}()
	for {
		rx.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, _, err := rx.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			select {
			case <-f.stop:
				return // stopped, and nothing more in flight
			default:
				continue
			}
		}
		if err != nil {
			return
		}
		if !bytes.Equal(buf[:n], FlowMarker) {
			continue
		}
		now := time.Now()
		f.mu.Lock()
		f.got++
		f.res.LongestProbeGap = max(f.res.LongestProbeGap, now.Sub(f.lastPr))
		f.lastPr = now
		f.mu.Unlock()
	}
}

// Probes reports, while the flow runs, how many probes were sent and how
// many arrived.
func (f *Flow) Probes() (sent, arrived int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.res.ProbesSent, f.got
}

func (f *Flow) fail(err error) {
	f.mu.Lock()
	if f.res.Err == nil {
		f.res.Err = err
	}
	f.mu.Unlock()
}

// Stop ends the flow (the TCP stream is closed cleanly, the last probes
// are waited for) and reports it. Gaps are rounded up to the probe
// interval, the resolution they are measured at. Later calls report the
// same result.
func (f *Flow) Stop() FlowResult {
	f.stopOnce.Do(func() { f.final = f.stop1() })
	return f.final
}

func (f *Flow) stop1() FlowResult {
	close(f.stop)
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.res
	if err := ns.WithNetNSPath(f.from.NetnsPath, func(ns.NetNS) error {
		n, err := retransmits()
		r.Retransmits = n - f.retr0
		return err
	}); err != nil && r.Err == nil {
		r.Err = err
	}
	r.LongestStall = roundUp(r.LongestStall, FlowProbeInterval)
	r.LongestProbeGap = roundUp(r.LongestProbeGap, FlowProbeInterval)
	return r
}

func roundUp(d, unit time.Duration) time.Duration { return (d + unit - 1) / unit * unit }

// retransmits reads TcpRetransSegs of the calling thread's network
// namespace (/proc/thread-self/net/snmp: /proc/net follows the process's
// first thread, not the one inside the namespace).
func retransmits() (uint64, error) {
	b, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return 0, err
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RetransSegs" && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
	}
	return 0, errors.New("no Tcp RetransSegs in /proc/net/snmp")
}
