// Package ipam allocates pod addresses on one node.
//
// Design note: the Store keeps its state only on disk, in the layout of the
// CNI host-local plugin, because its main user is weft-cni, a short-lived
// process of which the runtime may start several at once:
//
//	<dir>/lock               flock(2) target; every operation holds it exclusively
//	<dir>/<addr>             one file per allocated address, named by the address
//	                         (netip.Addr.String()), containing ContainerID "\n" IfName
//	<dir>/last_reserved_ip   the address handed out last, so allocation is
//	                         round-robin and a freed address is not reused at once
//
// Every file is written through diskfile.Write (a temporary name, fsync,
// rename into place, fsync of the directory), so a crash leaves either the
// old or the new state, never a torn file. A temporary file left behind by
// a crash (a dot name) does not parse as an address and is ignored.
//
// The flock serialises processes; a mutex serialises goroutines sharing one
// Store, because flock locks belong to the open file description and would
// not exclude two goroutines using the same descriptor.
package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/ipam/diskfile"
)

// ErrExhausted is returned by Allocate when every usable address of the
// prefix is taken.
var ErrExhausted = errors.New("ipam: no free address in prefix")

const (
	lockName         = "lock"
	lastReservedName = "last_reserved_ip"
	// fileMode is the mode of every file the store writes (the lock
	// aside): nothing but weft-cni and weftd, both root, reads them.
	fileMode = 0o640
)

// Owner identifies one attachment: the CNI container ID and interface name.
// An owner holds at most one address per prefix.
type Owner struct {
	ContainerID string
	IfName      string
}

func (o Owner) validate() error {
	if o.ContainerID == "" || o.IfName == "" {
		return fmt.Errorf("ipam: owner needs container ID and interface name, got %q/%q", o.ContainerID, o.IfName)
	}
	if strings.ContainsAny(o.ContainerID, "\n") || strings.ContainsAny(o.IfName, "\n") {
		return fmt.Errorf("ipam: owner %q/%q contains a line break", o.ContainerID, o.IfName)
	}
	return nil
}

// Store is a node-local address allocator persisted in a directory.
// It is safe for concurrent use by goroutines and by processes that open the
// same directory.
type Store struct {
	dir string

	mu   sync.Mutex // serialises goroutines; flock on lock serialises processes
	lock *os.File   // nil after Close
}

// Open opens (creating if needed) the store in dir.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("ipam: create %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ipam: open lock: %w", err)
	}
	return &Store{dir: dir, lock: f}, nil
}

// Close releases the lock file. It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	if err != nil {
		return fmt.Errorf("ipam: close lock: %w", err)
	}
	return nil
}

// Dir is the directory the store lives in.
func (s *Store) Dir() string { return s.dir }

// locked runs fn holding both the mutex and the exclusive flock.
func (s *Store) locked(fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return errors.New("ipam: store closed")
	}
	fd := int(s.lock.Fd())
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return fmt.Errorf("ipam: flock %s: %w", s.lock.Name(), err)
		}
	}
	defer unix.Flock(fd, unix.LOCK_UN) //nolint:errcheck // closing the fd unlocks too
	return fn()
}

