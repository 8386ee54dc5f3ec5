package netpol

// The nftables writer: a Ruleset becomes the table ip weft-netpol, in one
// netlink batch (one kernel transaction: a packet sees the old rules or
// the new, never a mix, and never an open gap).
//
//	table ip weft-netpol
//	  chain egress-forward  { hook forward priority 0;  ct state established,related accept; jump egress }
//	  chain egress-input    { hook input   priority 0;  ct state established,related accept; jump egress }
//	  chain ingress-forward { hook forward priority 10; ct state established,related accept; jump ingress }
//	  chain egress  { ip saddr @<id>-sel jump <id>-eg ...; ip saddr @<id>-sel counter name <id>-eg-drop drop ... }
//	  chain ingress { ip daddr @<id>-sel jump <id>-in ...; ip daddr @<id>-sel counter name <id>-in-drop drop ... }
//	  chain <id>-in { [ip daddr @local] [ip saddr @peer] [meta l4proto P [th dport A-B]] accept ... }
//	  chain <id>-eg { [ip daddr @peer] [meta l4proto P [th dport A-B]] accept ... }
//
// Egress and ingress are separate base chains because an accept ends only
// its own base chain: a packet between two pods of this node must pass
// the sender's egress and then the receiver's ingress. A drop is counted
// on the first policy (in namespace/name order) that selects the pod.
//
// Apply replaces in place rather than deleting the table: it flushes every
// chain and set of the table and refills them, adds what is new and
// deletes what is no longer wanted, all in the same batch; the named
// counters of policies that stay are kept, so drop counts survive
// updates.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Table is this node's nftables table of NetworkPolicy.
type Table struct {
	netns int // a network namespace's fd; 0: the current one
}

// NewTable returns the table in the network namespace of fd (0: weftd's).
func NewTable(netnsFd int) *Table { return &Table{netns: netnsFd} }

// TableName is the nftables table weft enforces NetworkPolicy in (family
// ip: weft's pods are IPv4).
const TableName = "weft-netpol"

// Chains of the table that are not a policy's.
const (
	chainEgressForward  = "egress-forward"
	chainEgressInput    = "egress-input"
	chainIngressForward = "ingress-forward"
	chainEgress         = "egress"
	chainIngress        = "ingress"
)

// sockBuf is the netlink socket's send and receive buffer. One apply is
// one batch: every message of it is acknowledged, and each acknowledgement
// takes about a kilobyte of the receive buffer (its skb), so the default
// (rmem_default, about 200 KiB) overflows (ENOBUFS) at about 200 messages,
// some 15 policies; the batch itself, set elements included, must fit the
// send buffer. 64 MiB is a limit, not an allocation: about 60,000
// messages, thousands of policies.
const sockBuf = 64 << 20

// bigBuffers sets sockBuf on a netlink socket, past the sysctl limits
// (SO_RCVBUFFORCE, SO_SNDBUFFORCE: weftd has CAP_NET_ADMIN).
func bigBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("netlink socket buffers: %w", serr)
	}
	return nil
}

func (t *Table) conn() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(bigBuffers)}
	if t.netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(t.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netpol: nftables: %w", err)
	}
	return c, nil
}

func notExist(err error) bool { return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) }

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

// existing lists what the table holds now: chains, sets and named objects
// by name (all empty when there is no table).
func existing(c *nftables.Conn) (chains, sets, objs map[string]bool, err error) {
	chains, sets, objs = map[string]bool{}, map[string]bool{}, map[string]bool{}
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyIPv4); err != nil {
		if notExist(err) {
			return chains, sets, objs, nil
		}
		return nil, nil, nil, fmt.Errorf("netpol: list table %s: %w", TableName, err)
	}
	cs, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("netpol: list chains: %w", err)
	}
	for _, ch := range cs {
		if ch.Table.Name == TableName {
			chains[ch.Name] = true
		}
	}
	ss, err := c.GetSets(table)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("netpol: list sets: %w", err)
	}
	for _, s := range ss {
		sets[s.Name] = true
	}
	os, err := c.GetObjects(table)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("netpol: list counters: %w", err)
	}
	for _, o := range os {
		if co, ok := o.(*nftables.CounterObj); ok {
			objs[co.Name] = true
		}
	}
	return chains, sets, objs, nil
}

