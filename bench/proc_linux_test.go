package bench

import (
	"os"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and parentheses; utime 150, stime 50.
	line := []byte("4242 (iperf3 (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 1 0 100 1000 200 18446744073709551615\n")
	got, err := parseProcStat(line)
	if err != nil || got != 2.0 {
		t.Fatalf("parseProcStat = %v, %v; want 2 s", got, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 5 0"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) accepted", bad)
		}
	}
	// Our own entry parses and only grows.
	a, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3e7; i++ {
		_ = i * i
	}
	if b, err := procCPU(os.Getpid()); err != nil || b < a {
		t.Fatalf("own cpu went %v → %v (%v)", a, b, err)
	}
}

func TestParseMachineCPU(t *testing.T) {
	m, err := parseMachineCPU([]byte("cpu  78698 10 49578 977767 908 5 1304 7 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.user != 786.98 || m.system != 495.78 || m.softirq != 13.04 {
		t.Errorf("%+v", m)
	}
	if want := (78698 + 10 + 49578 + 5 + 1304 + 7) / 100.0; m.busy() != want {
		t.Errorf("busy %v, want %v", m.busy(), want)
	}
	if _, err := parseMachineCPU([]byte("intr 1 2 3\n")); err == nil {
		t.Error("bad /proc/stat accepted")
	}
	if _, err := readMachineCPU(); err != nil {
		t.Fatal(err)
	}
}
