package overlay

import (
	"encoding/binary"
	"math/bits"
)

// Internet checksum (RFC 1071) arithmetic for the segment builder and the
// coalescer, which checksum whole payloads per packet and so need more speed
// than checksum in pmtu.go gives. The ones' complement sum does not depend on
// the word size it is summed in (RFC 1071 section 2), so csumAdd sums
// big-endian 64-bit words with end-around carry and csumFold reduces the
// result to 16 bits.

// csumAdd adds b to the running sum acc. b is taken as starting at an even
// offset of the checksummed data; an odd length pads with a zero byte, so only
// the last piece of a checksum may have an odd length.
func csumAdd(b []byte, acc uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[8:16]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[16:24]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[24:32]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b), c)
		b = b[8:]
	}
	acc, c = bits.Add64(acc, c, 0)
	acc += c
	// Fewer than 8 bytes remain: they fill a big-endian word from the top,
	// zero-padded, which keeps them on their 16-bit word boundaries.
	var tail uint64
	for i, x := range b {
		tail |= uint64(x) << (56 - 8*i)
	}
	acc, c = bits.Add64(acc, tail, 0)
	return acc + c
}

// csumFold folds a running sum to 16 bits, not complemented.
func csumFold(acc uint64) uint16 {
	acc = acc&0xffffffff + acc>>32
	acc = acc&0xffffffff + acc>>32
	acc = acc&0xffff + acc>>16
	acc = acc&0xffff + acc>>16
	return uint16(acc)
}

// pseudoSum is the running sum of a TCP or UDP pseudo-header (RFC 793,
// RFC 8200 section 8.1): the addresses (4 or 16 bytes each, as src and dst
// slice them from the IP header), the protocol and the L4 length.
func pseudoSum(src, dst []byte, proto uint8, l4Len int) uint64 {
	acc := csumAdd(src, 0)
	acc = csumAdd(dst, acc)
	acc, c := bits.Add64(acc, uint64(proto)+uint64(l4Len), 0)
	return acc + c
}
