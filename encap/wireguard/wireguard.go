// Package wireguard is weft's encrypted transport: a wireguard-go device
// (userspace, no kernel module) that speaks standard WireGuard on the
// underlay and exchanges plaintext pod packets with the node's TUN.
//
// The device reads the node's real TUN itself, as standalone wireguard-go
// does, into its own buffers and batches: no hand-off between goroutines.
// On Linux the reads are weft's own (reader_linux.go, encap/offload): raw
// read(2) calls straight into the device's buffers, super-packets split
// there with one copy of each segment. Before the device sees a batch, the router's Divert takes out
// of it the packets that are not for WireGuard peers (VXLAN peers under
// wireguard-across-sites, no route, too big); see reader.go. Inbound, the
// device writes decrypted packets straight to the TUN, one write per
// received batch. WireGuard itself picks the peer by allowed IPs (the
// peers' pod CIDRs) and drops inbound packets whose inner source is not
// allowed for the peer that sent them.
//
// The device is weft's copy of wireguard-go's device package
// (internal/device, FORK.md: origin version and every change): the
// handshake, timers, cookies, replay filter, rekeying and UAPI are
// upstream's; the transport-data path runs inline, where the batch is
// (sealed and sent by the TUN reader, opened and written by the UDP
// receiver) instead of through upstream's worker and per-peer goroutines,
// which on a two-core node cost more than the cipher (internal/device,
// inline.go).
//
// Peers are configured declaratively (SetPeers: the whole desired set, diffed
// against what is applied) through the UAPI protocol, and the UAPI socket
// /var/run/wireguard/<Name>.sock is served so that `wg show <Name>` works.
package wireguard

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/encap/wireguard/internal/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/ipam/diskfile"
)

// Overheads of WireGuard transport data messages: outer IP, UDP (8), the
// message header (16) and the Poly1305 tag (16).
const (
	OverheadIPv4 = 20 + 8 + 16 + 16 // 60
	OverheadIPv6 = 40 + 8 + 16 + 16 // 80
	DefaultPort  = 51820
)

// Config describes the device.
type Config struct {
	// Name is the UAPI name (`wg show <Name>`). UAPI sockets live on the
	// filesystem, not per network namespace, so it must be unique per host.
	Name       string
	PrivateKey wgtypes.Key
	ListenPort uint16
	// TUN is the node's real TUN device. The device reads outbound packets
	// from it (through SetDivert's filter), writes decrypted ones to it,
	// and follows its link state and MTU (padding), as standalone
	// wireguard-go does. Its Close must be idempotent: the device closes
	// it, and so does whoever else owns it.
	TUN    tun.Device
	Logger *slog.Logger
	// Resuming says this node's previous weftd had the peers of the first
	// SetPeers (a warm start or a hand-off): each of them starts a
	// handshake at once, whatever the key order (see keepaliveSeconds),
	// since they knew this node and will not start one themselves.
	Resuming bool
	// LateUAPI leaves the UAPI socket to StartUAPI (a hand-off: the
	// previous weftd serves that name until it is done).
	LateUAPI bool
}

// Peer is one WireGuard peer as the router wants it.
type Peer struct {
	PublicKey wgtypes.Key
	// Endpoint is where to send; invalid means none known: the device
	// waits for the peer's handshake and answers where it came from
	// (a peer behind NAT, which keeps its mapping open with
	// PersistentKeepalive). SetPeers writes an endpoint only when it
	// changes here, so one the device learned from the peer's packets
	// (WireGuard's roaming) is never overwritten by the same stale one.
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	// Keepalive sends a keepalive when the peer is added, which starts a
	// handshake (see keepaliveSeconds): for weft peers, whose gossiped
	// presence says their device is up. A static peer may not be ready
	// when it is configured; a handshake started then would go unanswered
	// and hold its first packets until wireguard-go's 5 s retry.
	Keepalive bool
	// PersistentKeepalive keeps sending one every keepaliveSeconds: where
	// this node is behind NAT and the peer is not, so that the NAT's
	// mapping stays open for the peer's packets. Elsewhere the keepalive
	// stops after the first.
	PersistentKeepalive bool
	// Standby keeps the peer as the device has it, if it has it, and adds
	// nothing otherwise: a peer gossip declared dead, not removed at once
	// so that its first handshake after a restart finds this device ready
	// (the restarted node starts one at once, Config.Resuming) instead of
	// being refused until gossip brings the peer back.
	Standby bool
}

