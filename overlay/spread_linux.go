package overlay

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/encap/vxlan"
)

// Spread reads: TUN super-packets read straight into their VXLAN layout.
//
// A gathered send (sendSuper) alternates small header iovecs with payload
// slices, and the kernel pays for every iovec it copies from. When the
// outbound path knows the layout the next super-packet will have (the
// header length and segment size of the last one: one TCP flow keeps them),
// it reads the TUN with readv(2) into iovecs that leave, in front of each
// segment's payload, exactly the room its VXLAN, inner Ethernet and IP/TCP
// headers take. The segments then lie one after another in memory, frames
// complete once their headers are written, and one GSO datagram is a single
// iovec. A packet that does not fit the guess is copied into an ordinary
// buffer and takes the usual paths, and its layout becomes the next guess.

const (
	// spreadMaxSegs bounds the slots of a layout (and its iovecs): layouts
	// with segments so small that a 64 KiB packet needs more are not used.
	spreadMaxSegs = 128
	// spreadMaxRead is the most a TUN read returns: virtio header and the
	// largest IP packet.
	spreadMaxRead = virtioHdrLen + 65535
)

// spreadLayout is the guessed layout and its buffer. Slot k occupies
// buf[k*stride:(k+1)*stride]: frame header, IP/TCP headers, payload.
type spreadLayout struct {
	hdrLen, mss int // the guess; hdrLen 0: none
	stride      int
	buf         []byte
	iovs        []unix.Iovec
	sp          superPacket // the packet of the last read that matched
}

// set makes hdrLen and mss the guess, or clears it when such a layout would
// need too many slots.
func (l *spreadLayout) set(hdrLen, mss int) {
	if hdrLen == l.hdrLen && mss == l.mss {
		return
	}
	l.hdrLen, l.mss = 0, 0
	first := virtioHdrLen + hdrLen + mss
	if mss <= 0 || first >= spreadMaxRead {
		return
	}
	slots := 1 + (spreadMaxRead-first+mss-1)/mss
	if slots > spreadMaxSegs {
		return
	}
	l.hdrLen, l.mss = hdrLen, mss
	l.stride = vxlan.FrameHeaderLen + hdrLen + mss
	if need := slots * l.stride; cap(l.buf) < need {
		l.buf = make([]byte, need)
	}
	l.buf = l.buf[:slots*l.stride]
	l.iovs = l.iovs[:0]
	// Slot 0: the virtio header lands in the frame header's room, right
	// before the IP header.
	l.iovs = append(l.iovs, iovec(l.buf[vxlan.FrameHeaderLen-virtioHdrLen:l.stride]))
	for k := 1; k < slots; k++ {
		l.iovs = append(l.iovs, iovec(l.buf[k*l.stride+vxlan.FrameHeaderLen+hdrLen:(k+1)*l.stride]))
	}
}

func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return v
}

// firstLen is how much of a read slot 0 holds.
func (l *spreadLayout) firstLen() int { return virtioHdrLen + l.hdrLen + l.mss }

// take looks at n bytes read with the layout. A packet that fits the guess
// (a TCP super-packet with its header length and segment size, longer than
// slot 0) is parsed into l.sp and take returns -1. Anything else is copied
// into dst as an ordinary read would have put it (virtio header first) and
// take returns its length.
func (l *spreadLayout) take(n int, dst []byte) int {
	read := l.buf[vxlan.FrameHeaderLen-virtioHdrLen:]
	if n > l.firstLen() {
		var h virtioHdr
		if h.decode(read) == nil && (h.gsoType&^gsoECN == gsoTCPv4 || h.gsoType&^gsoECN == gsoTCPv6) &&
			int(h.gsoSize) == l.mss {
			sp, err := parseSuperLen(&h, l.buf[vxlan.FrameHeaderLen:l.stride], n-virtioHdrLen)
			if err == nil && sp.hdrLen == l.hdrLen {
				sp.stride, sp.base = l.stride, l.buf
				l.sp = sp
				return -1
			}
		}
	}
	// Linearize: slot 0, then each later slot's payload part.
	m := copy(dst, read[:min(n, l.firstLen())])
	for k := 1; m < n; k++ {
		off := k*l.stride + vxlan.FrameHeaderLen + l.hdrLen
		m += copy(dst[m:], l.buf[off:off+min(l.mss, n-m)])
	}
	return n
}

// readv reads into iovs as a raw system call (see rawRead).
func readv(fd uintptr, iovs []unix.Iovec) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}
