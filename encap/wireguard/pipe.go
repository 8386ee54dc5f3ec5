package wireguard

import (
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// pipe is the tun.Device the wireguard-go device sees. Reads return the
// packets the router hands over with send; writes go straight to the real
// TUN device, which wireguard-go's batches and offsets suit as they are.
type pipe struct {
	out    tun.Device
	mtu    int
	reqs   chan [][]byte
	done   chan int
	closed chan struct{}
	once   sync.Once
	events chan tun.Event
}

func newPipe(out tun.Device, mtu int) *pipe {
	p := &pipe{
		out:    out,
		mtu:    mtu,
		reqs:   make(chan [][]byte),
		done:   make(chan int),
		closed: make(chan struct{}),
		events: make(chan tun.Event, 1),
	}
	p.events <- tun.EventUp
	return p
}

// send blocks until the device has copied every packet of pkts.
func (p *pipe) send(pkts [][]byte) error {
	for len(pkts) > 0 {
		select {
		case p.reqs <- pkts:
		case <-p.closed:
			return os.ErrClosed
		}
		select {
		case n := <-p.done:
			pkts = pkts[n:]
		case <-p.closed:
			return os.ErrClosed
		}
	}
	return nil
}

// Read copies one handed-over batch (or as much of it as fits) into bufs.
func (p *pipe) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case pkts := <-p.reqs:
		n := min(len(pkts), len(bufs))
		for i := 0; i < n; i++ {
			sizes[i] = copy(bufs[i][offset:], pkts[i])
		}
		p.done <- n
		return n, nil
	case <-p.closed:
		return 0, os.ErrClosed
	}
}

func (p *pipe) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-p.closed:
		return 0, os.ErrClosed
	default:
	}
	return p.out.Write(bufs, offset)
}

func (p *pipe) close() {
	p.once.Do(func() {
		close(p.closed)
		close(p.events)
	})
}

func (p *pipe) File() *os.File           { return nil }
func (p *pipe) MTU() (int, error)        { return p.mtu, nil }
func (p *pipe) Name() (string, error)    { return "weft-wireguard", nil }
func (p *pipe) Events() <-chan tun.Event { return p.events }
func (p *pipe) Close() error             { p.close(); return nil }
func (p *pipe) BatchSize() int           { return p.out.BatchSize() }
