package control

// Gossip key management over the control socket, for `weftctl gossip-key`,
// as API actions:
//
//	POST /v1/gossip-keys/list              → [{"id":"1a2b3c4d","primary":true}, ...]
//	POST /v1/gossip-keys/add    {"key":K}  K: a base64 key
//	POST /v1/gossip-keys/use    {"key":K}  K: a base64 key or an installed key's ID
//	POST /v1/gossip-keys/remove {"key":K}
//
// Keys never leave the daemon; the list shows non-secret IDs. Changes are
// runtime only: the key file (if any) is what a restart uses, and a later
// edit of that file replaces the whole keyring again.

import (
	"context"
	"fmt"
)

// Key describes one installed gossip key.
type Key struct {
	ID      string `json:"id"`
	Primary bool   `json:"primary"`
}

// Keyring is what weftd exposes for key management.
type Keyring interface {
	List() ([]Key, error)
	// Apply runs op ("add", "use", "remove") with key.
	Apply(op, key string) error
}

// KeyOps are the key operations ApplyKey accepts.
var KeyOps = []string{"add", "use", "remove"}

// AddKeyActions registers the gossip key actions for k in actions.
func AddKeyActions(actions map[string]func(map[string]string) (any, error), k Keyring) {
	actions["gossip-keys/list"] = func(map[string]string) (any, error) { return k.List() }
	for _, op := range KeyOps {
		actions["gossip-keys/"+op] = func(args map[string]string) (any, error) {
			if args["key"] == "" {
				return nil, fmt.Errorf("gossip-keys/%s: no key given", op)
			}
			if err := k.Apply(op, args["key"]); err != nil {
				return nil, err
			}
			return k.List()
		}
	}
}

// ListKeys asks the daemon at path for its gossip keys.
func ListKeys(ctx context.Context, path string) ([]Key, error) {
	var keys []Key
	err := Do(ctx, path, "gossip-keys/list", map[string]string{}, &keys)
	return keys, err
}

// ApplyKey asks the daemon at path to add, use or remove a gossip key and
// returns the keyring after the change.
func ApplyKey(ctx context.Context, path, op, key string) ([]Key, error) {
	var keys []Key
	err := Do(ctx, path, "gossip-keys/"+op, map[string]string{"key": key}, &keys)
	return keys, err
}
