package peer

// Gossip encryption. memberlist encrypts every gossip packet and stream with
// AES-GCM under the keyring's primary key and tries every installed key on
// receive, so a key can be rotated without a flag day:
//
//  1. add the new key on every node (all nodes now accept both keys),
//  2. make it primary on every node (they now send with it; nodes not yet
//     switched still read it, step 1 made sure of that),
//  3. remove the old key everywhere.
//
// Skipping step 1 on some node cuts that node off until it catches up:
// memberlist marks it suspect, then dead. The key file weftd watches holds
// the desired keyring (first line primary), and SetKeys moves the live
// keyring to it in the safe order (add, use, remove) on one node; the
// operator sequences the three steps across nodes.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/memberlist"
)

// KeySize is the size of keys GenerateKey makes: AES-256.
const KeySize = 32

// ErrNoKeyring is returned by the key operations of a Membership that
// runs without gossip encryption: memberlist fixes that choice when it
// starts, so encryption cannot be switched on later.
var ErrNoKeyring = errors.New("gossip encryption is off (no keyring)")

// GenerateKey returns a new random AES-256 gossip key.
func GenerateKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generate gossip key: %w", err)
	}
	return k, nil
}

// EncodeKey is the text form of a key used in key files and by weftctl:
// standard base64, as Serf and Consul write theirs.
func EncodeKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// DecodeKey parses EncodeKey's form and checks the length (16, 24 or 32
// bytes: AES-128, -192 or -256).
func DecodeKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("gossip key: not base64: %w", err)
	}
	if err := memberlist.ValidateKey(k); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return k, nil
}

// ParseKeyFile parses a key file: one base64 key per line, the first one
// primary; blank lines and lines starting with '#' are ignored. A key
// listed twice counts once. An empty file is an error: a node must never
// fall back to plaintext because a file was truncated.
func ParseKeyFile(b []byte) ([][]byte, error) {
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, err := DecodeKey(s)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if !containsKey(keys, k) {
			keys = append(keys, k)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no key in key file")
	}
	return keys, nil
}

// FormatKeyFile is ParseKeyFile's inverse.
func FormatKeyFile(keys [][]byte) []byte {
	var b bytes.Buffer
	b.WriteString("# weft gossip keys, base64; the first one is primary\n")
	for _, k := range keys {
		b.WriteString(EncodeKey(k))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func containsKey(keys [][]byte, k []byte) bool {
	for _, x := range keys {
		if bytes.Equal(x, k) {
			return true
		}
	}
	return false
}

// newKeyring builds memberlist's keyring from cfg: Keys, else SecretKey,
// else nil (encryption off).
func newKeyring(cfg Config) (*memberlist.Keyring, error) {
	keys := cfg.Keys
	if len(keys) == 0 && cfg.SecretKey != nil {
		keys = [][]byte{cfg.SecretKey}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	// memberlist's keyring keeps the slices it is given; copy so a caller
	// reusing its buffers cannot change our keys underneath us.
	own := make([][]byte, len(keys))
	for i, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return nil, fmt.Errorf("gossip key %d: %w", i, err)
		}
		own[i] = bytes.Clone(k)
	}
	return memberlist.NewKeyring(own, own[0])
}

// Encrypted reports whether gossip is encrypted.
func (m *Membership) Encrypted() bool { return m.keyring != nil }

// Keys returns the installed gossip keys, primary first.
func (m *Membership) Keys() ([][]byte, error) {
	if m.keyring == nil {
		return nil, ErrNoKeyring
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	return m.keysLocked(), nil
}

// keysLocked lists the keyring primary first. memberlist keeps the primary
// at index 0 already; the copy makes that explicit and unshared.
func (m *Membership) keysLocked() [][]byte {
	all := m.keyring.GetKeys()
	prim := m.keyring.GetPrimaryKey()
	out := [][]byte{bytes.Clone(prim)}
	for _, k := range all {
		if !bytes.Equal(k, prim) {
			out = append(out, bytes.Clone(k))
		}
	}
	return out
}

// AddKey installs k as a secondary key: gossip under k is now accepted.
// Adding an installed key is a no-op.
func (m *Membership) AddKey(k []byte) error {
	if m.keyring == nil {
		return ErrNoKeyring
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	if err := m.keyring.AddKey(bytes.Clone(k)); err != nil {
		return fmt.Errorf("add gossip key: %w", err)
	}
	m.log.Info("gossip key added", "key_id", KeyID(k))
	return nil
}

// UseKey makes the installed key k primary: gossip is now sent under k.
func (m *Membership) UseKey(k []byte) error {
	if m.keyring == nil {
		return ErrNoKeyring
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	if err := m.keyring.UseKey(k); err != nil {
		return fmt.Errorf("use gossip key %s: %w", KeyID(k), err)
	}
	m.log.Info("gossip primary key changed", "key_id", KeyID(k))
	return nil
}

// RemoveKey uninstalls k. The primary key cannot be removed; an unknown
// key is an error, so a typo does not pass for success.
func (m *Membership) RemoveKey(k []byte) error {
	if m.keyring == nil {
		return ErrNoKeyring
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	if !containsKey(m.keyring.GetKeys(), k) {
		return fmt.Errorf("remove gossip key %s: not installed", KeyID(k))
	}
	if err := m.keyring.RemoveKey(k); err != nil {
		return fmt.Errorf("remove gossip key %s: %w", KeyID(k), err)
	}
	m.log.Info("gossip key removed", "key_id", KeyID(k))
	return nil
}

// SetKeys moves the keyring to exactly keys, keys[0] primary, in the order
// that never drops a key still in use: add the missing ones, switch the
// primary, then remove the ones no longer listed. It reports whether
// anything changed.
func (m *Membership) SetKeys(keys [][]byte) (changed bool, err error) {
	if m.keyring == nil {
		return false, ErrNoKeyring
	}
	if len(keys) == 0 {
		return false, errors.New("set gossip keys: empty keyring")
	}
	for i, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return false, fmt.Errorf("set gossip keys: key %d: %w", i, err)
		}
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	for _, k := range keys {
		if !containsKey(m.keyring.GetKeys(), k) {
			if err := m.keyring.AddKey(bytes.Clone(k)); err != nil {
				return changed, fmt.Errorf("set gossip keys: add %s: %w", KeyID(k), err)
			}
			m.log.Info("gossip key added", "key_id", KeyID(k))
			changed = true
		}
	}
	if !bytes.Equal(m.keyring.GetPrimaryKey(), keys[0]) {
		if err := m.keyring.UseKey(keys[0]); err != nil {
			return changed, fmt.Errorf("set gossip keys: use %s: %w", KeyID(keys[0]), err)
		}
		m.log.Info("gossip primary key changed", "key_id", KeyID(keys[0]))
		changed = true
	}
	for _, k := range m.keysLocked() {
		if !containsKey(keys, k) {
			if err := m.keyring.RemoveKey(k); err != nil {
				return changed, fmt.Errorf("set gossip keys: remove %s: %w", KeyID(k), err)
			}
			m.log.Info("gossip key removed", "key_id", KeyID(k))
			changed = true
		}
	}
	return changed, nil
}

// KeyID is a short, non-secret name for a key in logs and status: a
// prefix of its SHA-256, never a piece of the key itself.
func KeyID(k []byte) string {
	h := sha256.Sum256(k)
	return hex.EncodeToString(h[:4])
}
