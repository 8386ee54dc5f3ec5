package wireguard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// upTUN opens a TUN as weftd opens it (wireguard-go's: virtio headers,
// offloads, non-blocking) with the address 10.244.9.1/24, up.
func upTUN(name string) (tun.Device, error) {
	dev, err := tun.CreateTUN(name, 1420)
	if err != nil {
		return nil, err
	}
	link, err := netlink.LinkByName(name)
	if err == nil {
		addr, _ := netlink.ParseAddr("10.244.9.1/24")
		err = netlink.AddrAdd(link, addr)
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// TestRawReaderSplitsTUNFrames sends a UDP GSO datagram of 10 segments
// into a real TUN opened as weftd opens it (virtio headers, offloads,
// non-blocking) and reads it with the raw reader: 10 packets in the
// batch's buffers, each with right lengths and checksums, in order.
func TestRawReaderSplitsTUNFrames(t *testing.T) {
	const segs, mss = 10, 1200
	inNewNetns(t, func() error {
		dev, err := upTUN("wgraw0")
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

// ip4At writes an IPv4 packet from peerAddr to tunAddr (a 20-byte header)
// around the L4 header l4 and payload, with complete checksums (the L4 one
// at l4 offset sumAt), at testOffset of a new element buffer and returns
// the buffer, as the device hands decrypted packets to Write.
func ip4At(proto uint8, l4 []byte, sumAt int, payload []byte) []byte {
	b := make([]byte, testOffset+20+len(l4)+len(payload))
	p := b[testOffset:]
	p[0], p[6], p[8], p[9] = 0x45, 0x40, 64, proto
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	copy(p[12:], peerAddr[:])
	copy(p[16:], tunAddr[:])
	offload.PutIPv4Checksum(p[:20])
	copy(p[20:], l4)
	copy(p[20+len(l4):], payload)
	binary.BigEndian.PutUint16(p[20+sumAt:], ^offload.Checksum(p[20:], offload.PseudoSum(peerAddr[:], tunAddr[:], proto, len(p)-20)))
	return b
}

// tcp4At is ip4At for a TCP segment from sport to dport.
func tcp4At(sport, dport uint16, seq, ack uint32, flags uint8, payload []byte) []byte {
	var h [20]byte
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint32(h[4:], seq)
	binary.BigEndian.PutUint32(h[8:], ack)
	h[12], h[13] = 5<<4, flags
	binary.BigEndian.PutUint16(h[14:], 65535)
	return ip4At(offload.ProtoTCP, h[:], offload.TCPCsum, payload)
}

// udp4At is ip4At for a UDP datagram from sport to dport.
func udp4At(sport, dport uint16, payload []byte) []byte {
	var h [8]byte
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return ip4At(offload.ProtoUDP, h[:], offload.UDPCsum, payload)
}

const (
	tcpSYN = 0x02
	tcpPSH = 0x08
	tcpACK = 0x10
)

var (
	peerAddr = [4]byte{10, 244, 9, 2} // the far end, behind the TUN
	tunAddr  = [4]byte{10, 244, 9, 1} // the TUN's own address
)

// TestWriteBatchAllocs: a batch write allocates nothing once the writer's
// slices have grown (here into a pipe, drained as it fills).
func TestWriteBatchAllocs(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	go func() {
		buf := make([]byte, 1<<16)
		for {
			if _, err := pr.Read(buf); err != nil {
				return
			}
		}
	}()
	defer pw.Close()
	rc, err := pw.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	w := newTUNWriter(rc, offload.Mode{TUN: true, VNetHdr: true, USO: true})
	var batch, orig [][]byte
	payload := make([]byte, 1000)
	for i := range 40 {
		batch = append(batch, tcp4At(40000, 5201, uint32(i*1000), 1, tcpACK, payload))
	}
	for range 20 {
		batch = append(batch, udp4At(40001, 9999, payload))
	}
	batch = append(batch, tcp4At(40000, 5201, 40000, 1, tcpACK, nil))
	for _, b := range batch {
		orig = append(orig, bytes.Clone(b))
	}
	write := func() {
		for i, b := range batch {
			copy(b, orig[i]) // the writes rewrite the first packet of a run
		}
		if n, err := w.writeBatch(batch, testOffset); n != len(batch) || err != nil {
			t.Fatalf("writeBatch = %d, %v", n, err)
		}
	}
	write()
	if w.writes != 3 {
		t.Fatalf("%d writes, want 3 (a TCP run, a UDP run, an ack)", w.writes)
	}
	if n := testing.AllocsPerRun(100, write); n != 0 {
		t.Fatalf("%v allocs per batch", n)
	}
}

// rxPackets is the TUN's count of packets written into it.
func rxPackets(t *testing.T, name string) uint64 {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics.RxPackets
}

// TestWriteCoalescesIntoTUN writes through reader.Write, into a real TUN
// opened as weftd opens it, a batch of consecutive TCP segments of a
// connection to a socket in the TUN's namespace (and, where the TUN takes
// USO, a batch of UDP datagrams to another): the TUN counts one packet per
// run, not one per segment, and the sockets read the data intact.
func TestWriteCoalescesIntoTUN(t *testing.T) {
	const segs, mss = 30, 1000
	inNewNetns(t, func() error {
		dev, err := upTUN("wgwr0")
		if err != nil {
			return err
		}
		defer dev.Close()
		r := newReader(dev)
		if r.tun == nil || !r.tun.vnet {
			return errors.New("no coalescing writer for a kernel TUN with virtio headers")
		}
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IP(tunAddr[:]), Port: 5201})
		if err != nil {
			return err
		}
		defer ln.Close()

		// The handshake: a SYN written alone, the SYN-ACK read back.
		if _, err := r.Write([][]byte{tcp4At(40000, 5201, 999, 0, tcpSYN, nil)}, testOffset); err != nil {
			return err
		}
		dev.File().SetReadDeadline(time.Now().Add(5 * time.Second))
		bufs, sizes := testBufs(dev.BatchSize())
		var isn uint32
		for isn == 0 {
			n, err := dev.Read(bufs, sizes, testOffset)
			if err != nil {
				return fmt.Errorf("waiting for the SYN-ACK: %w", err)
			}
			for i := range n {
				p := bufs[i][testOffset : testOffset+sizes[i]]
				if len(p) >= 40 && p[0] == 0x45 && p[9] == offload.ProtoTCP && p[33]&(tcpSYN|tcpACK) == tcpSYN|tcpACK {
					isn = binary.BigEndian.Uint32(p[24:])
				}
			}
		}

		// The ack and the data in one batch, as the device writes them.
		data := make([]byte, segs*mss)
		for i := range data {
			data[i] = byte(i*7 + i/mss)
		}
		batch := [][]byte{tcp4At(40000, 5201, 1000, isn+1, tcpACK, nil)}
		for i := range segs {
			f := uint8(tcpACK)
			if i == segs-1 {
				f |= tcpPSH
			}
			batch = append(batch, tcp4At(40000, 5201, uint32(1000+i*mss), isn+1, f, data[i*mss:(i+1)*mss]))
		}
		before := rxPackets(t, "wgwr0")
		if n, err := r.Write(batch, testOffset); n != len(batch) || err != nil {
			return fmt.Errorf("Write = %d, %v", n, err)
		}
		if got := rxPackets(t, "wgwr0") - before; got != 2 {
			t.Errorf("the TUN took %d packets for an ack and %d segments, want 2", got, segs)
		}
		ln.SetDeadline(time.Now().Add(5 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(data))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("reading the data: %w", err)
		}
		if !bytes.Equal(got, data) {
			t.Error("the socket read other data than was written")
		}

		if !r.tun.c.UDP {
			t.Log("the TUN takes no USO: UDP batches are written one datagram at a time")
			return nil
		}
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(tunAddr[:]), Port: 9999})
		if err != nil {
			return err
		}
		defer uc.Close()
		const dgrams, size = 10, 1200
		batch = batch[:0]
		for i := range dgrams {
			batch = append(batch, udp4At(40001, 9999, bytes.Repeat([]byte{byte(i)}, size)))
		}
		before = rxPackets(t, "wgwr0")
		if n, err := r.Write(batch, testOffset); n != dgrams || err != nil {
			return fmt.Errorf("Write = %d, %v", n, err)
		}
		if got := rxPackets(t, "wgwr0") - before; got != 1 {
			t.Errorf("the TUN took %d packets for %d datagrams, want 1", got, dgrams)
		}
		uc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 65536)
		for i := range dgrams {
			n, err := uc.Read(buf)
			if err != nil {
				return fmt.Errorf("datagram %d: %w", i, err)
			}
			if n != size || buf[0] != byte(i) || buf[size-1] != byte(i) {
				t.Errorf("datagram %d: %d bytes of %d, want %d of %d", i, n, buf[0], size, i)
			}
		}
		return nil
	})
}
