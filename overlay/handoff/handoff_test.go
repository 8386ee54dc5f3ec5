package handoff

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// donor records the calls a session makes and passes one pipe's write
// end and a TCP listener.
type donor struct {
	mu    sync.Mutex
	calls []string

	w        *os.File // passed; the test reads its pipe's other end
	ln       *net.TCPListener
	pauseErr error
}

func (d *donor) call(s string) {
	d.mu.Lock()
	d.calls = append(d.calls, s)
	d.mu.Unlock()
}

func (d *donor) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

func (d *donor) State() (State, []Conn, error) {
	d.call("state")
	return State{Node: "n1", PID: 42, Peers: [][]byte{{1, 2, 3}}}, []Conn{{"pipe", d.w}, {"health", d.ln}}, nil
}
func (d *donor) Pause() error         { d.call("pause"); return d.pauseErr }
func (d *donor) Resume()              { d.call("resume") }
func (d *donor) ReleaseGossip() error { d.call("release-gossip"); return nil }
func (d *donor) Finish()              { d.call("finish") }

func newDonor(t *testing.T) (*donor, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close(); ln.Close() })
	return &donor{w: w, ln: ln}, r
}

// serve runs Serve in the background and returns its result channel.
func serve(t *testing.T, path string, d Donor) (<-chan error, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- Serve(ctx, path, d) }()
	// Up once it accepts (a connection that says nothing ends its
	// session at once).
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			break
		}
		if i > 200 {
			t.Fatal("hand-off socket never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Cleanup(cancel)
	return res, cancel
}

func result(t *testing.T, res <-chan error) error {
	t.Helper()
	select {
	case err := <-res:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

// TestHandOff: the whole exchange passes live descriptors (a write to the
// passed pipe end arrives at the donor's reader; the passed listener
// accepts the donor's listener's connections), the state, and calls the
// donor's steps in order; Serve reports the hand-off.
func TestHandOff(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	d, r := newDonor(t)
	res, _ := serve(t, path, d)

	tk, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	if tk.State.Node != "n1" || tk.State.PID != 42 || len(tk.State.Peers) != 1 || tk.State.Version != Version {
		t.Fatalf("state %+v", tk.State)
	}
	pipe := tk.Take("pipe")
	if pipe == nil || tk.Take("pipe") != nil {
		t.Fatalf("Take(pipe): want the descriptor once, got %v", pipe)
	}
	if _, err := pipe.Write([]byte("through")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "through" {
		t.Fatalf("read %q, %v: the passed descriptor is not the donor's pipe", buf[:n], err)
	}
	hf := tk.Take("health")
	ln, err := net.FileListener(hf)
	hf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != d.ln.Addr().String() {
		t.Fatalf("passed listener on %s, donor's on %s", ln.Addr(), d.ln.Addr())
	}

	if err := tk.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := tk.ReleaseGossip(); err != nil {
		t.Fatal(err)
	}
	if err := tk.Done(); err != nil {
		t.Fatal(err)
	}
	if err := result(t, res); !errors.Is(err, ErrHandedOff) {
		t.Fatalf("Serve: %v, want ErrHandedOff", err)
	}
	if got, want := d.Calls(), []string{"state", "pause", "release-gossip", "finish"}; !slices.Equal(got, want) {
		t.Fatalf("donor calls %v, want %v", got, want)
	}
}

// TestTakerGoneBeforeRelease: a taker that disappears after pause (it
// crashed starting up) makes the donor resume and serve the next taker.
func TestTakerGoneBeforeRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	d, _ := newDonor(t)
	res, cancel := serve(t, path, d)

	tk, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Pause(); err != nil {
		t.Fatal(err)
	}
	tk.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(d.Calls(), "resume") {
		if time.Now().After(deadline) {
			t.Fatalf("donor never resumed: %v", d.Calls())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A second taker is served.
	tk2, err := Dial(path)
	if err != nil {
		t.Fatalf("second taker: %v", err)
	}
	tk2.Close()
	cancel()
	if err := result(t, res); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if got := d.Calls(); slices.Contains(got, "finish") || slices.Contains(got, "release-gossip") {
		t.Fatalf("donor calls %v: an aborted hand-off went on", got)
	}
}

// TestTakerGoneAfterRelease: once gossip is released the donor cannot
// resume; Serve says the hand-off was lost.
func TestTakerGoneAfterRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	d, _ := newDonor(t)
	res, _ := serve(t, path, d)
	tk, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := tk.ReleaseGossip(); err != nil {
		t.Fatal(err)
	}
	tk.Close()
	if err := result(t, res); !errors.Is(err, ErrLost) {
		t.Fatalf("Serve: %v, want ErrLost", err)
	}
	if slices.Contains(d.Calls(), "resume") {
		t.Fatal("donor resumed after releasing gossip")
	}
}

// TestPauseRefused: a donor that cannot pause resumes and tells the taker.
func TestPauseRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	d, _ := newDonor(t)
	d.pauseErr = errors.New("wireguard port busy")
	serve(t, path, d)
	tk, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer tk.Close()
	if err := tk.Pause(); err == nil || !contains(err.Error(), "wireguard port busy") {
		t.Fatalf("Pause: %v, want the donor's reason", err)
	}
}

// TestNoDonor: no socket, and a stale socket file of a dead weftd, are
// ErrNoDonor; Serve replaces the stale file; a second Serve on a live
// socket is refused.
func TestNoDonor(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SocketName)
	if _, err := Dial(path); !errors.Is(err, ErrNoDonor) {
		t.Fatalf("Dial without a socket: %v", err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody listens: a crashed weftd's
	if _, err := Dial(path); !errors.Is(err, ErrNoDonor) {
		t.Fatalf("Dial to a stale socket: %v", err)
	}
	d, _ := newDonor(t)
	serve(t, path, d)
	if err := Serve(context.Background(), path, d); err == nil || !contains(err.Error(), "another weftd") {
		t.Fatalf("second Serve: %v", err)
	}
}

// TestGarbageFromTaker: a peer that sends bytes that are not the protocol
// gets nothing and the donor carries on.
func TestGarbageFromTaker(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	d, _ := newDonor(t)
	serve(t, path, d)
	for _, junk := range []string{"not json\n", `{"op":"pause"}` + "\n", `{"op":"hello"` + "\n", "\n"} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(junk))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if contains(string(b), `"state"`) {
			t.Fatalf("junk %q got the state: %s", junk, b)
		}
	}
	if got := d.Calls(); len(got) != 0 {
		t.Fatalf("donor calls %v after junk", got)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
