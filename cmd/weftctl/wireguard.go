package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/overlay/control"
)

// runWireGuard handles `weftctl wireguard rotate-key`.
func runWireGuard(args []string) error {
	if len(args) == 0 || args[0] != "rotate-key" {
		return fmt.Errorf("%w: want `weftctl wireguard rotate-key`", errUsage)
	}
	fs := flag.NewFlagSet("wireguard rotate-key", flag.ContinueOnError)
	runDir := fs.String("run-dir", "/run/weft", "weftd's run directory (holds weftd.sock)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var res map[string]string
	if err := control.Do(ctx, filepath.Join(*runDir, "weftd.sock"), "wireguard/rotate-key", nil, &res); err != nil {
		return err
	}
	fmt.Println("new public key:", res["publicKey"])
	return nil
}
