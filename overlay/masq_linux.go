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
// netlink batch (the table and its postrouting chain created if missing,
// their rules replaced); nil removes the table. Idempotent, so a periodic
// call repairs drift.
func ApplyMasquerade(m *Masquerade) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masquerade: nftables: %w", err)
	}
	t := &nftables.Table{Name: MasqTable, Family: nftables.TableFamilyIPv4}
	if m == nil {
		if _, err := c.ListTableOfFamily(MasqTable, nftables.TableFamilyIPv4); err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
				return nil // nothing to remove
			}
		}
		c.DelTable(t)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("masquerade: remove table %s: %w", MasqTable, err)
		}
		return nil
	}
	rules, err := m.rules()
	if err != nil {
		return err
	}
	c.AddTable(t)
	c.FlushTable(t)
	ch := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	for _, r := range rules {
		exprs := prefixMatch(12, r.src, expr.CmpOpEq)
		if r.masq {
			exprs = append(exprs, prefixMatch(16, r.dst, expr.CmpOpNeq)...)
			exprs = append(exprs, &expr.Masq{})
		} else {
			exprs = append(exprs, prefixMatch(16, r.dst, expr.CmpOpEq)...)
			exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictReturn})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade: apply table %s: %w", MasqTable, err)
	}
	return nil
}

// prefixMatch compares the IPv4 address at offset off of the network
// header (12: source, 16: destination), masked to p's length, with p.
func prefixMatch(off uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	a := p.Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(p.Bits(), 32), Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: a[:]},
	}
}
