package netpol

// The nftables writer: a Ruleset becomes the table inet weft-netpol, in
// one netlink batch (one kernel transaction: a packet sees the old rules
// or the new, never a mix, and never an open gap).
//
//	table inet weft-netpol
//	  chain egress-forward  { hook forward priority 0;  <nd> accept;
//	                          iifname "weft*" fib saddr . iif oif missing counter name spoofed-source drop;
//	                          ct state established,related accept; <nd> accept;
//	                          meta nfproto ipv4 jump egress4; meta nfproto ipv6 jump egress6 }
//	  chain egress-input    { hook input   priority 0;  (the same) }
//	  chain ingress-forward { hook forward priority 10; (the same without the spoofed-source rule, to ingress4 and ingress6) }
//	  chain ingress4 { ip daddr vmap @ingress-v4 }          pod address → jump <group>-in4
//	  chain egress6  { ip6 saddr vmap @egress-v6 }
//	  chain <group>-in4 { jump <id>-in4; jump <id2>-in4; ...; counter name <id>-in-drop drop }
//	  chain <id>-in4 { [ip daddr @local-v4] [ip saddr @peer-v4] [meta l4proto P [th dport A-B]] accept ... }
//	  chain <id>-eg6 { [ip6 daddr @peer-v6] [meta l4proto P [th dport A-B]] accept ... }
//
// The dispatch is one verdict map lookup per packet whatever the number
// of policies: a pod's address leads to its group (Ruleset's groups: the
// addresses selected by the same policies), whose chain runs each
// policy's allow list and drops what none accepted. A chain of rules
// "ip daddr @<id>-sel jump <id>-in", one per policy, cost a set lookup
// per policy on every new connection's first packet, selected or not.
// Each set of the Ruleset becomes up to two typed sets, <name>-v4 and
// <name>-v6, each written only when it has members; a rule that names a
// set with no member of its family is not written in that family (it
// would match nothing). The dispatch by family comes first, so a payload
// load of an address is always of the family it reads. <nd> is ICMPv6
// neighbour and router discovery (types 133 to 137) with hop limit 255:
// link-local, never forwarded (a router decrements the hop limit before
// the forward hook), and what a pod needs to reach its gateway at all;
// NetworkPolicy does not govern it, like ARP for IPv4.
//
// Egress and ingress are separate base chains because an accept ends only
// its own base chain: a packet between two pods of this node must pass
// the sender's egress and then the receiver's ingress. A drop is counted
// on the first policy (in namespace/name order) of the pod's group, in
// one counter per policy and direction for both families.
//
// Apply replaces in place rather than deleting the table: it flushes every
// chain and set of the table and refills them, adds what is new and
// deletes what is no longer wanted, all in the same batch; the named
// counters of policies that stay are kept, so drop counts survive
// updates. The table ip weft-netpol of weft before IPv6 (IPv4 only) is
// deleted in the batch that first writes the inet table: an upgrade has
// no moment with neither table, nor one with both.

