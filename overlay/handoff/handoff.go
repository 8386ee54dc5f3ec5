// Package handoff moves a running weftd's datapath to a new weftd on the
// same node without a gap: the old process (the donor) passes its live
// descriptors (the TUN device, the VXLAN socket, the health and metrics
// listeners) and its peer table over a unix socket in the run directory,
// with SCM_RIGHTS, and stops reading only once the new one (the taker)
// has everything it needs to forward.
//
// The exchange, one JSON message per step on one stream connection (the
// taker speaks first, the donor answers each step):
//
//	taker                      donor
//	hello  ───────────────▶
//	       ◀─────────────── state + descriptors (donor keeps forwarding)
//	pause  ───────────────▶    stops its reads, frees the WireGuard port
//	       ◀─────────────── paused
//	release-gossip ───────▶    stops gossip without leaving the cluster
//	       ◀─────────────── gossip-released
//	done   ───────────────▶    closes its copies, serves nothing more
//	       ◀─────────────── bye
//
// Until the taker has sent release-gossip, a failed hand-off (the taker
// exits, refuses the state, or stalls past a step's deadline) leaves the
// donor running: it resumes its reads and takes its WireGuard port back.
// After release-gossip the donor cannot resume (its gossip is gone) and
// the session's end is reported as lost; the datapath still survives a
// lost taker, as it survives any stopped weftd (the device and its routes
// persist, and the next start is warm).
//
// Descriptors travel as references to the same open files: both processes
// read the same TUN queue and socket until the donor pauses, which is
// harmless (each packet is read once, by one of them). Their status flags
// (non-blocking mode) are shared too, so neither side may call Fd on them.
package handoff

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the protocol version; a taker and a donor of different
// versions do not hand off.
const Version = 1

// SocketName is the socket's name in the run directory.
const SocketName = "handoff.sock"

// Deadlines of the steps. The taker may take long between state and
// pause (in Kubernetes mode it waits for the API server first); the later
// steps are its start-up of one component each.
const (
	helloTimeout = 5 * time.Second
	pauseTimeout = 2 * time.Minute
	stepTimeout  = 30 * time.Second
)

// maxMessage bounds one message (the peer table: 512-byte records).
const maxMessage = 4 << 20

// maxFiles bounds the descriptors of one state message.
const maxFiles = 16

// State is what the donor passes besides its descriptors.
type State struct {
	Version int    `json:"version"`
	Node    string `json:"node"`
	PID     int    `json:"pid"`
	// Peers are the admitted peer records the donor forwards to, each
	// in the gossip codec (peer.Record.MarshalBinary): the taker decodes,
	// validates and admits them as it does gossiped ones.
	Peers [][]byte `json:"peers"`
	// Files names the descriptors, in the order they travel.
	Files []string `json:"files"`
}

// Conn is one descriptor to pass: an os.File, a net.UDPConn, a
// net.TCPListener or anything else whose raw descriptor SyscallConn gives.
type Conn struct {
	Name string
	Conn syscall.Conn
}

// Donor is the running weftd's side. Each method is called once per
// session at most, in this order; the session ends after Finish or after
// Resume.
type Donor interface {
	// State returns the state and the descriptors to pass. The donor
	// keeps using them.
	State() (State, []Conn, error)
	// Pause stops every read of the datapath's descriptors and frees
	// what cannot be shared (the WireGuard port).
	Pause() error
	// Resume undoes Pause: the taker went away before release-gossip.
	Resume()
	// ReleaseGossip stops gossip without leaving and frees its port.
	ReleaseGossip() error
	// Finish closes the donor's copies of everything and stops its
	// control socket; from then on it serves nothing.
	Finish()
}

type message struct {
	Op    string `json:"op"`
	Error string `json:"error,omitempty"`
	State *State `json:"state,omitempty"`
	PID   int    `json:"pid,omitempty"`
}

const (
	opHello          = "hello"
	opState          = "state"
	opPause          = "pause"
	opPaused         = "paused"
	opReleaseGossip  = "release-gossip"
	opGossipReleased = "gossip-released"
	opDone           = "done"
	opBye            = "bye"
	opError          = "error"
)

// ErrNoDonor is Dial's error when no weftd serves the socket.
var ErrNoDonor = errors.New("no running weftd to take over from")

// ErrLost is Serve's error when a taker went away after release-gossip:
// the donor can no longer resume.
var ErrLost = errors.New("hand-off lost after gossip was released")