// Apply makes the table hold exactly rs (see the file's note).
func (t *Table) Apply(rs *Ruleset) error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	oldChains, oldSets, oldObjs, err := existing(c)
	if err != nil {
		return err
	}
	c.AddTable(table)
	// Flush first: no old rule may still refer to a set or chain that
	// goes below.
	for name := range oldChains {
		c.FlushChain(&nftables.Chain{Name: name, Table: table})
	}
	wantObjs := map[string]bool{}
	for _, p := range rs.Policies {
		for _, n := range []string{p.ID + "-in-drop", p.ID + "-eg-drop"} {
			wantObjs[n] = true
			c.AddObj(&nftables.CounterObj{Table: table, Name: n})
		}
	}
	sets := map[string]*nftables.Set{}
	for _, name := range sortedNames(rs.Sets) {
		s := &nftables.Set{Table: table, Name: name, Interval: true, KeyType: nftables.TypeIPAddr}
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("netpol: set %s: %w", name, err)
		}
		if oldSets[name] {
			c.FlushSet(s)
		}
		if els := elements(rs.Sets[name]); len(els) > 0 {
			if err := c.SetAddElements(s, els); err != nil {
				return fmt.Errorf("netpol: set %s: %w", name, err)
			}
		}
		sets[name] = s
	}
	chain := func(name string) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: table})
	}
	base := func(name string, hook *nftables.ChainHook, prio int) *nftables.Chain {
		accept := nftables.ChainPolicyAccept
		return c.AddChain(&nftables.Chain{
			Name: name, Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio)), Policy: &accept,
		})
	}
	wantChains := map[string]bool{}
	rule := func(ch *nftables.Chain, exprs ...expr.Any) {
		wantChains[ch.Name] = true
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: exprs})
	}
	egress, ingress := chain(chainEgress), chain(chainIngress)
	wantChains[chainEgress], wantChains[chainIngress] = true, true
	for _, b := range []struct {
		name, to string
		hook     *nftables.ChainHook
		prio     int
	}{
		{chainEgressForward, chainEgress, nftables.ChainHookForward, 0},
		{chainEgressInput, chainEgress, nftables.ChainHookInput, 0},
		{chainIngressForward, chainIngress, nftables.ChainHookForward, 10},
	} {
		ch := base(b.name, b.hook, b.prio)
		rule(ch, append(established(), accept())...)
		rule(ch, &expr.Verdict{Kind: expr.VerdictJump, Chain: b.to})
	}
	lookup := func(off uint32, set string) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: set, SetID: sets[set].ID},
		}
	}
	const saddr, daddr = 12, 16
	for _, dir := range []struct {
		dispatch *nftables.Chain
		suffix   string
		self     uint32 // the selected pod's address: source of egress, destination of ingress
	}{{egress, "-eg", saddr}, {ingress, "-in", daddr}} {
		var drops [][]expr.Any
		for _, p := range rs.Policies {
			allow := p.IngressAllow
			if dir.suffix == "-eg" {
				if !p.Egress {
					continue
				}
				allow = p.EgressAllow
			} else if !p.Ingress {
				continue
			}
			if p.Selected == "" {
				continue
			}
			pc := chain(p.ID + dir.suffix)
			wantChains[pc.Name] = true
			for _, m := range allow {
				var e []expr.Any
				remote := uint32(saddr)
				if dir.self == saddr {
					remote = daddr
				}
				if m.Local != "" {
					e = append(e, lookup(dir.self, m.Local)...)
				}
				if m.Peer != "" {
					e = append(e, lookup(remote, m.Peer)...)
				}
				e = append(e, ports(m)...)
				rule(pc, append(e, accept())...)
			}
			rule(dir.dispatch, append(lookup(dir.self, p.Selected), &expr.Verdict{Kind: expr.VerdictJump, Chain: pc.Name})...)
			drops = append(drops, append(lookup(dir.self, p.Selected), &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: p.ID + dir.suffix + "-drop"}, &expr.Verdict{Kind: expr.VerdictDrop}))
		}
		for _, d := range drops {
			rule(dir.dispatch, d...)
		}
	}
	for name := range oldChains {
		if !wantChains[name] {
			c.DelChain(&nftables.Chain{Name: name, Table: table})
		}
	}
	for name := range oldSets {
		if _, ok := rs.Sets[name]; !ok {
			c.DelSet(&nftables.Set{Name: name, Table: table})
		}
	}
	for name := range oldObjs {
		if !wantObjs[name] {
			c.DeleteObject(&nftables.CounterObj{Table: table, Name: name})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpol: apply table %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes the table; no table is no error.
func (t *Table) Remove() error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyIPv4); err != nil {
		if notExist(err) {
			return nil
		}
		return fmt.Errorf("netpol: list table %s: %w", TableName, err)
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil && !notExist(err) {
		return fmt.Errorf("netpol: remove table %s: %w", TableName, err)
	}
	return nil
}

// Counters reads the drop counters: policy ID → ingress and egress
// packets dropped (absent when there is no table).
func (t *Table) Counters() (map[string]Drops, error) {
	c, err := t.conn()
	if err != nil {
		return nil, err
	}
	objs, err := c.GetObjects(table)
	if err != nil {
		if notExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("netpol: read counters: %w", err)
	}
	out := map[string]Drops{}
	for _, o := range objs {
		co, ok := o.(*nftables.CounterObj)
		if !ok {
			continue
		}
		if id, ok := strings.CutSuffix(co.Name, "-in-drop"); ok {
			d := out[id]
			d.Ingress = co.Packets
			out[id] = d
		} else if id, ok := strings.CutSuffix(co.Name, "-eg-drop"); ok {
			d := out[id]
			d.Egress = co.Packets
			out[id] = d
		}
	}
	return out, nil
}

func established() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: nativeU32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }

// ports matches a Match's protocol and destination port range.
func ports(m Match) []expr.Any {
	if m.Proto == 0 {
		return nil
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(m.Proto)}},
	}
	if m.Port == 0 {
		return e
	}
	e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	if m.EndPort == m.Port {
		return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(m.Port)})
	}
	return append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: be16(m.Port), ToData: be16(m.EndPort)})
}

func be16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// nativeU32 is v in host byte order: ct state is a host-order register.
func nativeU32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// elements turns ranges into interval set elements: each range a start
// element and an end element one past it (none when it ends at the top of
// the address space).
func elements(rs []Range) []nftables.SetElement {
	els := make([]nftables.SetElement, 0, 2*len(rs))
	for _, r := range rs {
		from := r.From.As4()
		els = append(els, nftables.SetElement{Key: from[:]})
		if r.To == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			continue
		}
		end := r.To.Next().As4()
		els = append(els, nftables.SetElement{Key: end[:], IntervalEnd: true})
	}
	return els
}

func sortedNames[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
