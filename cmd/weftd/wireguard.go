package main

// WireGuard key rotation, the one WireGuard action of the control API.

import (
	"errors"
	"fmt"
	"sync"

	"github.com/weftnet/weft/encap/wireguard"
	"github.com/weftnet/weft/peer"
)

// keyRotation serialises rotations.
var keyRotation sync.Mutex

// rotateKey gives the node a new WireGuard key: stored first (so a crash
// keeps the new one), then applied to the device, then gossiped so peers
// re-key toward us.
func rotateKey(c config, wg *wireguard.Device, members *peer.Membership) (any, error) {
	if wg == nil {
		return nil, errors.New("this node runs no WireGuard device")
	}
	keyRotation.Lock()
	defer keyRotation.Unlock()
	k, err := wireguard.NewKeyFile(c.WGKeyFile)
	if err != nil {
		return nil, err
	}
	if err := wg.SetPrivateKey(k); err != nil {
		return nil, err
	}
	self := members.Self()
	self.WGPublicKey = k.PublicKey()
	self.Generation++
	if err := members.UpdateSelf(self, 0); err != nil {
		return nil, fmt.Errorf("gossip new key: %w", err)
	}
	return map[string]string{"publicKey": k.PublicKey().String()}, nil
}