// Serve answers takers on the socket at path until ctx ends or a hand-off
// completes, one session at a time. It returns nil when ctx ends, and
// ErrHandedOff once a session reached bye; ErrLost as above. A stale
// socket file of a dead weftd is replaced.
func Serve(ctx context.Context, path string, d Donor) error {
	l, err := listen(path)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("hand-off socket %s: %w", path, err)
		}
		err = session(c, d, l)
		c.Close()
		if errors.Is(err, ErrHandedOff) || errors.Is(err, ErrLost) {
			return err
		}
	}
}

// ErrHandedOff is Serve's result once the taker runs the datapath.
var ErrHandedOff = errors.New("handed off to a new weftd")

func listen(path string) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("hand-off socket %s: another weftd serves it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// session runs one taker's exchange on c, accepted from l. It returns ErrHandedOff after bye,
// ErrLost when the taker vanished after release-gossip, and another error
// (the donor carries on) otherwise.
func session(c *net.UnixConn, d Donor, l *net.UnixListener) error {
	r := bufio.NewReaderSize(c, 4096)
	if _, err := recv(c, r, helloTimeout, opHello); err != nil {
		return err
	}
	st, conns, err := d.State()
	if err != nil {
		send(c, message{Op: opError, Error: err.Error()}, nil)
		return err
	}
	st.Version = Version
	st.Files = st.Files[:0]
	for _, cn := range conns {
		st.Files = append(st.Files, cn.Name)
	}
	if err := send(c, message{Op: opState, State: &st}, conns); err != nil {
		return err
	}
	if _, err := recv(c, r, pauseTimeout, opPause); err != nil {
		return err
	}
	if err := d.Pause(); err != nil {
		d.Resume()
		send(c, message{Op: opError, Error: err.Error()}, nil)
		return fmt.Errorf("pause: %w", err)
	}
	if err := send(c, message{Op: opPaused}, nil); err != nil {
		d.Resume()
		return err
	}
	if _, err := recv(c, r, stepTimeout, opReleaseGossip); err != nil {
		d.Resume()
		return err
	}
	if err := d.ReleaseGossip(); err != nil {
		send(c, message{Op: opError, Error: err.Error()}, nil)
		return fmt.Errorf("%w: %v", ErrLost, err)
	}
	if err := send(c, message{Op: opGossipReleased}, nil); err != nil {
		return fmt.Errorf("%w: %v", ErrLost, err)
	}
	if _, err := recv(c, r, stepTimeout, opDone); err != nil {
		return fmt.Errorf("%w: %v", ErrLost, err)
	}
	d.Finish()
	// The socket goes before bye: the taker serves its own at this path
	// next, and a later close would unlink it.
	l.Close()
	send(c, message{Op: opBye}, nil)
	return ErrHandedOff
}

// Taker is the new weftd's side of one session, from Dial to Done.
type Taker struct {
	c     *net.UnixConn
	r     *bufio.Reader
	State State
	// Files are the passed descriptors by name. The taker owns them;
	// those it does not use it closes (Close closes what is left).
	Files map[string]*os.File
}

// Dial connects to the donor at path and receives its state and
// descriptors. It returns ErrNoDonor when no weftd answers there.
func Dial(path string) (*Taker, error) {
	nc, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, ErrNoDonor
		}
		return nil, fmt.Errorf("hand-off socket %s: %w", path, err)
	}
	t := &Taker{c: nc.(*net.UnixConn), Files: map[string]*os.File{}}
	t.r = bufio.NewReaderSize(t.c, 4096)
	if err := send(t.c, message{Op: opHello, PID: os.Getpid()}, nil); err != nil {
		t.Close()
		return nil, err
	}
	m, files, err := recvFiles(t.c, helloTimeout)
	if err != nil {
		t.Close()
		return nil, err
	}
	if m.Op != opState || m.State == nil {
		closeAll(files)
		t.Close()
		return nil, stepError(m, opState)
	}
	if m.State.Version != Version {
		closeAll(files)
		t.Close()
		return nil, fmt.Errorf("hand-off: donor speaks version %d, this weftd %d", m.State.Version, Version)
	}
	if len(files) != len(m.State.Files) {
		closeAll(files)
		t.Close()
		return nil, fmt.Errorf("hand-off: %d descriptors for %d names", len(files), len(m.State.Files))
	}
	t.State = *m.State
	for i, name := range m.State.Files {
		if _, dup := t.Files[name]; dup {
			closeAll(files)
			t.Close()
			return nil, fmt.Errorf("hand-off: descriptor %q twice", name)
		}
		t.Files[name] = files[i]
	}
	return t, nil
}