// Device is a running wireguard-go device.
type Device struct {
	dev  *device.Device
	tun  *reader
	uapi net.Listener
	log  *slog.Logger
	name string

	mu       sync.Mutex // guards applied, key, closed, resuming and uapi
	applied  map[wgtypes.Key]Peer
	key      wgtypes.Key
	closed   bool
	resuming bool

	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New starts a device listening on cfg.ListenPort and serves its UAPI
// socket. The device reads no packet from the TUN until SetDivert. A device
// that fails to start has closed cfg.TUN (wireguard-go closes its TUN on
// the way out).
func New(cfg Config) (*Device, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "wireguard", "device", cfg.Name)
	r := newReader(cfg.TUN)
	// Verbose messages are formatted only when debug logging is on, as
	// wireguard-go's own level-filtered logger does: a Sprintf for a
	// message that is then dropped costs the packet goroutines for nothing.
	wlog := &device.Logger{Verbosef: device.DiscardLogf, Errorf: func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) }}
	if log.Enabled(context.Background(), slog.LevelDebug) {
		wlog.Verbosef = func(f string, a ...any) { log.Debug(fmt.Sprintf(f, a...)) }
	}
	d := &Device{
		dev:      device.NewDevice(r, newBind(), wlog),
		tun:      r,
		log:      log,
		name:     cfg.Name,
		applied:  make(map[wgtypes.Key]Peer),
		key:      cfg.PrivateKey,
		resuming: cfg.Resuming,
	}
	set := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hexKey(cfg.PrivateKey), cfg.ListenPort)
	if err := d.dev.IpcSet(set); err != nil {
		d.dev.Close()
		return nil, fmt.Errorf("configure wireguard device %s: %w", cfg.Name, err)
	}
	if err := d.dev.Up(); err != nil {
		d.dev.Close()
		return nil, fmt.Errorf("wireguard device %s up (udp port %d): %w", cfg.Name, cfg.ListenPort, err)
	}
	if !cfg.LateUAPI {
		if err := d.StartUAPI(); err != nil {
			d.dev.Close()
			return nil, err
		}
	}
	return d, nil
}

// StartUAPI opens the UAPI socket (`wg show <Name>`) and serves it until
// Close. New calls it unless Config.LateUAPI; later calls do nothing.
func (d *Device) StartUAPI() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.uapi != nil || d.closed {
		return nil
	}
	file, err := ipc.UAPIOpen(d.name)
	if err != nil {
		return fmt.Errorf("open uapi socket for %s: %w", d.name, err)
	}
	uapi, err := ipc.UAPIListen(d.name, file)
	file.Close()
	if err != nil {
		return fmt.Errorf("listen on uapi socket for %s: %w", d.name, err)
	}
	d.uapi = uapi
	d.wg.Add(1)
	go d.serveUAPI(uapi)
	return nil
}

func (d *Device) serveUAPI(l net.Listener) {
	defer d.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go d.dev.IpcHandle(c)
	}
}

// SetListenPort moves the device to UDP port p (a hand-off: the device
// starts on a port of its own, 0, while the previous weftd still holds p).
func (d *Device) SetListenPort(p uint16) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.dev.IpcSet(fmt.Sprintf("listen_port=%d\n", p)); err != nil {
		return fmt.Errorf("wireguard listen port %d: %w", p, err)
	}
	return nil
}

// PeerStats is one peer's counters as the device keeps them.
type PeerStats struct {
	LastHandshake    time.Time // zero: none yet
	RxBytes, TxBytes uint64
	// Endpoint is where the device sends to the peer now: the configured
	// one, or the one it learned from the peer's packets; invalid if none.
	Endpoint netip.AddrPort
}

// Stats returns every configured peer's counters, read through the UAPI
// (the device's own account, what `wg show` prints).
func (d *Device) Stats() (map[wgtypes.Key]PeerStats, error) {
	text, err := d.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wireguard stats: %w", err)
	}
	return parseStats(text), nil
}

