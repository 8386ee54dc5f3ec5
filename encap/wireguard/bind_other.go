//go:build !linux

package wireguard

import "golang.zx2c4.com/wireguard/conn"

// newBind returns the bind the device uses: wireguard-go's own off Linux.
func newBind() conn.Bind { return conn.NewStdNetBind() }