// Allocate returns an address for owner from cidr. If owner already holds an
// address in cidr, that address is returned again, so a retried ADD does not
// leak. The network address, the IPv4 broadcast address and every address in
// reserved (the gateway) are never handed out. Allocation is round-robin,
// starting after the address handed out last.
func (s *Store) Allocate(cidr netip.Prefix, reserved []netip.Addr, owner Owner) (netip.Addr, error) {
	if err := owner.validate(); err != nil {
		return netip.Addr{}, err
	}
	if !cidr.IsValid() {
		return netip.Addr{}, fmt.Errorf("ipam: invalid prefix %v", cidr)
	}
	cidr = cidr.Masked()
	var got netip.Addr
	err := s.locked(func() error {
		held, err := s.scan()
		if err != nil {
			return err
		}
		for a, o := range held {
			if o == owner && cidr.Contains(a) {
				got = a
				return nil
			}
		}
		r := newRange(cidr)
		start := r.first
		if last, ok := s.readLast(); ok && r.contains(last) {
			start = r.next(last)
		}
		a := start
		for {
			if _, taken := held[a]; !taken && !isReserved(a, reserved) {
				if err := s.writeOwner(a, owner); err != nil {
					return err
				}
				if err := diskfile.Write(filepath.Join(s.dir, lastReservedName), []byte(a.String()), fileMode); err != nil {
					// Undo the claim: the caller sees a failure and
					// must not be left holding an address it never got.
					os.Remove(filepath.Join(s.dir, a.String()))
					return fmt.Errorf("ipam: record last reserved %v: %w", a, err)
				}
				got = a
				return nil
			}
			// Terminates: each step lands on a free address or on
			// one of the finitely many taken or reserved ones, so
			// even an IPv6 /64 is walked only len(held)+len(reserved)
			// steps before a free address turns up or the walk wraps.
			a = r.next(a)
			if a == start {
				return fmt.Errorf("%w %v", ErrExhausted, cidr)
			}
		}
	})
	if err != nil {
		return netip.Addr{}, err
	}
	return got, nil
}

