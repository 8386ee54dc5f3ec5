// Package peer owns weft's membership: the node record every daemon
// gossips about itself (Record, a small versioned binary codec carried as
// memberlist node metadata) and the memberlist wrapper (Membership) that
// turns gossip events into whole snapshots of the live peers.
//
// The record is untrusted input: any node that can gossip can put any
// bytes in its metadata. Decoding therefore never panics, rejects every
// field that does not fit its bound, and a decoded record is checked with
// Validate before anyone uses it.
package peer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"unicode/utf8"
)

// Capability bits advertised in Record.Caps. Unknown bits are carried
// through untouched so that older daemons accept records from newer ones.
const (
	CapVXLAN     uint32 = 1 << 0 // accepts VXLAN-format UDP on Underlay
	CapWireGuard uint32 = 1 << 1 // runs a WireGuard device on WGPort with WGPublicKey
	// CapRemoteChecksum: takes VXLAN frames with remote checksum offload
	// (encap/vxlan: RCO) from weft peers.
	CapRemoteChecksum uint32 = 1 << 2
	// CapRelay: forwards pod traffic between two WireGuard peers that
	// cannot reach each other (both without a public endpoint, in
	// different sites) when both pick it as their relay (pipeline: relay).
	CapRelay uint32 = 1 << 3
	// CapGossipTag: takes gossip packets that carry the sender's name in
	// front (peer: tagged transport), which is how peers learn the
	// address a node behind NAT is seen at.
	CapGossipTag uint32 = 1 << 4
	// CapBehindNAT: the node has no public address and public peers see
	// its packets come from another address than its own (peer:
	// transport.go): other sites can reach it only through the NAT
	// mappings it opens, or a relay. Without it, a node without a public
	// address is taken to be routed: its internal address works from
	// everywhere.
	CapBehindNAT uint32 = 1 << 5
)

// Codec bounds. They keep the worst-case encoding (308 bytes) well under
// memberlist's MetaMaxSize (512), which memberlist enforces with a panic.
const (
	RecordVersion = 1  // first byte of every encoded record
	MaxNameLen    = 63 // a DNS label; see Validate
	MaxSiteLen    = 63
	MaxPodCIDRs   = 4 // one or two per family is normal; four leaves room
	MaxRecordSize = 512
)

// ErrUnsupportedVersion is returned (wrapped) by UnmarshalBinary for a
// record whose version byte this daemon does not understand, so callers
// can tell "newer peer" apart from "garbage".
var ErrUnsupportedVersion = errors.New("unsupported record version")

// Record is what one node tells the cluster about itself. It is gossiped
// as memberlist node metadata and re-published whenever it changes (with a
// higher Generation).
//
// Records handed out by this package (Membership snapshots, Self) share
// their PodCIDRs backing array between readers; treat them as read-only.
type Record struct {
	Name     string         // node name; equals the memberlist node name
	Underlay netip.AddrPort // where this node receives VXLAN-format UDP
	PodCIDRs []netip.Prefix // pod CIDRs owned by this node, at most one per family in practice
	// VTEPMAC is the inner Ethernet source address this node uses and the
	// destination its peers must write. A fixed array rather than
	// net.HardwareAddr: comparable, copyable and allocation-free.
	VTEPMAC     [6]byte
	WGPublicKey [32]byte // WireGuard public key; all zero means none
	WGPort      uint16   // WireGuard UDP port on the underlay address
	Site        string   // site label; transport policy may encrypt across sites
	// Public is the node's public address, if it has one: where nodes of
	// other sites reach it (a cloud's 1:1 NAT address, an override).
	// Underlay is its internal address, bound and used inside its site;
	// the ports are the same on both. Invalid means none: the node has
	// no inbound path from other sites and is reached through the NAT
	// mappings it keeps open, or through a relay.
	Public netip.Addr
	// AltUnderlay is the node's underlay address of the other family
	// than Underlay's, on the same ports (VXLAN, WireGuard, gossip), for
	// a node with one address per family: peers that have only that
	// family reach it there (weftd: reach.go, peer: transport.go).
	// Invalid means none: the node has Underlay's family only.
	AltUnderlay netip.Addr
	Caps        uint32 // Cap* bits
	Generation  uint64 // bumped by the owner on every change of its record
}

