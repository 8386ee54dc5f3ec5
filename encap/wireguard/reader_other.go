//go:build !linux

package wireguard

import "golang.zx2c4.com/wireguard/tun"

// readyFunc: no readiness poll off Linux; one frame per Read.
func readyFunc(tun.Device) func() bool { return nil }