// Release frees every address held by owner. Releasing an owner that holds
// nothing is not an error, so DEL can be repeated.
func (s *Store) Release(owner Owner) error {
	if err := owner.validate(); err != nil {
		return err
	}
	return s.locked(func() error {
		held, err := s.scan()
		if err != nil {
			return err
		}
		removed := false
		for a, o := range held {
			if o != owner {
				continue
			}
			if err := os.Remove(filepath.Join(s.dir, a.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("ipam: release %v: %w", a, err)
			}
			removed = true
		}
		if removed {
			return diskfile.SyncDir(s.dir)
		}
		return nil
	})
}

// Prune releases every allocation whose owner keep rejects and returns what
// it released. It is the allocator half of CNI GC: the runtime names the
// attachments that are still valid, and everything else (a pod whose DEL
// never came, an ADD killed after its address was persisted) goes. Files in
// the older host-local format (no interface name) match no attachment and
// are pruned too. It works through every allocation even when one removal
// fails, and reports the failures together.
func (s *Store) Prune(keep func(Owner) bool) (map[netip.Addr]Owner, error) {
	released := make(map[netip.Addr]Owner)
	err := s.locked(func() error {
		held, err := s.scan()
		if err != nil {
			return err
		}
		var errs []error
		for a, o := range held {
			if keep(o) {
				continue
			}
			if err := os.Remove(filepath.Join(s.dir, a.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("ipam: prune %v: %w", a, err))
				continue
			}
			released[a] = o
		}
		if len(released) > 0 {
			if err := diskfile.SyncDir(s.dir); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	return released, err
}

// Free counts the addresses of cidr that Allocate could still hand out,
// given reserved, capped at limit (an IPv6 /64 has more than anyone needs
// counted). STATUS uses it to report an exhausted node as not ready.
func (s *Store) Free(cidr netip.Prefix, reserved []netip.Addr, limit int) (int, error) {
	if !cidr.IsValid() {
		return 0, fmt.Errorf("ipam: invalid prefix %v", cidr)
	}
	cidr = cidr.Masked()
	var free int
	err := s.locked(func() error {
		held, err := s.scan()
		if err != nil {
			return err
		}
		r := newRange(cidr)
		// Walk at most len(held)+len(reserved)+limit addresses: by then
		// either limit free ones turned up or the range wrapped.
		a := r.first
		for steps := len(held) + len(reserved) + limit; steps >= 0 && free < limit; steps-- {
			if _, taken := held[a]; !taken && !isReserved(a, reserved) {
				free++
			}
			if a == r.last {
				break
			}
			a = a.Next()
		}
		return nil
	})
	return free, err
}

// Lookup returns an address held by owner (the lowest, if it holds several).
func (s *Store) Lookup(owner Owner) (netip.Addr, bool, error) {
	if err := owner.validate(); err != nil {
		return netip.Addr{}, false, err
	}
	var got netip.Addr
	err := s.locked(func() error {
		held, err := s.scan()
		if err != nil {
			return err
		}
		for a, o := range held {
			if o == owner && (!got.IsValid() || a.Less(got)) {
				got = a
			}
		}
		return nil
	})
	if err != nil {
		return netip.Addr{}, false, err
	}
	return got, got.IsValid(), nil
}

// Addresses returns every address held by owner, in order (IPv4 before
// IPv6): a dual-stack attachment holds one of each family.
func (s *Store) Addresses(owner Owner) ([]netip.Addr, error) {
	if err := owner.validate(); err != nil {
		return nil, err
	}
	var got []netip.Addr
	err := s.locked(func() error {
		held, err := s.scan()
		if err != nil {
			return err
		}
		for a, o := range held {
			if o == owner {
				got = append(got, a)
			}
		}
		return nil
	})
	slices.SortFunc(got, netip.Addr.Compare)
	return got, err
}

// Allocations returns every allocated address and its owner.
func (s *Store) Allocations() (map[netip.Addr]Owner, error) {
	var held map[netip.Addr]Owner
	err := s.locked(func() error {
		var err error
		held, err = s.scan()
		return err
	})
	return held, err
}

// scan reads all allocation files. Files whose name is not an address
// (lock, last_reserved_ip, temporaries) are skipped. Callers hold the lock.
func (s *Store) scan() (map[netip.Addr]Owner, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("ipam: read %s: %w", s.dir, err)
	}
	held := make(map[netip.Addr]Owner, len(entries))
	for _, e := range entries {
		a, err := netip.ParseAddr(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("ipam: read allocation %v: %w", a, err)
		}
		held[a] = parseOwner(b)
	}
	return held, nil
}

// parseOwner decodes "containerID\nifname". A file holding only a container
// ID (the older host-local format) yields an empty IfName: the address stays
// taken but matches no owner.
func parseOwner(b []byte) Owner {
	id, ifname, _ := bytes.Cut(b, []byte("\n"))
	return Owner{
		ContainerID: strings.TrimSpace(string(id)),
		IfName:      strings.TrimSpace(string(ifname)),
	}
}

func (s *Store) writeOwner(a netip.Addr, o Owner) error {
	if err := diskfile.Write(filepath.Join(s.dir, a.String()), []byte(o.ContainerID+"\n"+o.IfName), fileMode); err != nil {
		return fmt.Errorf("ipam: record %v: %w", a, err)
	}
	return nil
}

func (s *Store) readLast() (netip.Addr, bool) {
	b, err := os.ReadFile(filepath.Join(s.dir, lastReservedName))
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.Addr{}, false
	}
	return a, true
}

func isReserved(a netip.Addr, reserved []netip.Addr) bool {
	for _, r := range reserved {
		if a == r {
			return true
		}
	}
	return false
}

// hostRange is the inclusive span of assignable addresses in a prefix.
type hostRange struct {
	first, last netip.Addr
}

// newRange drops the network address (both families: in IPv6 it is the
// subnet-router anycast address) and the IPv4 broadcast address. IPv4 /31
// and /32 keep every address (RFC 3021); IPv6 /127 and /128 likewise.
func newRange(p netip.Prefix) hostRange {
	first := p.Addr()
	last := lastAddr(p)
	bits := p.Addr().BitLen()
	if bits-p.Bits() >= 2 {
		first = first.Next()
		if p.Addr().Is4() {
			last = last.Prev()
		}
	}
	return hostRange{first: first, last: last}
}

func (r hostRange) contains(a netip.Addr) bool {
	return a.BitLen() == r.first.BitLen() && !a.Less(r.first) && !r.last.Less(a)
}

// next returns the address after a, wrapping from last to first.
func (r hostRange) next(a netip.Addr) netip.Addr {
	if a == r.last {
		return r.first
	}
	return a.Next()
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	host := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
