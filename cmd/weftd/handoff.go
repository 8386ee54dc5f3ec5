package main

// Hand-off between two weftds on one node (package overlay/handoff has
// the exchange): a weftd that starts while another runs with the same
// --run-dir takes the running one's TUN device, VXLAN socket, health and
// metrics listeners and peer table over, instead of failing on the busy
// device and ports. The donor keeps forwarding until the taker has its
// datapath ready; then the donor parks its reads, and the taker's are the
// only ones. The WireGuard port and the gossip port cannot be shared:
// the donor frees each just before the taker binds it. The taker's
// WireGuard device starts new sessions with every peer at once (the
// donor's keys stay in the donor).
//
// After the hand-off the donor serves nothing. Outside Kubernetes it
// exits; in Kubernetes mode it waits for its SIGTERM instead, since an exit
// would make the kubelet restart it, and the restarted container would
// take the node back (a DaemonSet with maxSurge deletes the old pod once
// the new one is ready).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/overlay/handoff"
	"github.com/weftnet/weft/peer"
)

type handoffFlags struct {
	HandOff bool
}

func (h *handoffFlags) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&h.HandOff, "handoff", true, "take the datapath over from a weftd already running with this --run-dir, without a gap (README: Restarts and upgrades); false: refuse to start beside one")
}

// errHandedOff ends run when this weftd handed its datapath on.
var errHandedOff = errors.New("handed off to a new weftd")

// Names of the descriptors that travel.
const (
	fdTUN     = "tun"
	fdVXLAN   = "vxlan"
	fdHealth  = "health"
	fdMetrics = "metrics"
)

func (c config) handoffSocket() string { return filepath.Join(c.RunDir, handoff.SocketName) }

// takeover is the taker's side, from the donor's state to Done. A nil
// *takeover is a start without a donor; every method is then a no-op.
type takeover struct {
	t     *handoff.Taker
	log   *slog.Logger
	peers []peer.Peer // the donor's peer table, decoded and validated
}

// dialDonor connects to a running weftd of this run directory, if there
// is one, and checks its state. A state that is not this node's, or that
// does not decode, is refused (the donor carries on) with an error.
func dialDonor(c config, log *slog.Logger) (*takeover, error) {
	if !c.HandOff {
		return nil, nil
	}
	t, err := handoff.Dial(c.handoffSocket())
	if errors.Is(err, handoff.ErrNoDonor) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hand-off from the running weftd: %w", err)
	}
	fail := func(err error) (*takeover, error) {
		t.Close()
		return nil, fmt.Errorf("hand-off from weftd pid %d refused: %w", t.State.PID, err)
	}
	if t.State.Node != c.Name {
		return fail(fmt.Errorf("it runs node %q, this weftd is %q (another --run-dir?)", t.State.Node, c.Name))
	}
	if c.claimMode() {
		return fail(errors.New("node-CIDR claims (--node-cidr-size) do not hand off; stop the running weftd first"))
	}
	peers, err := decodeRecords(t.State.Peers, time.Now())
	if err != nil {
		return fail(err)
	}
	for _, name := range []string{fdTUN, fdVXLAN} {
		if t.Files[name] == nil {
			return fail(fmt.Errorf("no %s descriptor passed", name))
		}
	}
	log.Info("hand-off: taking the datapath over", "from_pid", t.State.PID, "peers", len(peers))
	return &takeover{t: t, log: log, peers: peers}, nil
}

// file takes the passed descriptor name, or nil.
func (tk *takeover) file(name string) *os.File {
	if tk == nil {
		return nil
	}
	return tk.t.Take(name)
}

// listener turns the passed listener name into a net.Listener, or nil.
func (tk *takeover) listener(name string) (net.Listener, error) {
	f := tk.file(name)
	if f == nil {
		return nil, nil
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("hand-off: %s listener: %w", name, err)
	}
	return ln, nil
}

// pause makes the donor stop reading; from now on this weftd's reads are
// the only ones, and the donor's WireGuard port is free.
func (tk *takeover) pause() error {
	if tk == nil {
		return nil
	}
	return tk.t.Pause()
}

// releaseGossip makes the donor stop gossip (no leave), freeing its port.
func (tk *takeover) releaseGossip() error {
	if tk == nil {
		return nil
	}
	return tk.t.ReleaseGossip()
}

// done ends the hand-off: the donor closes its sockets (control, UAPI,
// hand-off), so this weftd can serve them next.
func (tk *takeover) done() error {
	if tk == nil {
		return nil
	}
	return tk.t.Done()
}

