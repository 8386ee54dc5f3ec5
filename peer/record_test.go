package peer

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func testRecord() Record {
	return Record{
		Name:       "n1",
		Underlay:   netip.MustParseAddrPort("192.0.2.11:4789"),
		PodCIDRs:   []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		VTEPMAC:    [6]byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01},
		Site:       "site1",
		Caps:       CapVXLAN,
		Generation: 1,
	}
}

func TestRecordRoundTrip(t *testing.T) {
	var key [32]byte
	for i := range key {
		key[i] = byte(i + 1)
	}
	full := Record{
		Name:        strings.Repeat("n", MaxNameLen),
		Underlay:    netip.MustParseAddrPort("[2001:db8::1]:8472"),
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/64"), netip.MustParsePrefix("10.245.0.0/24"), netip.MustParsePrefix("fd00::/8")},
		VTEPMAC:     [6]byte{2, 0, 0, 0, 0, 1},
		WGPublicKey: key,
		WGPort:      51820,
		Site:        strings.Repeat("s", MaxSiteLen),
		Caps:        CapVXLAN | CapWireGuard | 1<<31,
		Generation:  ^uint64(0),
		Public:      netip.MustParseAddr("2001:db8:ffff::1"),
		AltUnderlay: netip.MustParseAddr("198.51.100.255"),
	}
	public := testRecord()
	public.Public = netip.MustParseAddr("203.0.113.11")
	wg := testRecord()
	wg.WGPublicKey = key
	wg.WGPort = 51820
	wg.Caps |= CapWireGuard
	dual := testRecord()
	dual.PodCIDRs = append(dual.PodCIDRs, netip.MustParsePrefix("fd00:10:244:1::/64"))
	// One underlay address per family, either one first.
	twoFamilies := testRecord()
	twoFamilies.AltUnderlay = netip.MustParseAddr("2001:db8:1::11")
	twoFamilies6 := testRecord()
	twoFamilies6.Underlay = netip.MustParseAddrPort("[2001:db8:1::11]:4789")
	twoFamilies6.AltUnderlay = netip.MustParseAddr("192.0.2.11")
	twoSame := testRecord()
	twoSame.AltUnderlay = netip.MustParseAddr("192.0.2.99")

	tests := []struct {
		name  string
		rec   Record
		valid bool
	}{
		{"typical", testRecord(), true},
		{"wireguard", wg, true},
		{"public address", public, true},
		{"dual stack", dual, true},
		{"underlay in both families", twoFamilies, true},
		{"underlay in both families, IPv6 first", twoFamilies6, true},
		// Carried faithfully, refused by Validate: one address per family.
		{"two underlay addresses of one family", twoSame, false},
		{"max sizes", full, true},
		{"zero", Record{}, false},
		{"no cidrs", Record{Name: "a", Underlay: netip.MustParseAddrPort("192.0.2.1:1")}, true},
		// The codec carries unmasked prefixes and 4in6 addresses faithfully;
		// rejecting them is Validate's job.
		{"unmasked", Record{Name: "a", Underlay: netip.MustParseAddrPort("[::ffff:192.0.2.1]:1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.7/24"), netip.MustParsePrefix("::/0"), netip.MustParsePrefix("0.0.0.0/0")}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.rec.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary: %v", err)
			}
			if len(b) != tt.rec.Size() {
				t.Errorf("len = %d, Size() = %d", len(b), tt.rec.Size())
			}
			var got Record
			if err := got.UnmarshalBinary(b); err != nil {
				t.Fatalf("UnmarshalBinary: %v", err)
			}
			if !got.Equal(tt.rec) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tt.rec)
			}
			if err := got.Validate(); (err == nil) != tt.valid {
				t.Errorf("Validate() = %v, want valid=%v", err, tt.valid)
			}
			// AppendBinary appends after existing bytes and leaves them alone.
			pre := []byte{0xde, 0xad}
			b2, err := tt.rec.AppendBinary(pre)
			if err != nil || !bytes.Equal(b2[:2], []byte{0xde, 0xad}) || !bytes.Equal(b2[2:], b) {
				t.Errorf("AppendBinary = %x, %v; want dead%x", b2, err, b)
			}
		})
	}
}

