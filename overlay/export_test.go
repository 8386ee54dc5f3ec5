package overlay

import "github.com/weftnet/weft/encap/vxlan"

// MalformedFrames is malformedInnerFor for the netns tests (package
// overlay_test): VXLAN frames (VNI 1, inner destination MAC dstMAC) of
// every IPv4 case and the counter each must raise.
func MalformedFrames(src, dst, node, other string, dstMAC [6]byte) (frames [][]byte, counters []string) {
	for _, tc := range malformedInnerFor(src, dst, node, other) {
		if tc.inner[0]>>4 == 6 && tc.counter == "drop_not_local" {
			continue // its source is no pod of the sender's
		}
		f := frameOf(tc.inner)
		copy(f[vxlan.HeaderLen:], dstMAC[:])
		frames = append(frames, f)
		counters = append(counters, tc.counter)
	}
	return frames, counters
}
