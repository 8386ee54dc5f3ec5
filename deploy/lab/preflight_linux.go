package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/weftnet/weft/deploy/prereq"
)

// Preflight checks what Up needs from the host before anything is made, so
// that a missing piece fails at once with its name rather than halfway
// through building namespaces: root, /dev/net/tun, ip(8) from iproute2,
// and executable weftd and weft-cni in cfg.BinDir (unless every node is
// external). Pings and TCP transfers run in this process and need no
// program.
func Preflight(cfg Config) error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("the lab needs root (network namespaces, TUN devices)"))
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		errs = append(errs, fmt.Errorf("the lab needs /dev/net/tun (modprobe tun): %w", err))
	}
	if err := prereq.Check("ip"); err != nil {
		errs = append(errs, err)
	}
	if cfg.Topology == TopologyNAT {
		// The gateways' NAT rules.
		if err := prereq.Check("nft"); err != nil {
			errs = append(errs, err)
		}
	}
	if len(cfg.External) < cfg.Nodes {
		for _, bin := range []string{"weftd", "weft-cni"} {
			p := filepath.Join(cfg.BinDir, bin)
			if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				errs = append(errs, fmt.Errorf("no executable %s in --bin-dir %s (run `make build`)", bin, cfg.BinDir))
			}
		}
	}
	return errors.Join(errs...)
}
