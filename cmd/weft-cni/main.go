// Command weft-cni is weft's CNI plugin. The container runtime executes it
// with the CNI environment and the network config on stdin; see package cni.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/cmd/internal/buildinfo"
	"github.com/weftnet/weft/cni"
)

func init() {
	// Namespace switches (setns) act on one OS thread; keep main on the
	// thread it started on, so the plugin's own netns never changes under
	// it. ns.Do locks the thread it switches in addition.
	runtime.LockOSThread()
}

func main() {
	if buildinfo.Requested(os.Args[1:]) {
		fmt.Println(buildinfo.String("weft-cni"))
		return
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cni.Add,
		Del:    cni.Del,
		Check:  cni.Check,
		GC:     cni.GC,
		Status: cni.Status,
	}, version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), buildinfo.String("weft-cni"))
}
