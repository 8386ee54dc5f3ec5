package lab

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

// Status asks the weftd of node for its status over the node's control
// socket. The socket is a file, so this works from the root namespace.
func (l *Lab) Status(ctx context.Context, node string) (control.Status, error) {
	n := l.Node(node)
	if n == nil {
		return control.Status{}, fmt.Errorf("status: no node %q", node)
	}
	if n.External || n.ControlSocket == "" {
		return control.Status{}, fmt.Errorf("status: node %s runs no weftd", node)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := control.Get(ctx, n.ControlSocket)
	if err != nil {
		return control.Status{}, fmt.Errorf("status %s: %w", node, err)
	}
	return st, nil
}

// WaitConverged polls every non-external node's weftd until each one sees
// every other non-external node alive, or ctx ends; the error then says
// who is still missing whom.
func (l *Lab) WaitConverged(ctx context.Context) error {
	var names []string
	for _, n := range l.Nodes {
		if !n.External {
			names = append(names, n.Name)
		}
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		// Each round asks with its own deadline, so the last one before
		// ctx ends still says who lacks whom (not just that ctx ended).
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		missing := l.missingPeers(rctx, names)
		cancel()
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab not converged: %w: %s", ctx.Err(), strings.Join(missing, "; "))
		case <-tick.C:
		}
	}
}

// missingPeers returns one line per node that does not yet see all others.
func (l *Lab) missingPeers(ctx context.Context, names []string) []string {
	var out []string
	for _, name := range names {
		st, err := l.Status(ctx, name)
		if err != nil {
			out = append(out, err.Error())
			continue
		}
		var lack []string
		for _, other := range names {
			if other == name {
				continue
			}
			if !slices.ContainsFunc(st.Peers, func(p control.Node) bool { return p.Name == other && p.State == peer.StateAlive }) {
				lack = append(lack, other)
			}
		}
		if len(lack) > 0 {
			out = append(out, fmt.Sprintf("%s lacks %s", name, strings.Join(lack, ",")))
		}
	}
	return out
}
