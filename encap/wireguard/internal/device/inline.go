/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 * Copyright (C) 2026 the weft authors (this file: weft's inline data path).
 */

package device

// weft's inline data path (FORK.md).
//
// Upstream moves every transport-data batch through three goroutines in
// each direction: outbound, the TUN reader stages it for the peer, an
// encryption worker seals it, the peer's sequential sender sends it;
// inbound, the bind's receive goroutine queues it, a decryption worker
// opens it, the peer's sequential receiver checks the replay window and
// writes it to the TUN. On a node with two cores each hand-off is a
// wake-up, and together with the per-element pool traffic they cost more
// CPU than ChaCha20-Poly1305 itself.
//
// Here the goroutine that has the batch does all of it:
//
//   - outbound (RoutineReadFromTUN): the packets of one TUN read are
//     grouped by peer; a peer with a usable current keypair and nothing
//     staged gets its nonces assigned, its packets sealed in place (in the
//     reader's own buffers, which never leave it) and sent in one
//     bind.Send, which coalesces them into UDP GSO datagrams. A peer that
//     needs a handshake, or already has packets staged for one, takes
//     upstream's path unchanged (stage, handshake, workers).
//   - inbound (RoutineReceiveIncoming): transport messages are opened in
//     place where they were received, then the peer's sequential work
//     (replay filter, keypair confirmation, endpoint, timers, allowed-IPs
//     source check) runs under Peer.inlineRx, and everything accepted from
//     the whole receive batch goes to the TUN in one Write, which coalesces
//     TCP and UDP segments (GRO) when the TUN has offloads.
//
// The wire format, the nonce and replay rules, the handshake, the timers
// and the keypair rotation are upstream's: only where the work runs
// changed. Per-packet work is the pure functions sealTransport and
// openTransport, neither of which allocates.

import (
	"encoding/binary"
	"errors"
	"io"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/conn"
)

// transportHeader is the header of a WireGuard transport data message
// (the WireGuard paper, section 5.4.6), all fields little-endian:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  type = 4     |              reserved (zero)                  |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                        receiver index                         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                     counter (64 bits) ...                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  ChaCha20-Poly1305(padded packet), 16-byte tag at the end ... |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Upstream reads the type as one little-endian uint32 (so the reserved
// bytes must be zero); so does decode.
type transportHeader struct {
	receiver uint32
	counter  uint64
}

// errNotTransport: the message is not a transport data message.
var errNotTransport = errors.New("not a transport data message")

// encode writes the header into b[:MessageTransportHeaderSize].
func (h transportHeader) encode(b []byte) {
	_ = b[MessageTransportHeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:4], MessageTransportType)
	binary.LittleEndian.PutUint32(b[MessageTransportOffsetReceiver:MessageTransportOffsetCounter], h.receiver)
	binary.LittleEndian.PutUint64(b[MessageTransportOffsetCounter:MessageTransportOffsetContent], h.counter)
}

// decode reads the header of the transport message msg: io.ErrShortBuffer
// when msg is shorter than an empty transport message (header and tag),
// errNotTransport when its type is not 4.
func (h *transportHeader) decode(msg []byte) error {
	if len(msg) < MessageTransportSize {
		return io.ErrShortBuffer
	}
	if binary.LittleEndian.Uint32(msg[0:4]) != MessageTransportType {
		return errNotTransport
	}
	h.receiver = binary.LittleEndian.Uint32(msg[MessageTransportOffsetReceiver:MessageTransportOffsetCounter])
	h.counter = binary.LittleEndian.Uint64(msg[MessageTransportOffsetCounter:MessageTransportOffsetContent])
	return nil
}

var paddingZeros [PaddingMultiple]byte

// aeadNonce is the ChaCha20-Poly1305 nonce of a transport message: four
// zero bytes and the counter. The AEAD is an interface, so a nonce passed
// to it escapes: each goroutine keeps one and passes it down, so that no
// packet allocates one.
type aeadNonce [chacha20poly1305.NonceSize]byte

// sealTransport turns the packet at buf[MessageTransportHeaderSize:][:n]
// into a transport message in place and returns it (a slice of buf): the
// header in front, the packet padded as for a device of this mtu, sealed
// with keypair's send key under nonce, the tag behind. buf must have room
// for the padding and the tag behind the packet; nb is the caller's
// scratch.
func sealTransport(keypair *Keypair, nonce uint64, buf []byte, n, mtu int, nb *aeadNonce) []byte {
	transportHeader{receiver: keypair.remoteIndex, counter: nonce}.encode(buf)
	packet := buf[MessageTransportHeaderSize : MessageTransportHeaderSize+n]
	packet = append(packet, paddingZeros[:calculatePaddingSize(n, mtu)]...)
	*nb = aeadNonce{}
	binary.LittleEndian.PutUint64(nb[4:], nonce)
	return keypair.send.Seal(buf[:MessageTransportHeaderSize], nb[:], packet, nil)
}

