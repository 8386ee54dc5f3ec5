package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/overlay/control"
)

// runStatus asks the local weftd for this node's record and its peers.
func runStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	runDir := fs.String("run-dir", "/run/weft", "weftd's run directory (holds weftd.sock)")
	sock := fs.String("socket", "", "path of weftd's control socket (default <run-dir>/weftd.sock)")
	output := fs.String("o", "text", "output format: text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sock == "" {
		*sock = filepath.Join(*runDir, "weftd.sock")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := control.Get(ctx, *sock)
	if err != nil {
		return err
	}
	switch *output {
	case "json":
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	case "text":
		printStatus(st)
		return nil
	default:
		return fmt.Errorf("-o %q: want text or json", *output)
	}
}

func printStatus(st control.Status) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSITE\tUNDERLAY\tPUBLIC\tPOD CIDRS\tTRANSPORT\tPATH\tSTATE\tLAST SEEN")
	row := func(n control.Node, self bool) {
		name := n.Name
		if self {
			name += " (self)"
		}
		seen := "-"
		if !n.LastSeen.IsZero() {
			seen = time.Since(n.LastSeen).Truncate(time.Second).String() + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, orDash(n.Site), n.UnderlayAddr, orDash(n.PublicAddr), strings.Join(n.PodCIDRs, ","), n.Transport, orDash(n.Path), n.State, seen)
	}
	row(st.Self, true)
	for _, p := range st.Peers {
		row(p, false)
	}
	w.Flush()
	for _, n := range append([]control.Node{st.Self}, st.Peers...) {
		if n.AltUnderlayAddr != "" {
			fmt.Printf("%s: second underlay address %s\n", n.Name, n.AltUnderlayAddr)
		}
	}
	for _, p := range st.Peers {
		if p.Unreachable != "" {
			fmt.Printf("%s: unreachable: %s\n", p.Name, p.Unreachable)
		}
	}
	var drops []string
	for k, v := range st.Counters {
		if strings.HasPrefix(k, "drop_") && v > 0 {
			drops = append(drops, fmt.Sprintf("%s=%d", k, v))
		}
	}
	fmt.Printf("\nmtu %d  tx %d pkts  rx %d pkts  drops: %s\n", st.Self.MTU, st.Counters["tx_packets"], st.Counters["rx_packets"], orDash(strings.Join(drops, " ")))
	if p := st.Process; p.PID != 0 {
		start := p.Start
		switch {
		case p.HandOffFrom != 0:
			start = fmt.Sprintf("%s (from pid %d, %d peers)", start, p.HandOffFrom, p.WarmPeers)
		case p.WarmPeers > 0:
			start = fmt.Sprintf("%s (%d peers from the last table)", start, p.WarmPeers)
		}
		fmt.Printf("weftd pid %d, generation %d, started %s, %s start\n", p.PID, p.Generation, p.Started.Format(time.RFC3339), start)
	}
	printNetworkPolicy(st.NetworkPolicy)
}

// printNetworkPolicy shows NetworkPolicy enforcement (weftd
// --network-policy): policies and rules in force, drops by policy.
func printNetworkPolicy(np *control.NetworkPolicy) {
	if np == nil {
		return
	}
	state := "not yet applied (the previous table stays in force)"
	if np.Synced {
		state = fmt.Sprintf("applied %s ago in %.1f ms", time.Since(np.LastApply).Truncate(time.Second), np.LastApplyMillis)
	}
	fmt.Printf("\nnetwork policy: %d policies (%d selecting pods here), %d rules, %d pods known; %s; %d applies, %d failed, %d invalid\n",
		np.Policies, np.Selecting, np.Rules, np.Pods, state, np.Applies, np.Failures, np.Invalid)
	if np.LastError != "" {
		fmt.Printf("last error: %s\n", np.LastError)
	}
	if len(np.Drops) == 0 {
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "POLICY\tDROPPED IN\tDROPPED OUT")
	for _, d := range np.Drops {
		fmt.Fprintf(w, "%s\t%d\t%d\n", d.Policy, d.Ingress, d.Egress)
	}
	w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