func TestRecordSize(t *testing.T) {
	// The largest record the encoder accepts must fit memberlist's meta limit.
	var worst Record
	worst.Name = strings.Repeat("x", MaxNameLen)
	worst.Site = strings.Repeat("y", MaxSiteLen)
	worst.Underlay = netip.MustParseAddrPort("[2001:db8::1]:65535")
	for range MaxPodCIDRs {
		worst.PodCIDRs = append(worst.PodCIDRs, netip.MustParsePrefix("2001:db8::/128"))
	}
	worst.WGPublicKey[0] = 1
	worst.Public = netip.MustParseAddr("2001:db8::2")
	worst.AltUnderlay = netip.MustParseAddr("2001:db8::3") // the codec carries it; Validate refuses the family
	b, err := worst.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxRecordSize {
		t.Errorf("worst case record is %d bytes, limit %d", len(b), MaxRecordSize)
	}
	t.Logf("worst case %d bytes", len(b))

	typ := testRecord()
	typ.WGPublicKey[0] = 1
	typ.Caps |= CapWireGuard
	typ.WGPort = 51820
	typ.PodCIDRs = append(typ.PodCIDRs, netip.MustParsePrefix("fd00:10:244:1::/64"))
	typ.Name = "ip-10-0-1-23.eu-west-1.compute.internal"
	if n := typ.Size(); n >= 200 {
		t.Errorf("typical dual-stack WireGuard record is %d bytes, want < 200", n)
	}

	// Out-of-bound fields are refused by the encoder, not truncated.
	for name, r := range map[string]Record{
		"long name":  {Name: strings.Repeat("x", MaxNameLen+1)},
		"long site":  {Name: "a", Site: strings.Repeat("x", MaxSiteLen+1)},
		"many cidrs": {Name: "a", PodCIDRs: make([]netip.Prefix, MaxPodCIDRs+1)},
		"bad cidr":   {Name: "a", PodCIDRs: []netip.Prefix{{}}},
		"zone":       {Name: "a", Underlay: netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 1)},
	} {
		if _, err := r.MarshalBinary(); err == nil {
			t.Errorf("%s: MarshalBinary succeeded", name)
		}
	}
}

func TestRecordUnmarshalMalformed(t *testing.T) {
	good, err := func() ([]byte, error) { r := testRecord(); r.WGPublicKey[0] = 9; return r.MarshalBinary() }()
	if err != nil {
		t.Fatal(err)
	}
	// Offsets into good: 0 version, 1 name len, 2-3 "n1", 4 site len,
	// 5-9 "site1", 10 underlay family, 11-14 addr, 15-16 port, 17 count,
	// 18 family, 19-22 addr, 23 bits, 24-29 MAC, 30 flags, ...
	with := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error  // matched with errors.Is when non-nil
		msg  string // substring of the error otherwise
	}{
		{"empty", nil, io.ErrShortBuffer, ""},
		{"version 0", with(0, 0), ErrUnsupportedVersion, ""},
		{"version 2", with(0, 2), ErrUnsupportedVersion, ""},
		{"name too long", with(1, MaxNameLen+1), nil, "name is 64 bytes"},
		{"name past end", with(1, 60), io.ErrShortBuffer, ""},
		{"site too long", with(4, 200), nil, "site is 200 bytes"},
		{"bad underlay family", with(10, 5), nil, "unknown address family 5"},
		{"too many cidrs", with(17, MaxPodCIDRs+1), nil, "5 pod CIDRs"},
		{"cidr count past end", append(bytes.Clone(good[:17]), 1), io.ErrShortBuffer, ""},
		{"cidr without address", with(18, 0), nil, "no address"},
		{"v4 prefix length 33", with(23, 33), nil, "bad prefix length 33"},
		{"unknown flags", with(30, 0x87), nil, "unknown flags"},
		{"unknown flag bit 3", with(30, flagWGKey|1<<3), nil, "unknown flags"},
		// Flag bit 2 with the WireGuard port's first byte (0) read as
		// the second underlay address's family.
		{"second underlay flag without address", with(30, flagWGKey|flagAltUnderlay), nil, "second underlay flag without an address"},
		// Flag bit 1 with the WireGuard port's first byte (0) read as
		// the public address family.
		{"public flag without address", with(30, flagWGKey|flagPublic), nil, "public address flag without an address"},
		{"trailing byte", append(bytes.Clone(good), 0), nil, "1 trailing bytes"},
		{"oversized", make([]byte, MaxRecordSize+1), nil, "at most 512"},
	}
	for i := 1; i < len(good); i++ {
		tests = append(tests, struct {
			name string
			in   []byte
			want error
			msg  string
		}{"truncated", good[:i], io.ErrShortBuffer, ""})
	}
	for _, tt := range tests {
		sentinel := Record{Name: "untouched"}
		r := sentinel
		err := r.UnmarshalBinary(tt.in)
		switch {
		case err == nil:
			t.Errorf("%s (%x): no error", tt.name, tt.in)
			continue
		case tt.want != nil && !errors.Is(err, tt.want):
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		case tt.msg != "" && !strings.Contains(err.Error(), tt.msg):
			t.Errorf("%s: err = %v, want it to mention %q", tt.name, err, tt.msg)
		}
		if !r.Equal(sentinel) {
			t.Errorf("%s: record modified on error: %+v", tt.name, r)
		}
	}
}

