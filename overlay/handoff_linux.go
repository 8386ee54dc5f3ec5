package overlay

// The router's side of a hand-off (package overlay/handoff): its TUN
// device and VXLAN socket are passed to a new weftd, which reads them
// beside this router until Pause parks this router's read loops; Resume
// lets them read again when the new weftd went away instead.
//
// Parking works through read deadlines: Pause sets a deadline in the past
// on this process's TUN file and VXLAN socket, every blocked read returns
// os.ErrDeadlineExceeded, and each loop waits in park until Resume or
// Close. A deadline belongs to this process's descriptor, not to the open
// file the other process shares, so the new weftd's reads go on. The
// WireGuard device reads the same TUN file and parks the same way
// (encap/wireguard's Pause).

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// HandOffConns returns the TUN file and the VXLAN socket to pass on; ok is
// false when the router does not run the fast paths (then there is no
// socket of its own to pass, and no hand-off).
func (r *Router) HandOffConns() (tunFile *os.File, vxlanSocket DeadlineConn, ok bool) {
	rcv, ok := r.receiver.(DeadlineConn)
	if !ok || r.tun == nil || r.tun.File() == nil {
		return nil, nil, false
	}
	return r.tun.File(), rcv, true
}

// DeadlineConn is a socket that can be passed on and whose reads a
// deadline ends (the VXLAN receiver).
type DeadlineConn interface {
	syscall.Conn
	SetReadDeadline(time.Time) error
}

// Pause parks the read loops and returns once every one of them is
// parked (or after a second, with an error: the caller resumes).
func (r *Router) Pause() error {
	f, rcv, ok := r.HandOffConns()
	if !ok {
		return errors.New("router: no fast path, nothing to pause")
	}
	r.pauseMu.Lock()
	if r.resume == nil {
		r.resume = make(chan struct{})
	}
	r.pauseMu.Unlock()
	past := time.Unix(1, 0)
	if err := errors.Join(f.SetReadDeadline(past), rcv.SetReadDeadline(past)); err != nil {
		return fmt.Errorf("router pause: %w", err)
	}
	deadline := time.Now().Add(time.Second)
	for r.parked.Load() < r.readLoops.Load() {
		if time.Now().After(deadline) {
			return fmt.Errorf("router pause: %d of %d read loops parked after 1s", r.parked.Load(), r.readLoops.Load())
		}
		time.Sleep(100 * time.Microsecond)
	}
	return nil
}

// Resume clears the deadlines and wakes the parked loops.
func (r *Router) Resume() {
	if f, rcv, ok := r.HandOffConns(); ok {
		f.SetReadDeadline(time.Time{})
		rcv.SetReadDeadline(time.Time{})
	}
	r.pauseMu.Lock()
	if r.resume != nil {
		close(r.resume)
		r.resume = nil
	}
	r.pauseMu.Unlock()
}

// park waits, when err is the deadline Pause set, until Resume or Close,
// and reports whether it did (the loop then reads again).
func (r *Router) park(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	r.pauseMu.Lock()
	wake := r.resume
	r.pauseMu.Unlock()
	if wake == nil {
		return true // resumed meanwhile
	}
	r.parked.Add(1)
	defer r.parked.Add(-1)
	select {
	case <-wake:
	case <-r.done:
	}
	return true
}