// openTransport opens the transport message msg (header decoded into h)
// in place with keypair's receive key and returns the padded plaintext (a
// slice of msg behind the header); ok is false when it does not
// authenticate. The replay check is the caller's, after this. nb is the
// caller's scratch.
func openTransport(keypair *Keypair, h *transportHeader, msg []byte, nb *aeadNonce) (plain []byte, ok bool) {
	*nb = aeadNonce{}
	binary.LittleEndian.PutUint64(nb[4:], h.counter)
	content := msg[MessageTransportOffsetContent:]
	plain, err := keypair.receive.Open(content[:0], nb[:], content, nil)
	return plain, err == nil
}

// outboundGroup is the packets of one TUN read for one peer.
type outboundGroup struct {
	peer  *Peer
	slots []int // indices into the reader's elems, in read order
}

// outboundGroups groups a read's packets by peer; its slices are reused
// from read to read, so grouping allocates nothing once they have grown.
type outboundGroups struct {
	groups []outboundGroup
	n      int
}

func (g *outboundGroups) reset() {
	for i := range g.groups[:g.n] {
		g.groups[i].peer = nil
		g.groups[i].slots = g.groups[i].slots[:0]
	}
	g.n = 0
}

// add puts slot into peer's group. A read is mostly one flow, so the last
// group is tried first.
func (g *outboundGroups) add(peer *Peer, slot int) {
	for i := g.n - 1; i >= 0; i-- {
		if g.groups[i].peer == peer {
			g.groups[i].slots = append(g.groups[i].slots, slot)
			return
		}
	}
	if g.n == len(g.groups) {
		g.groups = append(g.groups, outboundGroup{})
	}
	gr := &g.groups[g.n]
	gr.peer = peer
	gr.slots = append(gr.slots, slot)
	g.n++
}

// sendInline seals and sends the packets of elems[slots] for peer from the
// calling goroutine (see the file comment) and reports whether it did; if
// not (no usable keypair, packets already staged for a handshake, the
// device or peer not running), nothing was touched and the caller takes
// upstream's path. The elements stay the caller's. out is scratch with
// room for len(slots) messages, nb the caller's nonce scratch.
func (peer *Peer) sendInline(elems []*QueueOutboundElement, slots []int, out [][]byte, nb *aeadNonce) bool {
	device := peer.device
	if !peer.isRunning.Load() || !device.isUp() || len(peer.queue.staged) != 0 {
		return false
	}
	keypair := peer.keypairs.Current()
	if keypair == nil || time.Since(keypair.created) >= RejectAfterTime {
		return false
	}
	n := uint64(len(slots))
	first := keypair.sendNonce.Add(n) - n
	if first+n > RejectAfterMessages {
		// Upstream stages what is over the limit for the next keypair;
		// the rare batch that crosses it does so too, whole. The nonces
		// taken are burnt: the keypair is done anyway.
		keypair.sendNonce.Store(RejectAfterMessages)
		return false
	}
	mtu := int(device.tun.mtu.Load())
	out = out[:0]
	for i, s := range slots {
		elem := elems[s]
		out = append(out, sealTransport(keypair, first+uint64(i), elem.buffer[:], len(elem.packet), mtu, nb))
	}
	device.inlinePackets.Add(uint64(len(out)))
	peer.timersAnyAuthenticatedPacketTraversal()
	peer.timersAnyAuthenticatedPacketSent()
	err := peer.SendBuffers(out)
	peer.timersDataSent()
	if err != nil {
		var errGSO conn.ErrUDPGSODisabled
		if errors.As(err, &errGSO) {
			device.log.Verbosef(err.Error())
			err = errGSO.RetryErr
		}
	}
	if err != nil {
		device.log.Errorf("%v - Failed to send data packets: %v", peer, err)
		return true
	}
	peer.keepKeyFreshSending()
	return true
}

// inboundMsg is one received transport message, opened in place.
type inboundMsg struct {
	slot     int // index into the receive routine's buffers
	keypair  *Keypair
	counter  uint64
	plain    []byte // the padded plaintext; nil: did not authenticate
	endpoint conn.Endpoint
}

