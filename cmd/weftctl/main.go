// Command weftctl is weft's operator tool: the netns lab (`weftctl lab
// up|down|status`), the end-to-end demo behind `make demo` (`weftctl
// demo`), and a node's status (`weftctl status`).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/weftnet/weft/cmd/internal/buildinfo"
)

const usage = `usage: weftctl <command> [flags]

commands:
  lab up       build the netns lab (router, nodes, weftd, pods) and wait for it to converge
  lab down     tear the lab down (also removes leftovers of a crashed run)
  lab status   show the running lab (-o text|json)
  demo         up, ping and TCP between every pair of pods, summary, down; exit 0 only on PASS
  status       show a weftd's status
  install-cni  install weft-cni and the conflist on the node (the DaemonSet's init container)
  gossip-key   generate a gossip key; list, add, use or remove keys of a running weftd
  version      print the version (also --version)
  wireguard rotate-key
               give the local node a new WireGuard key; peers re-key by gossip

Run "weftctl <command> -h" for the flags of a command.
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "weftctl:", err)
		os.Exit(1)
	}
}

// errUsage marks errors for which the usage text helps.
var errUsage = errors.New("usage")

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	switch args[0] {
	case "lab":
		return runLab(args[1:])
	case "demo":
		return runDemo(args[1:])
	case "status":
		return runStatus(args[1:])
	case "install-cni":
		return runInstallCNI(args[1:])
	case "gossip-key":
		return runGossipKey(args[1:])
	case "wireguard":
		return runWireGuard(args[1:])
	case "version", "--version", "-version":
		fmt.Println(buildinfo.String("weftctl"))
		return nil
	case "-h", "--help", "help":
		fmt.Fprint(os.Stdout, usage)
		return nil
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
}
