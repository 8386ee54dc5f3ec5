//go:build !linux

package wireguard

import "golang.zx2c4.com/wireguard/tun"

// attachTUN: no raw paths off Linux; reads and writes go through the
// TUN's own Read and Write, one frame per Read.
func attachTUN(*reader, tun.Device) {}

// tunWriter: none off Linux; every write goes through the TUN's Write.
type tunWriter struct{ vnet bool }

func (*tunWriter) writeOne([]byte, int) (int, error) { return 0, errShortHeadroom }

func (*tunWriter) writeBatch([][]byte, int) (int, error) { return 0, errShortHeadroom }

// rawReader: none off Linux; reads go through the TUN's Read.
type rawReader struct{}

func (*rawReader) readFrame([][]byte, []int, int, bool) (int, error) { return 0, errShortHeadroom }
