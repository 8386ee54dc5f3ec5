package offload

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// The datapaths' raw system calls must never wait, so they run only on a
// non-blocking descriptor; a file that is no TUN says so.
func TestModeOfNonBlocking(t *testing.T) {
	r, w, err := os.Pipe() // the runtime puts pipes in non-blocking mode
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	rc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if m, err := ModeOf(rc, true); err != nil || !m.NonBlocking || m.TUN || m.VNetHdr || m.USO {
		t.Fatalf("pipe from os.Pipe: %+v, %v", m, err)
	}
	rc.Control(func(fd uintptr) { unix.SetNonblock(int(fd), false) })
	if m, err := ModeOf(rc, false); err != nil || m.NonBlocking {
		t.Fatalf("blocking pipe: %+v, %v", m, err)
	}
}