// Equal reports whether r and o describe the same record. A nil and an
// empty PodCIDRs compare equal; the order of PodCIDRs matters.
func (r Record) Equal(o Record) bool {
	if r.Name != o.Name || r.Underlay != o.Underlay || r.VTEPMAC != o.VTEPMAC ||
		r.WGPublicKey != o.WGPublicKey || r.WGPort != o.WGPort || r.Site != o.Site ||
		r.Caps != o.Caps || r.Generation != o.Generation || r.Public != o.Public || r.AltUnderlay != o.AltUnderlay ||
		len(r.PodCIDRs) != len(o.PodCIDRs) {
		return false
	}
	for i := range r.PodCIDRs {
		if r.PodCIDRs[i] != o.PodCIDRs[i] {
			return false
		}
	}
	return true
}

// HasWGKey reports whether the record carries a WireGuard public key.
func (r *Record) HasWGKey() bool { return r.WGPublicKey != [32]byte{} }

// Validate checks a record for basic sanity: what every consumer needs to
// be true before it looks at the fields. Checks against cluster state (the
// CIDR is inside the cluster CIDR, no overlap with another live node)
// belong to the consumer that knows that state.
func (r Record) Validate() error {
	if r.Name == "" {
		return errors.New("record: empty name")
	}
	if err := checkLabel("name", r.Name, MaxNameLen); err != nil {
		return err
	}
	if err := checkLabel("site", r.Site, MaxSiteLen); err != nil {
		return err
	}
	if !r.Underlay.Addr().IsValid() {
		return fmt.Errorf("record %s: invalid underlay address", r.Name)
	}
	if a := r.Underlay.Addr(); a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("record %s: unusable underlay address %s", r.Name, a)
	}
	if r.Underlay.Port() == 0 {
		return fmt.Errorf("record %s: zero underlay port", r.Name)
	}
	if a := r.Public; a.IsValid() && (a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.Is4In6()) {
		return fmt.Errorf("record %s: unusable public address %s", r.Name, a)
	}
	if a := r.AltUnderlay; a.IsValid() {
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.Is4In6() {
			return fmt.Errorf("record %s: unusable second underlay address %s", r.Name, a)
		}
		if a.Is4() == r.Underlay.Addr().Unmap().Is4() {
			return fmt.Errorf("record %s: second underlay address %s is of the same family as %s (one per family)", r.Name, a, r.Underlay.Addr())
		}
	}
	if len(r.PodCIDRs) > MaxPodCIDRs {
		return fmt.Errorf("record %s: %d pod CIDRs, at most %d", r.Name, len(r.PodCIDRs), MaxPodCIDRs)
	}
	for _, p := range r.PodCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("record %s: invalid pod CIDR %s", r.Name, p)
		}
		if p != p.Masked() {
			return fmt.Errorf("record %s: pod CIDR %s has host bits set (want %s)", r.Name, p, p.Masked())
		}
		if p.Addr().Is4In6() {
			return fmt.Errorf("record %s: pod CIDR %s is IPv4-mapped IPv6", r.Name, p)
		}
	}
	if r.Caps&CapVXLAN != 0 {
		// The MAC goes into every inner Ethernet header; a multicast or
		// zero destination would be dropped by a kernel vxlan peer.
		if r.VTEPMAC == [6]byte{} || r.VTEPMAC[0]&1 != 0 {
			return fmt.Errorf("record %s: VXLAN capable but VTEP MAC %x is not unicast", r.Name, r.VTEPMAC)
		}
	}
	if r.Caps&CapWireGuard != 0 {
		if !r.HasWGKey() {
			return fmt.Errorf("record %s: WireGuard capable but no public key", r.Name)
		}
		if r.WGPort == 0 {
			return fmt.Errorf("record %s: WireGuard capable but zero port", r.Name)
		}
	}
	return nil
}

// checkLabel keeps names printable: they end up in logs, status output and
// interface-adjacent tooling.
func checkLabel(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("record: %s is %d bytes, at most %d", what, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("record: %s %q is not UTF-8", what, s)
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("record: %s %q contains a control character", what, s)
		}
	}
	return nil
}

