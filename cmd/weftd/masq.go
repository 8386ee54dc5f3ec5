package main

// Egress masquerade (overlay/masq.go): on by default, for each family the
// node has pods of, applied once the datapath is up and re-applied every
// --masquerade-resync to repair drift.

import (
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/weftnet/weft/overlay"
)

type masqFlags struct {
	Masquerade bool
	MasqExcept []netip.Prefix
	MasqResync time.Duration
	except     string // --masquerade-except, comma-separated
}

func (m *masqFlags) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&m.Masquerade, "masquerade", true, "translate the source of pod traffic leaving the cluster CIDR to the node's address (nftables table ip "+overlay.MasqTable+", and ip6 "+overlay.MasqTable+" for IPv6 pods); false removes the tables")
	fs.StringVar(&m.except, "masquerade-except", "", "comma-separated CIDRs (IPv4, or IPv6 on a dual-stack node) outside the cluster CIDR that pods reach with their own address (e.g. the VPC's range)")
	fs.DurationVar(&m.MasqResync, "masquerade-resync", time.Minute, "how often the masquerade table is applied again, repairing changes made by others")
}

// checkMasq parses --masquerade-except and checks the resync interval.
func (c *config) checkMasq() error {
	for _, s := range strings.Split(c.except, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Is4In6() {
			return fmt.Errorf("--masquerade-except %q: want CIDRs", s)
		}
		if p.Addr().Is6() && !c.ClusterCIDR6.IsValid() {
			return fmt.Errorf("--masquerade-except %s: an IPv6 CIDR needs an IPv6 --cluster-cidr", s)
		}
		c.MasqExcept = append(c.MasqExcept, p.Masked())
	}
	if c.MasqResync <= 0 {
		return fmt.Errorf("--masquerade-resync %s: want > 0", c.MasqResync)
	}
	return nil
}

// masqueradeOf is the masquerade c asks for, nil for none. An IPv6
// --masquerade-except entry (the flag is cluster-wide) is left out on a
// node without IPv6 pods, such as a Node made before the cluster went
// dual-stack, which kube-controller-manager gives no IPv6 block.
func masqueradeOf(c config, log *slog.Logger) *overlay.Masquerade {
	if !c.Masquerade {
		return nil
	}
	m := &overlay.Masquerade{PodCIDR: c.PodCIDR, ClusterCIDR: c.ClusterCIDR}
	if c.PodCIDR6.IsValid() {
		m.PodCIDR6, m.ClusterCIDR6 = c.PodCIDR6, c.ClusterCIDR6
	}
	for _, e := range c.MasqExcept {
		if e.Addr().Is6() && !c.PodCIDR6.IsValid() {
			log.Info("no IPv6 pod CIDR on this node: its IPv6 --masquerade-except entry is not used", "cidr", e)
			continue
		}
		m.Except = append(m.Except, e)
	}
	return m
}

// startMasquerade applies the masquerade (or removes it with
// --masquerade=false) and keeps it applied; the returned function stops
// the resync. The table stays when weftd exits: pods keep reaching the
// outside across restarts.
func startMasquerade(c config, log *slog.Logger) (stop func() error, err error) {
	want := masqueradeOf(c, log)
	if err := overlay.ApplyMasquerade(want); err != nil {
		return nil, err
	}
	if want == nil {
		return func() error { return nil }, nil
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(c.MasqResync)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := overlay.ApplyMasquerade(want); err != nil {
					log.Warn("masquerade not repaired", "err", err)
				}
			}
		}
	}()
	return func() error { close(done); <-exited; return nil }, nil
}
