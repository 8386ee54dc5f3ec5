package overlay

import (
	"github.com/weftnet/weft/encap/offload"
	"github.com/weftnet/weft/encap/vxlan"
)

// Outbound super-packets: a TCP or UDP GSO packet read from the TUN,
// parsed and cut into segments by encap/offload without copying its
// payload. outbound_linux.go sends the segments gathered, each segment's
// headers written by offload.Super.Segment behind room for its VXLAN frame
// header; offload.Super.Split makes whole packets for the per-packet path.

// segHdrLen is the most header bytes one gathered segment needs: frame
// header, IP and L4 headers.
const segHdrLen = vxlan.FrameHeaderLen + offload.MaxHdrLen