// Encoding, version 1. Integers are big endian; strings are a one-byte
// length followed by that many bytes; an address is a family byte (0 = no
// address, 4, 6) followed by 0, 4 or 16 bytes.
//
//	version        1   = 1
//	name           1+n   n ≤ 63
//	site           1+s   s ≤ 63
//	underlay addr  1+0|4|16
//	underlay port  2
//	pod CIDR count 1     ≤ 4, then per CIDR:
//	  address      1+4|16  family 4 or 6; as given (masking is Validate's business)
//	  bits         1       ≤ 32 or ≤ 128
//	VTEP MAC       6
//	flags          1     bit 0: WireGuard key follows; bit 1: public
//	                     address follows; bit 2: second underlay
//	                     address follows; other bits zero
//	WG public key  32    only with flag bit 0
//	public addr    1+4|16 only with flag bit 1
//	alt underlay   1+4|16 only with flag bit 2
//	WG port        2
//	caps           4
//	generation     8
//
// A typical IPv4 node with one CIDR and a WireGuard key is under 100 bytes.
// Flag bit 1 came with public addresses: a daemon from before refuses a
// record that sets it (unknown flag), so in a cluster mid-upgrade give
// nodes a public address only once every node runs a version that knows it.
// Flag bit 2 came with a second underlay address (one per family): the same
// holds, a daemon from before refuses such a record, so give a node its
// second address only once every node knows the bit.
const (
	flagWGKey       = 1 << 0
	flagPublic      = 1 << 1
	flagAltUnderlay = 1 << 2
)

// Size returns the length of r's encoding.
func (r *Record) Size() int {
	n := 1 + 1 + len(r.Name) + 1 + len(r.Site) + addrLen(r.Underlay.Addr()) + 2 + 1
	for _, p := range r.PodCIDRs {
		n += 1 + addrLen(p.Addr())
	}
	n += 6 + 1 + 2 + 4 + 8
	if r.HasWGKey() {
		n += 32
	}
	if r.Public.IsValid() {
		n += addrLen(r.Public)
	}
	if r.AltUnderlay.IsValid() {
		n += addrLen(r.AltUnderlay)
	}
	return n
}

// addrLen is the encoded size of an address including its family byte.
func addrLen(a netip.Addr) int {
	switch {
	case !a.IsValid():
		return 1
	case a.Is4():
		return 1 + 4
	default:
		return 1 + 16
	}
}

// MarshalBinary returns r's encoding in a new buffer.
func (r *Record) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(make([]byte, 0, r.Size()))
}

// AppendBinary appends r's encoding to b and returns the extended buffer.
// It fails only if a field exceeds its bound; it does not run Validate, so
// a record can be encoded before every field is known.
func (r *Record) AppendBinary(b []byte) ([]byte, error) {
	if len(r.Name) > MaxNameLen {
		return b, fmt.Errorf("encode record: name is %d bytes, at most %d", len(r.Name), MaxNameLen)
	}
	if len(r.Site) > MaxSiteLen {
		return b, fmt.Errorf("encode record %s: site is %d bytes, at most %d", r.Name, len(r.Site), MaxSiteLen)
	}
	if len(r.PodCIDRs) > MaxPodCIDRs {
		return b, fmt.Errorf("encode record %s: %d pod CIDRs, at most %d", r.Name, len(r.PodCIDRs), MaxPodCIDRs)
	}
	if r.Underlay.Addr().Zone() != "" || r.Public.Zone() != "" || r.AltUnderlay.Zone() != "" {
		return b, fmt.Errorf("encode record %s: underlay address %s, %s or public address %s has a zone", r.Name, r.Underlay.Addr(), r.AltUnderlay, r.Public)
	}
	for _, p := range r.PodCIDRs {
		if !p.IsValid() || p.Addr().Zone() != "" {
			return b, fmt.Errorf("encode record %s: invalid pod CIDR %s", r.Name, p)
		}
	}

	b = append(b, RecordVersion)
	b = append(b, byte(len(r.Name)))
	b = append(b, r.Name...)
	b = append(b, byte(len(r.Site)))
	b = append(b, r.Site...)
	b = appendAddr(b, r.Underlay.Addr())
	b = binary.BigEndian.AppendUint16(b, r.Underlay.Port())
	b = append(b, byte(len(r.PodCIDRs)))
	for _, p := range r.PodCIDRs {
		b = appendAddr(b, p.Addr())
		b = append(b, byte(p.Bits()))
	}
	b = append(b, r.VTEPMAC[:]...)
	var flags byte
	if r.HasWGKey() {
		flags |= flagWGKey
	}
	if r.Public.IsValid() {
		flags |= flagPublic
	}
	if r.AltUnderlay.IsValid() {
		flags |= flagAltUnderlay
	}
	b = append(b, flags)
	if r.HasWGKey() {
		b = append(b, r.WGPublicKey[:]...)
	}
	if r.Public.IsValid() {
		b = appendAddr(b, r.Public)
	}
	if r.AltUnderlay.IsValid() {
		b = appendAddr(b, r.AltUnderlay)
	}
	b = binary.BigEndian.AppendUint16(b, r.WGPort)
	b = binary.BigEndian.AppendUint32(b, r.Caps)
	b = binary.BigEndian.AppendUint64(b, r.Generation)
	return b, nil
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return append(b, 0)
	case a.Is4():
		v := a.As4()
		return append(append(b, 4), v[:]...)
	default:
		v := a.As16()
		return append(append(b, 6), v[:]...)
	}
}

