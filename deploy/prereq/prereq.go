// Package prereq knows what weft's demo, tests and benchmarks need from the
// host: the programs and files of prereq.tsv, each with the Debian package
// that provides it. install.sh (`make deps`) installs from the same table,
// so a check here and the install there cannot drift apart.
//
// Callers check before they build anything, and an error names every
// missing program together with its package and the command that
// installs it.
package prereq

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
)

//go:embed prereq.tsv
var table string

// Requirement is one row of prereq.tsv: something on the host and the
// package that provides it.
type Requirement struct {
	// Package is the Debian package that provides it.
	Package string
	// Kind says how it is found: "cmd" (a program on the PATH), "file"
	// (a path that must exist) or "dpkg" (an installed package).
	Kind string
	// Name is the program, the path or the package name.
	Name string
	// Tiers are the users that need it: demo, test, bench.
	Tiers []string
}

// Present reports whether the requirement is met on this host.
func (r Requirement) Present() bool {
	switch r.Kind {
	case "cmd":
		_, err := exec.LookPath(r.Name)
		return err == nil
	case "file":
		_, err := os.Stat(r.Name)
		return err == nil
	case "dpkg":
		out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", r.Name).Output()
		return err == nil && strings.Contains(string(out), "install ok installed")
	}
	return false
}

func (r Requirement) String() string {
	return fmt.Sprintf("%s (package %s)", r.Name, r.Package)
}

// Requirements returns every package row of prereq.tsv, in table order.
func Requirements() ([]Requirement, error) {
	var out []Requirement
	for i, line := range strings.Split(table, "\n") {
		f := strings.Split(line, "\t")
		if line == "" || strings.HasPrefix(line, "#") || f[0] != "pkg" {
			continue
		}
		if len(f) != 4 {
			return nil, fmt.Errorf("prereq.tsv line %d: want 4 tab-separated fields, got %d", i+1, len(f))
		}
		kind, name, ok := strings.Cut(f[2], ":")
		if !ok || (kind != "cmd" && kind != "file" && kind != "dpkg") || name == "" {
			return nil, fmt.Errorf("prereq.tsv line %d: bad probe %q", i+1, f[2])
		}
		out = append(out, Requirement{Package: f[1], Kind: kind, Name: name, Tiers: strings.Split(f[3], ",")})
	}
	return out, nil
}

// Lookup returns the requirement for name: a program, a path or a package
// named in prereq.tsv.
func Lookup(name string) (Requirement, error) {
	reqs, err := Requirements()
	if err != nil {
		return Requirement{}, err
	}
	for _, r := range reqs {
		if r.Name == name {
			return r, nil
		}
	}
	return Requirement{}, fmt.Errorf("%s is not in deploy/prereq/prereq.tsv: add it with the package that provides it", name)
}

// ErrMissing is wrapped by the errors of Check for what is not installed.
var ErrMissing = errors.New("missing prerequisites")

// Check returns nil if every name (see Lookup) is present, else an error
// that lists each missing one with its package and the commands that
// install them.
func Check(names ...string) error {
	var missing []Requirement
	var pkgs []string
	for _, n := range names {
		r, err := Lookup(n)
		if err != nil {
			return err
		}
		if r.Present() {
			continue
		}
		missing = append(missing, r)
		if !slices.Contains(pkgs, r.Package) {
			pkgs = append(pkgs, r.Package)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var b strings.Builder
	for _, r := range missing {
		fmt.Fprintf(&b, "\n  %s", r)
	}
	return fmt.Errorf("%w:%s\ninstall with `make deps`, or as root: apt-get install -y --no-install-recommends %s",
		ErrMissing, b.String(), strings.Join(pkgs, " "))
}