// abort ends an unfinished hand-off (the donor resumes if it still can).
func (tk *takeover) abort() {
	if tk != nil {
		tk.t.Close()
	}
}

// joinRetry is peer.Join for a taker: the donor's memberlist has just
// closed the gossip port, which the kernel may still hold for a moment.
func joinRetry(cfg peer.Config, self peer.Record, tk *takeover) (*peer.Membership, error) {
	for i := 0; ; i++ {
		m, err := peer.Join(cfg, self)
		if err == nil || tk == nil || i == 40 || !strings.Contains(err.Error(), "address already in use") {
			return m, err
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// donorReq is one step of a session the donor serves, run by run's loop
// so that no step races a peer update.
type donorReq struct {
	op    string
	reply chan donorReply
}

type donorReply struct {
	err   error
	state handoff.State
	conns []handoff.Conn
}

// donor is this weftd's side when a new one takes over: handoff.Donor on
// top of run's loop.
type donor struct{ reqs chan donorReq }

func (d donor) do(op string) donorReply {
	r := donorReq{op: op, reply: make(chan donorReply, 1)}
	d.reqs <- r
	return <-r.reply
}

func (d donor) State() (handoff.State, []handoff.Conn, error) {
	r := d.do("state")
	return r.state, r.conns, r.err
}
func (d donor) Pause() error         { return d.do("pause").err }
func (d donor) Resume()              { d.do("resume") }
func (d donor) ReleaseGossip() error { return d.do("release-gossip").err }
func (d donor) Finish()              { d.do("finish") }

// node is what run's loop holds for the donor's steps.
type node struct {
	c           config
	log         *slog.Logger
	dp          *datapath
	members     *peer.Membership
	kube        *kubeMode
	pipe        *pipeline
	metricsLn   net.Listener
	stopControl context.CancelFunc
	served      <-chan error

	paused     bool // the taker reads; peer updates are its to route
	gossipGone bool
}

// handle runs one donor step in run's loop.
func (n *node) handle(op string) donorReply {
	switch op {
	case "state":
		return n.state()
	case "pause":
		if err := n.dp.router.Pause(); err != nil {
			n.resume()
			return donorReply{err: err}
		}
		if n.dp.wg != nil {
			if err := n.dp.wg.Pause(); err != nil {
				n.resume()
				return donorReply{err: err}
			}
		}
		n.paused = true
		n.log.Info("hand-off: paused, the new weftd reads now")
	case "resume":
		n.resume()
		n.log.Warn("hand-off: the new weftd went away; forwarding again")
	case "release-gossip":
		n.gossipGone = true
		if err := n.members.Close(); err != nil {
			n.log.Warn("hand-off: gossip close", "err", err)
		}
	case "finish":
		// Everything whose name the taker reuses goes now: the control
		// socket (and metrics), the UAPI socket with the WireGuard
		// device, the health listener's copy, the datapath's copies.
		n.stopControl()
		select {
		case <-n.served:
		case <-time.After(2 * time.Second):
		}
		n.dp.Close()
		n.kube.stopHealth()
	}
	return donorReply{}
}

func (n *node) resume() {
	n.dp.router.Resume()
	if n.dp.wg != nil {
		if err := n.dp.wg.Resume(); err != nil {
			n.log.Error("hand-off: WireGuard not resumed", "err", err)
		}
	}
	n.paused = false
}

// state is what the donor passes: its live table and its descriptors.
func (n *node) state() donorReply {
	if n.gossipGone || n.paused {
		return donorReply{err: errors.New("a hand-off is already under way")}
	}
	tunFile, vx, ok := n.dp.router.HandOffConns()
	if !ok {
		return donorReply{err: errors.New("this weftd's datapath cannot be handed off (no TUN fast path)")}
	}
	records, err := encodeRecords(n.pipe.last)
	if err != nil {
		return donorReply{err: err}
	}
	conns := []handoff.Conn{{Name: fdTUN, Conn: tunFile}, {Name: fdVXLAN, Conn: vx}}
	for name, ln := range map[string]net.Listener{fdHealth: n.kube.healthListener(), fdMetrics: n.metricsLn} {
		if sc, ok := ln.(syscall.Conn); ok {
			conns = append(conns, handoff.Conn{Name: name, Conn: sc})
		}
	}
	return donorReply{state: handoff.State{Node: n.c.Name, PID: os.Getpid(), Peers: records}, conns: conns}
}