import (
	"errors"
	"fmt"
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

// TableName is the nftables table weft enforces NetworkPolicy in, of
// family inet (IPv4 and IPv6). A table of this name in family ip is the
// IPv4-only table of earlier weft, replaced on the first Apply.
const TableName = "weft-netpol"

// Chains of the table that are not a policy's.
const (
	chainEgressForward  = "egress-forward"
	chainEgressInput    = "egress-input"
	chainIngressForward = "ingress-forward"
	chainEgress         = "egress"  // + "4" or "6"
	chainIngress        = "ingress" // + "4" or "6"
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

var (
	table       = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	legacyTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
)

// tableExists reports whether t is in the kernel.
func tableExists(c *nftables.Conn, t *nftables.Table) (bool, error) {
	if _, err := c.ListTableOfFamily(t.Name, t.Family); err != nil {
		if notExist(err) {
			return false, nil
		}
		return false, fmt.Errorf("netpol: list table %s: %w", t.Name, err)
	}
	return true, nil
}

// existing lists what the table holds now: chains, sets and named objects
// by name (all empty when there is no table).
func existing(c *nftables.Conn) (chains, sets, objs map[string]bool, err error) {
	chains, sets, objs = map[string]bool{}, map[string]bool{}, map[string]bool{}
	if ok, err := tableExists(c, table); err != nil || !ok {
		return chains, sets, objs, err
	}
	cs, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
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
	legacy, err := tableExists(c, legacyTable)
	if err != nil {
		return err
	}
	c.AddTable(table)
	// Flush first: no old rule may still refer to a set or chain that
	// goes below.
	for name := range oldChains {
		c.FlushChain(&nftables.Chain{Name: name, Table: table})
	}
	wantObjs := map[string]bool{SpoofedCounter: true}
	c.AddObj(&nftables.CounterObj{Table: table, Name: SpoofedCounter})
	for _, p := range rs.Policies {
		for _, n := range []string{p.ID + "-in-drop", p.ID + "-eg-drop"} {
			wantObjs[n] = true
			c.AddObj(&nftables.CounterObj{Table: table, Name: n})
		}
	}
	// Flush every old set too: a verdict map's elements refer to
	// chains, which cannot go below while referred to.
	for name := range oldSets {
		c.FlushSet(&nftables.Set{Name: name, Table: table})
	}
	// The sets the allow matches name (a policy's selected set is not
	// written: the groups' verdict maps dispatch).
	named := map[string][]Range{}
	for _, p := range rs.Policies {
		for _, m := range append(slices.Clone(p.IngressAllow), p.EgressAllow...) {
			for _, n := range []string{m.Peer, m.Local} {
				if n != "" {
					named[n] = rs.Sets[n]
				}
			}
		}
	}
	sets := map[string]*nftables.Set{} // by typed name
	wantSets := map[string]bool{}
	for _, name := range sortedNames(named) {
		for _, f := range Families {
			members := rs.Members(name, f)
			if len(members) == 0 {
				continue
			}
			s := &nftables.Set{Table: table, Name: setName(name, f), Interval: true, KeyType: nftables.TypeIPAddr}
			if f == IPv6 {
				s.KeyType = nftables.TypeIP6Addr
			}
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("netpol: set %s: %w", s.Name, err)
			}
			if err := c.SetAddElements(s, elements(members)); err != nil {
				return fmt.Errorf("netpol: set %s: %w", s.Name, err)
			}
			sets[s.Name], wantSets[s.Name] = s, true
		}
	}
	wantChains := map[string]bool{}
	chain := func(name string) *nftables.Chain {
		wantChains[name] = true
		return c.AddChain(&nftables.Chain{Name: name, Table: table})
	}
	base := func(name string, hook *nftables.ChainHook, prio int) *nftables.Chain {
		accept := nftables.ChainPolicyAccept
		wantChains[name] = true
		return c.AddChain(&nftables.Chain{
			Name: name, Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio)), Policy: &accept,
		})
	}
	rule := func(ch *nftables.Chain, exprs ...expr.Any) {
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: exprs})
	}
	dispatch := map[string]*nftables.Chain{}
	for _, stem := range []string{chainEgress, chainIngress} {
		for _, f := range Families {
			dispatch[stem+f.suffix()] = chain(stem + f.suffix())
		}
	}
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
		if b.to == chainEgress {
			// Before conntrack: a spoofed packet may match another pod's
			// established connection.
			rule(ch, append(neighbourDiscovery(), accept())...)
			rule(ch, spoofedSource()...)
		}
		rule(ch, append(established(), accept())...)
		rule(ch, append(neighbourDiscovery(), accept())...)
		for _, f := range Families {
			rule(ch, append(nfproto(f), &expr.Verdict{Kind: expr.VerdictJump, Chain: b.to + f.suffix()})...)
		}
	}
	lookup := func(f Family, field addrField, set string) []expr.Any {
		off, n := field.offset(f)
		s := sets[setName(set, f)]
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
		}
	}
	for _, dir := range []struct {
		stem, suffix string
		self, remote addrField // self: the selected pod's address, source of egress, destination of ingress
		groups       []Group
	}{{chainEgress, "-eg", saddr, daddr, rs.EgressGroups}, {chainIngress, "-in", daddr, saddr, rs.IngressGroups}} {
		for _, f := range Families {
			// The policies' chains: their allow lists.
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
				if !rs.Has(p.Selected, f) {
					continue
				}
				pc := chain(p.ID + dir.suffix + f.suffix())
				for _, m := range allow {
					if !rs.Applies(m, f) {
						continue
					}
					var e []expr.Any
					if m.Local != "" {
						e = append(e, lookup(f, dir.self, m.Local)...)
					}
					if m.Peer != "" {
						e = append(e, lookup(f, dir.remote, m.Peer)...)
					}
					e = append(e, ports(m)...)
					rule(pc, append(e, accept())...)
				}
			}
			// The groups' chains: each policy's allow list in
			// turn, then the drop.
			var els []nftables.SetElement
			for _, g := range dir.groups {
				members := familyMembers(g.Members, f)
				if len(members) == 0 {
					continue
				}
				gc := chain(g.Name + dir.suffix + f.suffix())
				for _, id := range g.Policies {
					rule(gc, &expr.Verdict{Kind: expr.VerdictJump, Chain: id + dir.suffix + f.suffix()})
				}
				rule(gc, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: g.Policies[0] + dir.suffix + "-drop"}, &expr.Verdict{Kind: expr.VerdictDrop})
				for _, e := range elements(members) {
					if !e.IntervalEnd {
						e.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: gc.Name}
					}
					els = append(els, e)
				}
			}
			if len(els) == 0 {
				continue
			}
			// The dispatch: the pod's address to its group's chain,
			// one lookup whatever the number of policies.
			vm := &nftables.Set{Table: table, Name: dir.stem + "-v" + f.suffix(), IsMap: true, Interval: true,
				KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}
			if f == IPv6 {
				vm.KeyType = nftables.TypeIP6Addr
			}
			if err := c.AddSet(vm, nil); err != nil {
				return fmt.Errorf("netpol: map %s: %w", vm.Name, err)
			}
			if err := c.SetAddElements(vm, els); err != nil {
				return fmt.Errorf("netpol: map %s: %w", vm.Name, err)
			}
			wantSets[vm.Name] = true
			off, n := dir.self.offset(f)
			rule(dispatch[dir.stem+f.suffix()],
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
				&expr.Lookup{SourceRegister: 1, SetName: vm.Name, SetID: vm.ID, DestRegister: 0, IsDestRegSet: true})
		}
	}
	for name := range oldChains {
		if !wantChains[name] {
			c.DelChain(&nftables.Chain{Name: name, Table: table})
		}
	}
	for name := range oldSets {
		if !wantSets[name] {
			c.DelSet(&nftables.Set{Name: name, Table: table})
		}
	}
	for name := range oldObjs {
		if !wantObjs[name] {
			c.DeleteObject(&nftables.CounterObj{Table: table, Name: name})
		}
	}
	if legacy {
		// Same transaction: the inet table above is in force the
		// moment the IPv4-only one is gone.
		c.DelTable(legacyTable)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpol: apply table inet %s: %w", TableName, err)
	}
	return nil
}

