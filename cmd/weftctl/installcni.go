package main

// weftctl install-cni is the DaemonSet's init container: it puts weft-cni
// into the node's CNI bin directory and the conflist into its CNI config
// directory, the two files a container runtime needs to wire pods to weft.
//
// Each file is written under a temporary name in the target directory and
// renamed over the old one (ipam/diskfile: unique dot-name, fsync, rename,
// fsync the directory), so a runtime that execs the plugin or loads the
// config at any moment sees the old file or the new one, never half of
// one. The temporary name starts with a dot and does not end in .conflist,
// so no runtime loads it as a config. A file that already has the wanted
// content is left alone: restarting the DaemonSet does not make the
// runtime reload an unchanged config.
//
// It needs no shell, so weft's image has none.

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"

	"github.com/weftnet/weft/ipam/diskfile"
)

type installCNIConfig struct {
	pluginSrc string // the weft-cni binary to install
	binDir    string // the node's CNI bin directory
	confSrc   string // the conflist to install
	confDir   string // the node's CNI config directory
}

func runInstallCNI(args []string) error {
	fs := flag.NewFlagSet("install-cni", flag.ContinueOnError)
	var c installCNIConfig
	fs.StringVar(&c.pluginSrc, "plugin", "/usr/local/bin/weft-cni", "the weft-cni binary to install")
	fs.StringVar(&c.binDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI bin directory (mounted from the host); weft-cni is installed there under its own name")
	fs.StringVar(&c.confSrc, "conflist", "/etc/weft/config/10-weft.conflist", "the conflist to install (the ConfigMap's 10-weft.conflist); it must load as a CNI conflist")
	fs.StringVar(&c.confDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI config directory (mounted from the host); the conflist keeps its file name there")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: install-cni takes no arguments, got %q", errUsage, fs.Args())
	}
	return installCNI(c, func(format string, a ...any) { fmt.Printf(format+"\n", a...) })
}

// installCNI installs the plugin, then the conflist: in that order, so a
// runtime that picks up the new config finds the plugin it names.
func installCNI(c installCNIConfig, logf func(string, ...any)) error {
	plugin, err := os.ReadFile(c.pluginSrc)
	if err != nil {
		return fmt.Errorf("install-cni --plugin: %w", err)
	}
	conf, err := os.ReadFile(c.confSrc)
	if err != nil {
		return fmt.Errorf("install-cni --conflist: %w", err)
	}
	// A broken config would take the node's pod networking down: refuse
	// it before touching anything.
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return fmt.Errorf("install-cni --conflist %s: %w", c.confSrc, err)
	}
	if len(list.Plugins) == 0 {
		return fmt.Errorf("install-cni --conflist %s: no plugins", c.confSrc)
	}
	for _, f := range []struct {
		dir  string
		name string
		body []byte
		mode os.FileMode
	}{
		{c.binDir, filepath.Base(c.pluginSrc), plugin, 0o755},
		{c.confDir, filepath.Base(c.confSrc), conf, 0o644},
	} {
		dst := filepath.Join(f.dir, f.name)
		changed, err := installFile(dst, f.body, f.mode)
		if err != nil {
			return fmt.Errorf("install-cni: %w", err)
		}
		if changed {
			logf("installed %s (%d bytes)", dst, len(f.body))
		} else {
			logf("%s is up to date", dst)
		}
	}
	return nil
}

// installFile makes path hold body with mode, atomically, and reports
// whether it had to write. The directory must exist (it is a mount of the
// host's).
func installFile(path string, body []byte, mode os.FileMode) (bool, error) {
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, body) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == mode {
			return false, nil
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if err := diskfile.Write(path, body, mode); err != nil {
		return false, err
	}
	return true, nil
}
