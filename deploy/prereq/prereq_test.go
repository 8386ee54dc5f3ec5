package prereq

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestTableParses(t *testing.T) {
	reqs, err := Requirements()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		if seen[r.Name] {
			t.Errorf("%s listed twice", r.Name)
		}
		seen[r.Name] = true
		for _, tier := range r.Tiers {
			if tier != "demo" && tier != "test" && tier != "bench" {
				t.Errorf("%s: unknown tier %q", r.Name, tier)
			}
		}
	}
	// The demo needs iproute2 alone: ping and TCP run from Go.
	var demo []string
	for _, r := range reqs {
		for _, tier := range r.Tiers {
			if tier == "demo" {
				demo = append(demo, r.Name)
			}
		}
	}
	if strings.Join(demo, ",") != "ip" {
		t.Errorf("demo tier = %v, want [ip]", demo)
	}
}

func TestCheckNamesMissingProgramAndPackage(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := Check("ping", "tcpdump")
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("Check with an empty PATH = %v, want ErrMissing", err)
	}
	for _, want := range []string{"ping (package iputils-ping)", "tcpdump (package tcpdump)", "apt-get install -y --no-install-recommends iputils-ping tcpdump"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := Check("no-such-tool"); err == nil || errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "prereq.tsv") {
		t.Errorf("Check(unknown) = %v, want an error naming the table", err)
	}
}

func TestCheckFindsPrograms(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ip"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if err := Check("ip"); err != nil {
		t.Errorf("Check(ip) with ip on the PATH = %v", err)
	}
}

// TestInstallScriptReadsSameTable: install.sh, without apt-get on its PATH
// and with nothing installed, lists the same missing programs as Check and
// the apt-get command, and fails.
func TestInstallScriptReadsSameTable(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	// Only what the script itself runs: no apt-get, no probed program.
	for _, tool := range []string{"dirname", "id", "grep", "tr", "cat"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(sh, "install.sh", "bench")
	cmd.Env = []string{"PATH=" + bin}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("install.sh bench with nothing installed succeeded:\n%s", out)
	}
	t.Setenv("PATH", bin)
	reqs, _ := Requirements()
	for _, r := range reqs {
		bench := false
		for _, tier := range r.Tiers {
			bench = bench || tier == "bench"
		}
		if bench && r.Kind == "cmd" && !strings.Contains(string(out), r.String()) {
			t.Errorf("install.sh output does not list %s:\n%s", r, out)
		}
	}
	if !strings.Contains(string(out), "apt-get install -y --no-install-recommends") {
		t.Errorf("install.sh does not print the install command:\n%s", out)
	}
}
