package vxlan

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// ipv4Packet is a minimal IPv4 header (20 bytes) followed by payload.
func ipv4Packet(payload string) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	p[9] = 1 // ICMP
	copy(p[12:16], []byte{10, 244, 1, 2})
	copy(p[16:20], []byte{10, 244, 2, 2})
	copy(p[20:], payload)
	return p
}

func TestHeaderWireBytes(t *testing.T) {
	// RFC 7348 section 5: flags 0x08, 24 reserved bits, 24-bit VNI, 8 reserved bits.
	var b [HeaderLen]byte
	Header{VNI: 0xabcdef}.Encode(b[:])
	want := []byte{0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("header bytes = % x, want % x", b, want)
	}
	var h Header
	if err := h.Decode(b[:]); err != nil || h.VNI != 0xabcdef {
		t.Fatalf("Decode = %+v, %v", h, err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		inner []byte
		et    uint16
	}{
		{"ipv4", ipv4Packet("hello"), EtherTypeIPv4},
		{"ipv6", append([]byte{0x60}, make([]byte, 47)...), EtherTypeIPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := Frame{VNI: 42, Dst: [6]byte{0x0a, 0x58, 1, 2, 3, 4}, Src: [6]byte{0x0a, 0x58, 5, 6, 7, 8}, EtherType: EtherTypeFor(tc.inner)}
			if in.EtherType != tc.et {
				t.Fatalf("EtherTypeFor = %#x, want %#x", in.EtherType, tc.et)
			}
			b := make([]byte, FrameHeaderLen+len(tc.inner))
			in.Encode(b)
			copy(b[FrameHeaderLen:], tc.inner)
			var out Frame
			if err := out.Decode(b); err != nil {
				t.Fatal(err)
			}
			if out != in {
				t.Fatalf("round trip: got %+v, want %+v", out, in)
			}
			if !bytes.Equal(b[FrameHeaderLen:], tc.inner) {
				t.Fatal("inner packet changed")
			}
			// The inner Ethernet header sits right after the VXLAN header.
			if !bytes.Equal(b[8:14], in.Dst[:]) || !bytes.Equal(b[14:20], in.Src[:]) || b[20] != byte(tc.et>>8) || b[21] != byte(tc.et) {
				t.Fatalf("inner Ethernet bytes wrong: % x", b[8:22])
			}
		})
	}
}

