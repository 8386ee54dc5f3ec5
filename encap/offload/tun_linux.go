package offload

// The TUN file descriptor, as the datapaths write to it: raw writev system
// calls through the runtime poller, with the callback made once so that no
// write allocates.

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TUN offload flags of TUNSETOFFLOAD, as wireguard-go's tun.NativeTun sets
// them on a TUN with virtio headers: TCP always, UDP (USO, Linux 6.2+)
// where the kernel takes it.
const (
	tunTCPOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	tunUDPOffloads = unix.TUN_F_USO4 | unix.TUN_F_USO6
)

// Mode is what the datapaths need to know of a file descriptor that may
// be a TUN.
type Mode struct {
	NonBlocking bool // O_NONBLOCK: raw system calls never wait
	TUN         bool // a TUN device (TUNGETIFF works) in IFF_TUN mode: IP packets
	VNetHdr     bool // IFF_VNET_HDR: a virtio-net header in front of each packet
	// USO: the TUN takes (and hands over) UDP GSO packets
	// (VIRTIO_NET_HDR_GSO_UDP_L4). Only probed with probeUSO.
	USO bool
}

// ModeOf reads the mode of the file behind rc (F_GETFL, TUNGETIFF; a file
// that is no TUN has TUN false). With probeUSO, on a TUN with virtio
// headers, it also asks for USO the way wireguard-go's NativeTun does when
// it opens one: TUNSETOFFLOAD with the TCP and UDP offloads, the flags
// that device set where the kernel took them, so nothing changes there; USO
// is true when the kernel takes them.
func ModeOf(rc syscall.RawConn, probeUSO bool) (Mode, error) {
	var m Mode
	var ferr error
	err := rc.Control(func(fd uintptr) {
		var fl int
		if fl, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0); ferr != nil {
			return
		}
		m.NonBlocking = fl&unix.O_NONBLOCK != 0
		var ifr [unix.IFNAMSIZ + 64]byte
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.TUNGETIFF, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
			return // not a TUN
		}
		flags := *(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ]))
		m.TUN, m.VNetHdr = flags&unix.IFF_TUN != 0, flags&unix.IFF_VNET_HDR != 0
		if probeUSO && m.TUN && m.VNetHdr {
			m.USO = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tunTCPOffloads|tunUDPOffloads) == nil
		}
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		return Mode{}, fmt.Errorf("tun mode: %w", err)
	}
	return m, nil
}

// Writer writes packets to a TUN file descriptor with writev(2) as a raw
// system call, gathering a coalesced packet from its pieces. A Writer is
// used by one goroutine at a time; its callers serialise.
type Writer struct {
	rc interface {
		Write(func(fd uintptr) bool) error
	}
	iovs  []unix.Iovec
	err   error
	write func(fd uintptr) bool
}

// NewWriter returns a Writer on rc whose writes gather up to maxPieces
// slices without allocating.
func NewWriter(rc syscall.RawConn, maxPieces int) *Writer {
	w := &Writer{rc: rc, iovs: make([]unix.Iovec, 0, maxPieces)}
	w.write = w.writeFunc
	return w
}

func (w *Writer) writeFunc(fd uintptr) bool {
	for {
		_, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iovs[0])), uintptr(len(w.iovs)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // the poller waits, and calls again
		case 0:
			w.err = nil
		case unix.EBADFD:
			w.err = os.ErrClosed
		default:
			w.err = e
		}
		return true
	}
}

// Write writes head (virtio header and packet, or the head of a coalesced
// packet, or a packet of a TUN without virtio headers) followed by the
// payloads in more, as one packet. A closed file is reported as
// os.ErrClosed; an error of the write itself as it is.
func (w *Writer) Write(head []byte, more [][]byte) error {
	w.iovs = append(w.iovs[:0], iovec(head))
	for _, b := range more {
		w.iovs = append(w.iovs, iovec(b))
	}
	w.err = nil
	err := w.rc.Write(w.write)
	clear(w.iovs) // no pointers into the caller's buffers kept
	if err != nil {
		return fmt.Errorf("%w: %v", os.ErrClosed, err)
	}
	return w.err
}

func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: unsafe.SliceData(b)}
	v.SetLen(len(b))
	return v
}
