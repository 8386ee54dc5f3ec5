package wireguard

import (
	"os"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// readyFunc returns a zero-timeout poll of the TUN file for reader.ready,
// or nil if dev has no file. The poll runs through the file's raw
// connection (its descriptor stays non-blocking) with a callback made
// once, so it allocates nothing.
func readyFunc(dev tun.Device) func() bool {
	f, ok := dev.(interface{ File() *os.File })
	if !ok || f.File() == nil {
		return nil
	}
	rc, err := f.File().SyscallConn()
	if err != nil {
		return nil
	}
	p := &poller{}
	p.poll = p.pollFunc
	return func() bool {
		p.ready = false
		if rc.Control(p.poll) != nil {
			return false
		}
		return p.ready
	}
}

type poller struct {
	fds   [1]unix.PollFd
	ready bool
	poll  func(fd uintptr)
}

func (p *poller) pollFunc(fd uintptr) {
	p.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	n, err := unix.Poll(p.fds[:], 0)
	p.ready = err == nil && n == 1 && p.fds[0].Revents&unix.POLLIN != 0
}