// Take removes the descriptor name from Files and returns it, or nil.
func (t *Taker) Take(name string) *os.File {
	f := t.Files[name]
	delete(t.Files, name)
	return f
}

// Pause asks the donor to stop reading; once it returns, the taker's
// reads are the only ones.
func (t *Taker) Pause() error { return t.step(opPause, opPaused) }

// ReleaseGossip asks the donor to stop gossip (without leaving).
func (t *Taker) ReleaseGossip() error { return t.step(opReleaseGossip, opGossipReleased) }

// Done ends the hand-off: the donor closes its copies and its sockets.
func (t *Taker) Done() error {
	err := t.step(opDone, opBye)
	t.Close()
	return err
}

func (t *Taker) step(op, want string) error {
	if err := send(t.c, message{Op: op}, nil); err != nil {
		return fmt.Errorf("hand-off %s: %w", op, err)
	}
	if _, err := recv(t.c, t.r, stepTimeout, want); err != nil {
		return fmt.Errorf("hand-off %s: %w", op, err)
	}
	return nil
}

// Close ends the session (before Done: the donor resumes, if it still
// can) and closes the descriptors not taken.
func (t *Taker) Close() {
	t.c.Close()
	for name, f := range t.Files {
		f.Close()
		delete(t.Files, name)
	}
}

// send writes m as one JSON line, with conns' descriptors attached.
func send(c *net.UnixConn, m message, conns []Conn) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	c.SetWriteDeadline(time.Now().Add(stepTimeout))
	return withFDs(conns, nil, func(fds []int) error {
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		n, _, err := c.WriteMsgUnix(b, oob, nil)
		if err == nil && n != len(b) {
			err = fmt.Errorf("short write: %d of %d bytes", n, len(b))
		}
		return err
	})
}

// withFDs calls f with the raw descriptors of conns, each held (through
// its SyscallConn's Control) so that none is closed meanwhile.
func withFDs(conns []Conn, fds []int, f func([]int) error) error {
	if len(conns) == 0 {
		return f(fds)
	}
	rc, err := conns[0].Conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("descriptor %s: %w", conns[0].Name, err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = withFDs(conns[1:], append(fds, int(fd)), f) }); err != nil {
		return fmt.Errorf("descriptor %s: %w", conns[0].Name, err)
	}
	return ferr
}

// recv reads one message that must be want (an error message or another
// step fails). It takes no descriptors.
func recv(c *net.UnixConn, r *bufio.Reader, timeout time.Duration, want string) (message, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	line, err := readLine(r)
	if err != nil {
		return message{}, err
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return message{}, fmt.Errorf("hand-off message: %w", err)
	}
	if m.Op != want {
		return m, stepError(m, want)
	}
	return m, nil
}

func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxMessage {
			return nil, fmt.Errorf("hand-off message over %d bytes", maxMessage)
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// recvFiles reads the state message, which carries descriptors, straight
// from the connection (no buffered reader has read ahead of it: the taker
// sent hello and nothing was received before).
func recvFiles(c *net.UnixConn, timeout time.Duration) (message, []*os.File, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(maxFiles*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return message{}, nil, err
	}
	files, ferr := parseFiles(oob[:oobn])
	switch {
	case ferr != nil:
		closeAll(files)
		return message{}, nil, ferr
	case flags&unix.MSG_CTRUNC != 0:
		closeAll(files)
		return message{}, nil, fmt.Errorf("hand-off: more than %d descriptors", maxFiles)
	}
	// A stream: a long message may come in more reads; the descriptors
	// came with its first bytes, and the donor sends nothing after it
	// until the next step.
	for n == 0 || buf[n-1] != '\n' {
		if n == len(buf) {
			closeAll(files)
			return message{}, nil, fmt.Errorf("hand-off message over %d bytes", maxMessage)
		}
		m, err := c.Read(buf[n:])
		if err != nil {
			closeAll(files)
			return message{}, nil, fmt.Errorf("hand-off: state message cut short: %w", err)
		}
		n += m
	}
	var m message
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		closeAll(files)
		return message{}, nil, fmt.Errorf("hand-off message: %w", err)
	}
	return m, files, nil
}

func parseFiles(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("hand-off descriptors: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "handoff"))
		}
	}
	return files, nil
}

func stepError(m message, want string) error {
	if m.Op == opError {
		return fmt.Errorf("hand-off refused: %s", m.Error)
	}
	return fmt.Errorf("hand-off: got %q, want %q", m.Op, want)
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
