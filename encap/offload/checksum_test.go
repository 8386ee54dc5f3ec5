package offload

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// refSum is the RFC 1071 sum the slow way: the big-endian 16-bit words
// (an odd byte padded with zero) added as integers, reduced modulo 0xffff,
// a non-zero multiple reading as 0xffff as the folded sum does. The
// yardstick for Checksum.
func refSum(b []byte) uint16 {
	if len(b)%2 == 1 {
		b = append(b[:len(b):len(b)], 0)
	}
	var s uint64
	for i := 0; i < len(b); i += 2 {
		s += uint64(binary.BigEndian.Uint16(b[i:]))
	}
	if r := s % 0xffff; r != 0 || s == 0 {
		return uint16(r)
	}
	return 0xffff
}

func TestCsumMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 300; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if got, want := Checksum(b, 0), refSum(b); got != want {
			t.Fatalf("len %d: csum %04x, want %04x", n, got, want)
		}
		// Split at an even offset: the sums add up.
		if n >= 2 {
			k := n / 2 &^ 1
			if got, want := Checksum(b[k:], Checksum(b[:k], 0)), refSum(b); got != want {
				t.Fatalf("len %d split %d: csum %04x, want %04x", n, k, got, want)
			}
		}
	}
	all := bytes.Repeat([]byte{0xff}, 4096)
	if got := Checksum(all, 0); got != 0xffff {
		t.Fatalf("all ones: %04x", got)
	}
}

// csumAdd64 is the sum weft used before gVisor's (64-bit words, end-around
// carry): kept here only as the benchmark's yardstick.
func csumAdd64(b []byte, acc uint64) uint64 {
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
	var tail uint64
	for i, x := range b {
		tail |= uint64(x) << (56 - 8*i)
	}
	acc, c = bits.Add64(acc, tail, 0)
	acc += c
	acc = acc&0xffffffff + acc>>32
	acc = acc&0xffffffff + acc>>32
	acc = acc&0xffff + acc>>16
	return acc&0xffff + acc>>16
}

var sinkSum uint64

// BenchmarkChecksum compares the sum the router uses (gVisor's) with
// weft's former 64-bit loop on one full-sized TCP payload.
func BenchmarkChecksum(b *testing.B) {
	p := make([]byte, 1448)
	for i := range p {
		p[i] = byte(i * 7)
	}
	if uint64(Checksum(p, 0)) != csumAdd64(p, 0) {
		b.Fatal("the two sums disagree")
	}
	b.Run("gvisor", func(b *testing.B) {
		b.SetBytes(int64(len(p)))
		b.ReportAllocs()
		for b.Loop() {
			sinkSum += uint64(Checksum(p, 0))
		}
	})
	b.Run("weft64", func(b *testing.B) {
		b.SetBytes(int64(len(p)))
		b.ReportAllocs()
		for b.Loop() {
			sinkSum += csumAdd64(p, 0)
		}
	})
}

// TestShortSumMatchesReference: the word-by-word header sum folds to the
// reference for every even length of headers and addresses, with any
// starting sum.
func TestShortSumMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := 0; n <= 64; n += 2 {
		for range 50 {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if rng.IntN(4) == 0 {
				for i := range b {
					b[i] = 0xff
				}
			}
			init := uint32(rng.Uint32() & 0x3ffff)
			want := refSum(append([]byte{byte(init >> 24), byte(init >> 16), byte(init >> 8), byte(init)}, b...))
			if got := fold(shortSum(b, init)); got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
				t.Fatalf("len %d init %x: %04x, want %04x", n, init, got, want)
			}
		}
	}
}

// TestHeaderSumsCarry: the unrolled IPv4 header and pseudo-header sums
// keep their carries (all-ones words overflow 32 bits).
func TestHeaderSumsCarry(t *testing.T) {
	h := bytes.Repeat([]byte{0xff}, 20)
	if got, want := IPv4HeaderValid(h), refSum(h) == 0xffff; got != want {
		t.Errorf("all-ones header: valid %v, want %v", got, want)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 10000 {
		h := make([]byte, 20)
		for i := range h {
			h[i] = byte(rng.Uint32()) | 0xf0
		}
		if got, want := IPv4HeaderValid(h), refSum(h) == 0xffff; got != want {
			t.Fatalf("header % x: valid %v, want %v", h, got, want)
		}
		binary.BigEndian.PutUint16(h[10:], 0)
		binary.BigEndian.PutUint16(h[10:], ^refSum(h))
		if !IPv4HeaderValid(h) {
			t.Fatalf("header % x with its checksum: not valid", h)
		}
		src, dst, n := h[0:4], h[4:8], int(rng.Uint32()&0xffff)
		ref := refSum(append(append(append([]byte{}, src...), dst...), 0, ProtoTCP, byte(n>>8), byte(n)))
		if got := PseudoSum(src, dst, ProtoTCP, n); got != ref && !(got == 0xffff && ref == 0) {
			t.Fatalf("PseudoSum(% x, % x, %d) = %04x, want %04x", src, dst, n, got, ref)
		}
	}
}