// UnmarshalBinary decodes a record from b. Truncated input yields an error
// wrapping io.ErrShortBuffer; a version other than RecordVersion one
// wrapping ErrUnsupportedVersion. On error r is left unchanged. The record
// does not alias b.
func (r *Record) UnmarshalBinary(b []byte) error {
	if len(b) > MaxRecordSize {
		return fmt.Errorf("decode record: %d bytes, at most %d", len(b), MaxRecordSize)
	}
	d := decoder{b: b}
	if v := d.u8(); d.err == nil && v != RecordVersion {
		return fmt.Errorf("decode record: version %d: %w", v, ErrUnsupportedVersion)
	}
	var out Record
	out.Name = d.str("name", MaxNameLen)
	out.Site = d.str("site", MaxSiteLen)
	ua := d.addr("underlay address")
	out.Underlay = netip.AddrPortFrom(ua, d.u16())
	if n := int(d.u8()); d.err == nil {
		if n > MaxPodCIDRs {
			return fmt.Errorf("decode record %q: %d pod CIDRs, at most %d", out.Name, n, MaxPodCIDRs)
		}
		if n > 0 {
			out.PodCIDRs = make([]netip.Prefix, 0, n)
		}
		for i := 0; i < n && d.err == nil; i++ {
			a := d.addr("pod CIDR")
			bits := int(d.u8())
			if d.err != nil {
				break
			}
			if !a.IsValid() {
				return fmt.Errorf("decode record %q: pod CIDR %d has no address", out.Name, i)
			}
			if bits > a.BitLen() {
				return fmt.Errorf("decode record %q: pod CIDR %d: bad prefix length %d for %s", out.Name, i, bits, a)
			}
			out.PodCIDRs = append(out.PodCIDRs, netip.PrefixFrom(a, bits))
		}
	}
	copy(out.VTEPMAC[:], d.bytes(6))
	flags := d.u8()
	if d.err == nil && flags&^(flagWGKey|flagPublic|flagAltUnderlay) != 0 {
		return fmt.Errorf("decode record %q: unknown flags %#x", out.Name, flags)
	}
	if flags&flagWGKey != 0 {
		copy(out.WGPublicKey[:], d.bytes(32))
	}
	if flags&flagPublic != 0 {
		if out.Public = d.addr("public address"); d.err == nil && !out.Public.IsValid() {
			return fmt.Errorf("decode record %q: public address flag without an address", out.Name)
		}
	}
	if flags&flagAltUnderlay != 0 {
		if out.AltUnderlay = d.addr("second underlay address"); d.err == nil && !out.AltUnderlay.IsValid() {
			return fmt.Errorf("decode record %q: second underlay flag without an address", out.Name)
		}
	}
	out.WGPort = d.u16()
	out.Caps = d.u32()
	out.Generation = d.u64()
	if d.err != nil {
		return fmt.Errorf("decode record %q: %w", out.Name, d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("decode record %q: %d trailing bytes", out.Name, len(d.b))
	}
	*r = out
	return nil
}

// decoder reads from b front to back. The first failure sticks in err and
// every later read returns zero values, so UnmarshalBinary checks once.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = io.ErrShortBuffer
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() byte {
	if v := d.bytes(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.bytes(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.bytes(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.bytes(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) str(what string, max int) string {
	n := int(d.u8())
	if d.err != nil {
		return ""
	}
	if n > max {
		d.err = fmt.Errorf("%s is %d bytes, at most %d", what, n, max)
		return ""
	}
	return string(d.bytes(n))
}

func (d *decoder) addr(what string) netip.Addr {
	fam := d.u8()
	if d.err != nil {
		return netip.Addr{}
	}
	switch fam {
	case 0:
		return netip.Addr{}
	case 4:
		if v := d.bytes(4); v != nil {
			return netip.AddrFrom4([4]byte(v))
		}
	case 6:
		if v := d.bytes(16); v != nil {
			return netip.AddrFrom16([16]byte(v))
		}
	default:
		d.err = fmt.Errorf("%s: unknown address family %d", what, fam)
	}
	return netip.Addr{}
}