// parseStats reads the peer sections of a UAPI get answer; lines it does
// not know, and values that do not parse, are skipped.
func parseStats(text string) map[wgtypes.Key]PeerStats {
	out := map[wgtypes.Key]PeerStats{}
	var (
		cur       wgtypes.Key
		have      bool
		sec, nsec int64
		st        PeerStats
	)
	flush := func() {
		if have {
			if sec != 0 || nsec != 0 {
				st.LastHandshake = time.Unix(sec, nsec)
			}
			out[cur] = st
		}
		st, sec, nsec = PeerStats{}, 0, 0
	}
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			b, err := hex.DecodeString(v)
			have = err == nil && len(b) == wgtypes.KeyLen
			if have {
				cur = wgtypes.Key(b)
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "endpoint":
			st.Endpoint, _ = netip.ParseAddrPort(v)
		case "rx_bytes":
			st.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			st.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	flush()
	return out
}

// PublicKey returns the device's public key.
func (d *Device) PublicKey() wgtypes.Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.key.PublicKey()
}

// SetPrivateKey replaces the device key (rotation). Peers learn the new
// public key by gossip.
func (d *Device) SetPrivateKey(k wgtypes.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.dev.IpcSet("private_key=" + hexKey(k) + "\n"); err != nil {
		return fmt.Errorf("set private key: %w", err)
	}
	d.key = k
	return nil
}

// SetPeers makes the device's peer set equal to peers: peers no longer
// wanted are removed, new or changed ones are (re)configured, unchanged
// ones are left alone so their sessions survive.
func (d *Device) SetPeers(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := make(map[wgtypes.Key]Peer, len(peers))
	for _, p := range peers {
		if p.Standby {
			if old, known := d.applied[p.PublicKey]; known {
				if _, dup := want[p.PublicKey]; !dup {
					want[p.PublicKey] = old
				}
			}
			continue
		}
		want[p.PublicKey] = p
	}
	var b strings.Builder
	for k := range d.applied {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hexKey(k))
		}
	}
	ours := d.key.PublicKey()
	var later, kicked []wgtypes.Key
	var live map[wgtypes.Key]PeerStats // read once, if an endpoint changes
	for k, p := range want {
		old, known := d.applied[k]
		if known && old.Endpoint == p.Endpoint && slices.Equal(old.AllowedIPs, p.AllowedIPs) && old.PersistentKeepalive == p.PersistentKeepalive {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\n", hexKey(k))
		if p.Endpoint.IsValid() && (!known || old.Endpoint != p.Endpoint) {
			if known && d.livesElsewhere(k, p.Endpoint, &live) {
				// The device has a session with the peer at another
				// address (learned from its packets): the wanted one
				// may be a guess that does not work from here. Keep
				// what works; a later SetPeers tries again.
				p.Endpoint = old.Endpoint
				want[k] = p
			} else {
				fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
			}
		}
		b.WriteString("replace_allowed_ips=true\n")
		switch {
		case !known && p.Keepalive:
			if d.resuming || bytes.Compare(ours[:], k[:]) > 0 {
				fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", keepaliveSeconds)
				if !p.PersistentKeepalive {
					kicked = append(kicked, k)
				}
			} else {
				later = append(later, k)
			}
		case !known && p.PersistentKeepalive, known && p.PersistentKeepalive && !old.PersistentKeepalive:
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", keepaliveSeconds)
		case known && !p.PersistentKeepalive && old.PersistentKeepalive:
			b.WriteString("persistent_keepalive_interval=0\n")
		}
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a.Masked())
		}
	}
	d.resuming = false
	if b.Len() == 0 {
		return nil
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("configure wireguard peers: %w", err)
	}
	d.applied = want
	// A keepalive that only had to start a handshake stops after the
	// first one: turning the interval on sent it (the interval must be
	// set apart from turning it off again, or wireguard-go sees no
	// change from off and sends nothing).
	d.stopKeepalives(kicked)
	for _, k := range later {
		time.AfterFunc(keepaliveDelay, func() { d.startKeepalive(k) })
	}
	return nil
}

// livesElsewhere reports whether the device has a session with peer k,
// handshaken within sessionLife, at an endpoint other than ep. *live
// caches the device's stats for one SetPeers call.
func (d *Device) livesElsewhere(k wgtypes.Key, ep netip.AddrPort, live *map[wgtypes.Key]PeerStats) bool {
	if *live == nil {
		st, err := d.Stats()
		if err != nil {
			return false
		}
		*live = st
	}
	s, ok := (*live)[k]
	return ok && s.Endpoint.IsValid() && s.Endpoint != ep && !s.LastHandshake.IsZero() && time.Since(s.LastHandshake) < sessionLife
}