func (f Family) suffix() string {
	if f == IPv6 {
		return "6"
	}
	return "4"
}

// familyMembers are the ranges of rs of family f.
func familyMembers(rs []Range, f Family) []Range {
	var out []Range
	for _, r := range rs {
		if f.of(r.From) {
			out = append(out, r)
		}
	}
	return out
}

// setName is the nftables name of the family f half of Ruleset set name.
func setName(name string, f Family) string { return name + "-v" + f.suffix() }

// addrField is an address of the network header.
type addrField bool

const (
	saddr addrField = false
	daddr addrField = true
)

// offset is where the field is in a header of family f, and its length.
func (a addrField) offset(f Family) (off, n uint32) {
	switch {
	case f == IPv4 && a == saddr:
		return 12, 4
	case f == IPv4:
		return 16, 4
	case a == saddr:
		return 8, 16
	}
	return 24, 16
}

// nfproto matches packets of family f (meta nfproto).
func nfproto(f Family) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if f == IPv6 {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// PodInterfaces is the interface name prefix of the host side of every
// pod's veth (weft-cni's HostVethName) and of weft0: where packets with
// pod sources come in.
const PodInterfaces = "weft"

// spoofedSource drops a packet that comes in on a pod interface from a
// source address the node does not route back out of that interface
// (strict reverse path: fib saddr . iif oif missing): a pod sending with
// another pod's address, or any other address of the node's IPv6 /64,
// which the egress dispatch by source address would otherwise let
// through unselected. weft0's sources are remote pods, routed back
// through weft0, and pass. Counted in SpoofedCounter.
func spoofedSource() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(PodInterfaces)},
		&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: SpoofedCounter},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// neighbourDiscovery matches ICMPv6 router solicitation and advertisement,
// neighbour solicitation and advertisement, and redirect (133 to 137)
// with hop limit 255 (RFC 4861: only those are valid, and only on-link).
func neighbourDiscovery() []expr.Any {
	return append(nfproto(IPv6),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{255}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{133}, ToData: []byte{137}},
	)
}

// Remove deletes the table, and the IPv4-only table of earlier weft; no
// table is no error.
func (t *Table) Remove() error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	any := false
	for _, tab := range []*nftables.Table{table, legacyTable} {
		ok, err := tableExists(c, tab)
		if err != nil {
			return err
		}
		if ok {
			c.DelTable(tab)
			any = true
		}
	}
	if !any {
		return nil
	}
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
		if co.Name == SpoofedCounter {
			out[SpoofedCounter] = Drops{Egress: co.Packets}
		} else if id, ok := strings.CutSuffix(co.Name, "-in-drop"); ok {
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

// elements turns ranges of one family into interval set elements: each
// range a start element and an end element one past it (none when it
// ends at the top of the address space).
func elements(rs []Range) []nftables.SetElement {
	els := make([]nftables.SetElement, 0, 2*len(rs))
	for _, r := range rs {
		els = append(els, nftables.SetElement{Key: r.From.AsSlice()})
		if end := r.To.Next(); end.IsValid() {
			els = append(els, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
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
