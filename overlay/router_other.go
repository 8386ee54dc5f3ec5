//go:build !linux

package overlay

// startFast starts nothing: the fast paths (tun_linux.go) need Linux TUN
// offloads.
func (r *Router) startFast(uint16) (outbound, inbound bool, err error) {
	return false, false, nil
}