// sessionLife is how long a WireGuard session lives without a new
// handshake (RejectAfterTime, 180 s): a handshake that recent proves the
// endpoint it came from works.
const sessionLife = 180 * time.Second

// stopKeepalives turns the persistent keepalive of peers ks off.
func (d *Device) stopKeepalives(ks []wgtypes.Key) {
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\npersistent_keepalive_interval=0\n", hexKey(k))
	}
	if b.Len() == 0 {
		return
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		d.log.Debug("keepalive not stopped", "err", err)
	}
}

// startKeepalive turns on the keepalive of peer k (see keepaliveSeconds),
// if the device still has it.
func (d *Device) startKeepalive(k wgtypes.Key) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.applied[k]; !ok || d.closed {
		return
	}
	if err := d.dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", hexKey(k), keepaliveSeconds)); err != nil {
		d.log.Debug("keepalive not set", "err", err)
		return
	}
	if !d.applied[k].PersistentKeepalive {
		d.stopKeepalives([]wgtypes.Key{k})
	}
}

// Pause stops the device for a hand-off: its TUN reads park (the router's
// Pause sets the TUN file's read deadline, which this device's reads see
// too: call it first), and its UDP port closes for the next weftd to bind.
// The sessions stay, for Resume.
func (d *Device) Pause() error {
	d.tun.pause()
	deadline := time.Now().Add(time.Second)
	for !d.tun.isParked() {
		if time.Now().After(deadline) {
			return errors.New("wireguard pause: the TUN reader did not park within 1s")
		}
		time.Sleep(100 * time.Microsecond)
	}
	if err := d.dev.BindClose(); err != nil {
		return fmt.Errorf("wireguard pause: %w", err)
	}
	return nil
}

// Resume undoes Pause (after the router's Resume cleared the deadline):
// the port opens again and the reads go on.
func (d *Device) Resume() error {
	err := d.dev.BindUpdate()
	d.tun.resume()
	if err != nil {
		return fmt.Errorf("wireguard resume: %w", err)
	}
	return nil
}

// SetDivert starts the device's reads from the TUN, each batch filtered by
// f first (see Divert). Only the first call counts.
func (d *Device) SetDivert(f Divert) { d.tun.setDivert(f) }

// Close stops the device and removes the UAPI socket. It is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		uapi := d.uapi
		d.mu.Unlock()
		if uapi != nil {
			uapi.Close()
		}
		d.dev.Close() // closes the TUN, which ends the device's reads
		d.wg.Wait()
	})
	return nil
}

// keepaliveSeconds is the persistent keepalive of weft peers (Peer.Keepalive). Besides keeping
// NAT mappings open, turning it on for a new peer makes wireguard-go send
// a keepalive at once, which starts a handshake: a peer that comes back
// after a restart (and was removed meanwhile) has a session within a round
// trip instead of after the 5 s handshake retry of an unanswered
// initiation from its side. Two devices that add each other at the same
// moment must not both initiate (each initiation overwrites the other's
// handshake state, and both wait for the retry): the device with the
// greater public key turns the keepalive on at once, the other
// keepaliveDelay later, by when a handshake the first one started is done
// and the keepalive rides on its session.
const (
	keepaliveSeconds = 25
	keepaliveDelay   = 300 * time.Millisecond
)

func hexKey(k wgtypes.Key) string { return fmt.Sprintf("%x", k[:]) }

// LoadOrCreateKey reads the private key at path, or generates one and
// writes it with mode 0600 if the file does not exist. A key file that
// others can read is refused: it would leak the node's identity.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return NewKeyFile(path)
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read wireguard key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return wgtypes.Key{}, fmt.Errorf("wireguard key %s has mode %o; want 0600", path, fi.Mode().Perm())
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("parse wireguard key %s: %w", path, err)
	}
	return k, nil
}

// NewKeyFile generates a private key and replaces the key file at path with
// it (mode 0600) crash-safely: key rotation stores the key before the
// device uses it, so after a crash the file holds the old key or the new
// one, whole and durable.
func NewKeyFile(path string) (wgtypes.Key, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate wireguard key: %w", err)
	}
	if err := diskfile.Write(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return wgtypes.Key{}, fmt.Errorf("store wireguard key: %w", err)
	}
	return k, nil
}
