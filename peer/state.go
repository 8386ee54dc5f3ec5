package peer

// State is a peer's state as weftd reports it (the control API's "state"
// field, weftctl status). The strings are part of that JSON API: never
// rename one.
//
// Membership produces the first three; weftd's status view overlays the
// others, which say why a peer gossip knows is not routed, or that a peer
// is not gossiped at all. memberlist reports no event for suspicion, so
// there is no "suspect": a suspected peer stays StateAlive until
// memberlist declares it dead.
type State string

const (
	// StateAlive: gossip hears from the peer.
	StateAlive State = "alive"
	// StateDead: memberlist declared the peer failed; its routes are
	// withdrawn, and Membership keeps contacting it (reconnectLoop).
	StateDead State = "dead"
	// StateLeft: the peer announced its leave before going.
	StateLeft State = "left"
	// StateRefused: alive, but admission (Gate) refused its record.
	StateRefused State = "refused"
	// StateNoNode: alive, but in Kubernetes mode no Node of its name (or
	// with its pod CIDR) exists, so it is not routed.
	StateNoNode State = "no-node"
	// StateStatic: configured with --static-peer; it does not gossip, so
	// weft knows nothing of its health.
	StateStatic State = "static"
)