func TestRecordValidate(t *testing.T) {
	mod := func(f func(*Record)) Record { r := testRecord(); f(&r); return r }
	bad := map[string]Record{
		"empty name":         mod(func(r *Record) { r.Name = "" }),
		"control char":       mod(func(r *Record) { r.Name = "a\nb" }),
		"not utf8":           mod(func(r *Record) { r.Site = "\xff" }),
		"long name":          mod(func(r *Record) { r.Name = strings.Repeat("a", 64) }),
		"no underlay":        mod(func(r *Record) { r.Underlay = netip.AddrPort{} }),
		"unspecified":        mod(func(r *Record) { r.Underlay = netip.MustParseAddrPort("0.0.0.0:4789") }),
		"multicast":          mod(func(r *Record) { r.Underlay = netip.MustParseAddrPort("239.1.1.1:4789") }),
		"zero port":          mod(func(r *Record) { r.Underlay = netip.MustParseAddrPort("192.0.2.11:0") }),
		"invalid cidr":       mod(func(r *Record) { r.PodCIDRs = []netip.Prefix{{}} }),
		"unmasked cidr":      mod(func(r *Record) { r.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.1/24")} }),
		"4in6 cidr":          mod(func(r *Record) { r.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("::ffff:10.244.1.0/120")} }),
		"too many cidrs":     mod(func(r *Record) { r.PodCIDRs = make([]netip.Prefix, 5) }),
		"vxlan without mac":  mod(func(r *Record) { r.VTEPMAC = [6]byte{} }),
		"multicast mac":      mod(func(r *Record) { r.VTEPMAC[0] = 1 }),
		"wg without key":     mod(func(r *Record) { r.Caps |= CapWireGuard; r.WGPort = 51820 }),
		"wg without port":    mod(func(r *Record) { r.Caps |= CapWireGuard; r.WGPublicKey[0] = 1 }),
		"public unspecified": mod(func(r *Record) { r.Public = netip.IPv4Unspecified() }),
		"public loopback":    mod(func(r *Record) { r.Public = netip.MustParseAddr("127.0.0.1") }),
		"public 4in6":        mod(func(r *Record) { r.Public = netip.MustParseAddr("::ffff:203.0.113.1") }),
		"alt same family":    mod(func(r *Record) { r.AltUnderlay = netip.MustParseAddr("192.0.2.12") }),
		"alt 4in6":           mod(func(r *Record) { r.AltUnderlay = netip.MustParseAddr("::ffff:192.0.2.12") }),
		"alt unspecified":    mod(func(r *Record) { r.AltUnderlay = netip.IPv6Unspecified() }),
		"alt multicast":      mod(func(r *Record) { r.AltUnderlay = netip.MustParseAddr("ff02::1") }),
	}
	for name, r := range bad {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, r)
		}
	}
	if err := testRecord().Validate(); err != nil {
		t.Errorf("good record: %v", err)
	}
}

func TestRecordUnmarshalAllocs(t *testing.T) {
	r := testRecord()
	b, _ := r.MarshalBinary()
	buf := make([]byte, 0, MaxRecordSize)
	if n := testing.AllocsPerRun(100, func() { buf, _ = r.AppendBinary(buf[:0]) }); n != 0 {
		t.Errorf("AppendBinary allocates %v times", n)
	}
	var out Record
	// Name, site and the CIDR slice: three allocations, nothing per field.
	if n := testing.AllocsPerRun(100, func() { _ = out.UnmarshalBinary(b) }); n > 3 {
		t.Errorf("UnmarshalBinary allocates %v times", n)
	}
}

func FuzzRecordUnmarshal(f *testing.F) {
	for _, r := range []Record{testRecord(), {}, {Name: "x", Underlay: netip.MustParseAddrPort("[2001:db8::2]:8472"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/64")}, WGPublicKey: [32]byte{1}}, {Name: "p", Underlay: netip.MustParseAddrPort("192.0.2.11:4789"), Public: netip.MustParseAddr("203.0.113.11")},
		{Name: "m", Underlay: netip.MustParseAddrPort("192.0.2.11:4789"), AltUnderlay: netip.MustParseAddr("2001:db8:1::11"), WGPublicKey: [32]byte{2}}} {
		b, err := r.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var r Record
		if err := r.UnmarshalBinary(in); err != nil {
			return
		}
		_ = r.Validate() // must not panic either
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded record does not re-encode: %v\n%+v", err, r)
		}
		if len(b) > MaxRecordSize {
			t.Fatalf("re-encoded record is %d bytes", len(b))
		}
		var r2 Record
		if err := r2.UnmarshalBinary(b); err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !r2.Equal(r) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", r2, r)
		}
	})
}