func TestFrameDecodeMalformed(t *testing.T) {
	good := func() []byte {
		f := Frame{VNI: 1, EtherType: EtherTypeIPv4}
		b := make([]byte, FrameHeaderLen)
		f.Encode(b)
		return append(b, ipv4Packet("x")...)
	}
	for _, tc := range []struct {
		name string
		mut  func([]byte) []byte
		want error
	}{
		{"empty", func(b []byte) []byte { return nil }, io.ErrShortBuffer},
		{"short header", func(b []byte) []byte { return b[:7] }, io.ErrShortBuffer},
		{"short ethernet", func(b []byte) []byte { return b[:HeaderLen+13] }, io.ErrShortBuffer},
		{"no I flag", func(b []byte) []byte { b[0] = 0; return b }, ErrFlags},
		{"GPE flags", func(b []byte) []byte { b[0] = 0x0c; return b }, ErrFlags},
		{"arp inner", func(b []byte) []byte { b[20], b[21] = 0x08, 0x06; return b }, ErrEtherType},
		{"vlan inner", func(b []byte) []byte { b[20], b[21] = 0x81, 0x00; return b }, ErrEtherType},
		{"ipv4 ethertype, v6 packet", func(b []byte) []byte { b[22] = 0x60; return b }, ErrInnerIP},
		{"truncated inner ip", func(b []byte) []byte { return b[:FrameHeaderLen+10] }, ErrInnerIP},
		{"ipv6 ethertype, short", func(b []byte) []byte { b[20], b[21] = 0x86, 0xdd; b[22] = 0x60; return b }, ErrInnerIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f Frame
			if err := f.Decode(tc.mut(good())); !errors.Is(err, tc.want) {
				t.Fatalf("Decode error = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReservedBitsIgnored(t *testing.T) {
	f := Frame{VNI: 7, EtherType: EtherTypeIPv4}
	b := make([]byte, FrameHeaderLen)
	f.Encode(b)
	b = append(b, ipv4Packet("")...)
	b[1], b[2], b[3], b[7] = 0xff&^flagRCO, 0xff, 0xff, 0xff
	var out Frame
	if err := out.Decode(b); err != nil || out.VNI != 7 || out.CsumStart != 0 {
		t.Fatalf("Decode with reserved bits set = %+v, %v", out, err)
	}
}

// Remote checksum offload is encoded as Linux's vxlan driver does
// (VXLAN_HF_RCO in the flags word, start/2 and the UDP bit in the low byte
// of the VNI word).
func TestRCOWireBytes(t *testing.T) {
	for _, tc := range []struct {
		start int
		udp   bool
		want  []byte
	}{
		{34, false, []byte{0x08, 0x20, 0, 0, 0, 0, 0x05, 0x11}}, // IPv4 TCP
		{34, true, []byte{0x08, 0x20, 0, 0, 0, 0, 0x05, 0x91}},  // IPv4 UDP
		{54, false, []byte{0x08, 0x20, 0, 0, 0, 0, 0x05, 0x1b}}, // IPv6 TCP
		{MaxCsumStart, false, []byte{0x08, 0x20, 0, 0, 0, 0, 0x05, 0x7f}},
		{0, false, []byte{0x08, 0, 0, 0, 0, 0, 0x05, 0}}, // none
	} {
		b := make([]byte, HeaderLen)
		Header{VNI: 5, CsumStart: tc.start, CsumUDP: tc.udp}.Encode(b)
		if !bytes.Equal(b, tc.want) {
			t.Fatalf("start %d udp %v: % x, want % x", tc.start, tc.udp, b, tc.want)
		}
		var h Header
		if err := h.Decode(b); err != nil || h != (Header{VNI: 5, CsumStart: tc.start, CsumUDP: tc.udp && tc.start != 0}) {
			t.Fatalf("start %d udp %v: decoded %+v, %v", tc.start, tc.udp, h, err)
		}
		if RCO(b) != (tc.start != 0) {
			t.Fatalf("start %d: RCO(b) = %v", tc.start, RCO(b))
		}
	}
	// The flag with a zero start would point the checksum at the inner
	// Ethernet header.
	var h Header
	if err := h.Decode([]byte{0x08, 0x20, 0, 0, 0, 0, 0x05, 0x80}); !errors.Is(err, ErrFlags) {
		t.Fatalf("RCO with start 0: %v, want ErrFlags", err)
	}
}

func TestCodecAllocs(t *testing.T) {
	b := make([]byte, FrameHeaderLen+64)
	copy(b[FrameHeaderLen:], ipv4Packet("payload"))
	f := Frame{VNI: 1, EtherType: EtherTypeIPv4}
	var out Frame
	allocs := testing.AllocsPerRun(1000, func() {
		f.Encode(b)
		if err := out.Decode(b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("encode+decode allocates %v times per packet, want 0", allocs)
	}
}

func FuzzFrameDecode(f *testing.F) {
	fr := Frame{VNI: 1, EtherType: EtherTypeIPv4}
	b := make([]byte, FrameHeaderLen)
	fr.Encode(b)
	f.Add(append(b, ipv4Packet("seed")...))
	f.Add([]byte{0x08, 0, 0, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var fr Frame
		if err := fr.Decode(b); err != nil {
			return
		}
		// A frame that decodes re-encodes to the same header bytes, modulo
		// the reserved fields that Decode ignores.
		out := make([]byte, FrameHeaderLen)
		fr.Encode(out)
		if !bytes.Equal(out[4:7], b[4:7]) || !bytes.Equal(out[8:], b[8:FrameHeaderLen]) || out[0] != b[0] {
			t.Fatalf("re-encode differs: % x vs % x", out, b[:FrameHeaderLen])
		}
	})
}

func BenchmarkFrameEncodeDecode(b *testing.B) {
	buf := make([]byte, FrameHeaderLen+1400)
	copy(buf[FrameHeaderLen:], ipv4Packet("payload"))
	f := Frame{VNI: 1, EtherType: EtherTypeIPv4}
	var out Frame
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		f.Encode(buf)
		if err := out.Decode(buf); err != nil {
			b.Fatal(err)
		}
	}
}
