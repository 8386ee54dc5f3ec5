package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ApplyMasquerade makes MasqTable hold exactly m's rules, in one atomic
// netlink batch: the ip table (and, for a dual-stack m, the ip6 one) and
// its postrouting chain created if missing, their rules replaced; a
// family m does not use loses its table; nil removes both. Idempotent, so
// a periodic call repairs drift.
func ApplyMasquerade(m *Masquerade) error {
	var v4, v6 []masqRule
	if m != nil {
		var err error
		if v4, v6, err = m.rules(); err != nil {
			return err
		}
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masquerade: nftables: %w", err)
	}
	changed := false
	for _, f := range []struct {
		family nftables.TableFamily
		rules  []masqRule
	}{{nftables.TableFamilyIPv4, v4}, {nftables.TableFamilyIPv6, v6}} {
		t := &nftables.Table{Name: MasqTable, Family: f.family}
		if f.rules == nil {
			if _, err := c.ListTableOfFamily(MasqTable, f.family); err != nil && (errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT)) {
				continue // nothing to remove
			}
			c.DelTable(t)
			changed = true
			continue
		}
		c.AddTable(t)
		c.FlushTable(t)
		ch := c.AddChain(&nftables.Chain{
			Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		})
		for _, r := range f.rules {
			exprs := prefixMatch(true, r.src, expr.CmpOpEq)
			if r.masq {
				exprs = append(exprs, prefixMatch(false, r.dst, expr.CmpOpNeq)...)
				exprs = append(exprs, &expr.Masq{})
			} else {
				exprs = append(exprs, prefixMatch(false, r.dst, expr.CmpOpEq)...)
				exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictReturn})
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
		changed = true
	}
	if !changed {
		return nil
	}
	if err := c.Flush(); err != nil && (m != nil || !errors.Is(err, unix.ENOENT)) {
		return fmt.Errorf("masquerade: apply table %s: %w", MasqTable, err)
	}
	return nil
}

// prefixMatch compares the source (src) or destination address of the
// network header, masked to p's length, with p: offsets 12 and 16 in an
// IPv4 header, 8 and 24 in an IPv6 one.
func prefixMatch(src bool, p netip.Prefix, op expr.CmpOp) []expr.Any {
	off, n := uint32(16), uint32(4)
	if src {
		off = 12
	}
	if p.Addr().Is6() {
		off, n = 24, 16
		if src {
			off = 8
		}
	}
	a := p.Addr().AsSlice()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: net.CIDRMask(p.Bits(), int(n)*8), Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: 1, Data: a},
	}
}