// inboundGroup is the messages of one receive batch from one peer.
type inboundGroup struct {
	peer *Peer
	msgs []inboundMsg
}

// inboundGroups groups a receive batch by peer, reusing its slices.
type inboundGroups struct {
	groups []inboundGroup
	n      int
}

func (g *inboundGroups) reset() {
	for i := range g.groups[:g.n] {
		gr := &g.groups[i]
		gr.peer = nil
		clear(gr.msgs) // drop the keypair and endpoint references
		gr.msgs = gr.msgs[:0]
	}
	g.n = 0
}

func (g *inboundGroups) add(peer *Peer, m inboundMsg) {
	for i := g.n - 1; i >= 0; i-- {
		if g.groups[i].peer == peer {
			g.groups[i].msgs = append(g.groups[i].msgs, m)
			return
		}
	}
	if g.n == len(g.groups) {
		g.groups = append(g.groups, inboundGroup{})
	}
	gr := &g.groups[g.n]
	gr.peer = peer
	gr.msgs = append(gr.msgs, m)
	g.n++
}

// receiveInline does for one peer's opened messages what upstream's
// sequential receiver does for a batch, under peer.inlineRx, and appends
// the packets to write to the TUN to tunBufs (slices of bufs, the packet at
// MessageTransportOffsetContent) and returns it.
func (peer *Peer) receiveInline(msgs []inboundMsg, bufs [][]byte, tunBufs [][]byte) [][]byte {
	device := peer.device
	peer.inlineRx.Lock()
	defer peer.inlineRx.Unlock()
	validTail := -1
	dataReceived := false
	rxBytes := uint64(0)
	for i := range msgs {
		m := &msgs[i]
		if m.plain == nil {
			continue // did not authenticate
		}
		if !m.keypair.replayFilter.ValidateCounter(m.counter, RejectAfterMessages) {
			continue
		}
		validTail = i
		if peer.ReceivedWithKeypair(m.keypair) {
			peer.SetEndpointFromPacket(m.endpoint)
			peer.timersHandshakeComplete()
			peer.SendStagedPackets()
		}
		rxBytes += uint64(len(m.plain) + MinMessageSize)
		if len(m.plain) == 0 {
			device.log.Verbosef("%v - Receiving keepalive packet", peer)
			continue
		}
		dataReceived = true
		packet, ok := peer.checkInner(m.plain)
		if !ok {
			continue
		}
		tunBufs = append(tunBufs, bufs[m.slot][:MessageTransportOffsetContent+len(packet)])
	}
	peer.rxBytes.Add(rxBytes)
	if validTail >= 0 {
		peer.SetEndpointFromPacket(msgs[validTail].endpoint)
		peer.keepKeyFreshReceiving()
		peer.timersAnyAuthenticatedPacketTraversal()
		peer.timersAnyAuthenticatedPacketReceived()
	}
	if dataReceived {
		peer.timersDataReceived()
	}
	return tunBufs
}

// checkInner trims a decrypted packet to its IP length and checks that its
// source is allowed for peer, as upstream's sequential receiver does.
func (peer *Peer) checkInner(packet []byte) ([]byte, bool) {
	device := peer.device
	switch packet[0] >> 4 {
	case 4:
		if len(packet) < 20 {
			return nil, false
		}
		length := int(binary.BigEndian.Uint16(packet[IPv4offsetTotalLength : IPv4offsetTotalLength+2]))
		if length > len(packet) || length < 20 {
			return nil, false
		}
		packet = packet[:length]
		if device.allowedips.Lookup(packet[IPv4offsetSrc:IPv4offsetSrc+4]) != peer {
			device.log.Verbosef("IPv4 packet with disallowed source address from %v", peer)
			return nil, false
		}
	case 6:
		if len(packet) < 40 {
			return nil, false
		}
		length := int(binary.BigEndian.Uint16(packet[IPv6offsetPayloadLength:IPv6offsetPayloadLength+2])) + 40
		if length > len(packet) {
			return nil, false
		}
		packet = packet[:length]
		if device.allowedips.Lookup(packet[IPv6offsetSrc:IPv6offsetSrc+16]) != peer {
			device.log.Verbosef("IPv6 packet with disallowed source address from %v", peer)
			return nil, false
		}
	default:
		device.log.Verbosef("Packet with invalid IP version from %v", peer)
		return nil, false
	}
	return packet, true
}
