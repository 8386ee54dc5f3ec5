package wireguard

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/encap/offload"
)

// inNewNetns runs f on a thread of its own in a new network namespace,
// which goes away with the thread (it is never unlocked) and with what f
// opened there.
func inNewNetns(t *testing.T, f func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace and a TUN device)")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestRawReaderSplitsTUNFrames sends a UDP GSO datagram of 10 segments
// into a real TUN opened as weftd opens it (virtio headers, offloads,
// non-blocking) and reads it with the raw reader: 10 packets in the
// batch's buffers, each with right lengths and checksums, in order.
func TestRawReaderSplitsTUNFrames(t *testing.T) {
	const segs, mss = 10, 1200
	inNewNetns(t, func() error {
		dev, err := tun.CreateTUN("wgraw0", 1420)
		if err != nil {
			return err
		}
		defer dev.Close()
		var rd reader
		attachTUN(&rd, dev)
		r := rd.raw
		if r == nil {
			return errors.New("no raw reader for a kernel TUN with virtio headers")
		}
		link, err := netlink.LinkByName("wgraw0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("10.244.9.1/24")
		if err := netlink.AddrAdd(link, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 244, 9, 2), Port: 9})
		if err != nil {
			return err
		}
		defer c.Close()
		rc, _ := c.SyscallConn()
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, mss) })
		if serr != nil {
			return serr
		}
		payload := make([]byte, segs*mss)
		for i := range payload {
			payload[i] = byte(i / mss)
		}
		if _, err := c.Write(payload); err != nil {
			return err
		}
		dev.File().SetReadDeadline(time.Now().Add(5 * time.Second))
		bufs, sizes := testBufs(64)
		for {
			k, err := r.readFrame(bufs, sizes, testOffset, true)
			if err != nil {
				return err
			}
			if k < 1 {
				continue
			}
			first := bufs[0][testOffset : testOffset+sizes[0]]
			if first[0]>>4 != 4 || first[9] != offload.ProtoUDP {
				continue // IPv6 router solicitations and the like
			}
			if k != segs {
				t.Errorf("%d packets from the datagram, want %d", k, segs)
			}
			for i := 0; i < k; i++ {
				pl := checkUDP4(t, bufs[i][testOffset:testOffset+sizes[i]])
				if len(pl) != mss || pl[0] != byte(i) || pl[mss-1] != byte(i) {
					t.Errorf("packet %d: %d bytes of segment %d, want %d of %d", i, len(pl), pl[0], mss, i)
				}
			}
			if r.drops.Load() != 0 {
				t.Errorf("%d frames dropped", r.drops.Load())
			}
			return nil
		}
	})
}

// testOffset is the device's headroom in front of a packet.
const testOffset = 16

func testBufs(n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	return bufs, make([]int, n)
}

// checkUDP4 checks a UDP datagram in an IPv4 packet (with a 20-byte header)
// as a receiver would: IP and UDP lengths, both checksums; and returns the
// payload.
func checkUDP4(t *testing.T, pkt []byte) []byte {
	t.Helper()
	udp := pkt[20:]
	if int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) || int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
		t.Fatalf("lengths: IPv4 %d, UDP %d, packet %d", binary.BigEndian.Uint16(pkt[2:]), binary.BigEndian.Uint16(udp[4:]), len(pkt))
	}
	src, dst := offload.Addrs(pkt, false)
	if !offload.IPv4HeaderValid(pkt[:20]) || offload.Checksum(udp, offload.PseudoSum(src, dst, offload.ProtoUDP, len(udp))) != 0xffff {
		t.Fatal("checksum wrong")
	}
	return udp[8:]
}
