//go:build !linux

package wireguard

import "golang.zx2c4.com/wireguard/tun"

// readyFunc: no readiness poll off Linux; one frame per Read.
func readyFunc(tun.Device) func() bool { return nil }

// loneWriter: none off Linux; every write goes through the TUN's Write.
type loneWriter struct{}

func loneWriterFor(tun.Device) *loneWriter { return nil }

func (*loneWriter) writeOne([]byte, int) (int, error) { return 0, errShortHeadroom }

// rawReader: none off Linux; reads go through the TUN's Read.
type rawReader struct{}

func rawReaderFor(tun.Device) *rawReader { return nil }

func (*rawReader) readFrame([][]byte, []int, int, bool) (int, error) { return 0, errShortHeadroom }
