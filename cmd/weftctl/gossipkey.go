package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/weftnet/weft/overlay/control"
	"github.com/weftnet/weft/peer"
)

const gossipKeyUsage = `usage: weftctl gossip-key generate
       weftctl gossip-key [--run-dir DIR | --socket PATH] list
       weftctl gossip-key [--run-dir DIR | --socket PATH] add|use|remove KEY

generate prints a new random AES-256 gossip key (base64), e.g. for --gossip-key-file.
list shows the installed keys of the local weftd by ID (keys never leave weftd).
add installs KEY (base64); use makes it primary; remove uninstalls it. use and
remove also accept an ID from list. Rotate without losing a node: add the new key
on every node, then use it on every node, then remove the old one everywhere.
Changes made here last until weftd restarts or its key file changes.
`

func runGossipKey(args []string) error {
	fs := flag.NewFlagSet("gossip-key", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, gossipKeyUsage) }
	runDir := fs.String("run-dir", "/run/weft", "weftd's run directory (holds weftd.sock)")
	sock := fs.String("socket", "", "path of weftd's control socket (default <run-dir>/weftd.sock)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sock == "" {
		*sock = filepath.Join(*runDir, "weftd.sock")
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return fmt.Errorf("%w: gossip-key needs a subcommand", errUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	switch op := rest[0]; {
	case op == "generate" && len(rest) == 1:
		k, err := peer.GenerateKey()
		if err != nil {
			return err
		}
		fmt.Println(peer.EncodeKey(k))
		return nil
	case op == "list" && len(rest) == 1:
		keys, err := control.ListKeys(ctx, *sock)
		if err != nil {
			return err
		}
		printKeys(keys)
		return nil
	case slices.Contains(control.KeyOps, op) && len(rest) == 2:
		keys, err := control.ApplyKey(ctx, *sock, op, rest[1])
		if err != nil {
			return err
		}
		printKeys(keys)
		return nil
	default:
		fs.Usage()
		return fmt.Errorf("%w: gossip-key %q", errUsage, rest)
	}
}

func printKeys(keys []control.Key) {
	for _, k := range keys {
		mark := ""
		if k.Primary {
			mark = "  (primary)"
		}
		fmt.Printf("%s%s\n", k.ID, mark)
	}
}
