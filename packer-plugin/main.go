// packer-plugin-xhyve: the Packer builder `xhyve`, a thin client of the xhyve-provider daemon.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/plugin"
	"github.com/hashicorp/packer-plugin-sdk/version"

	"xhyve-rs/packer-plugin-xhyve/builder/xhyve"
)

// Version is the plugin's version; VersionPrerelease is cleared for a release.
var (
	Version           = "0.1.0"
	VersionPrerelease = "dev"
)

func main() {
	pps := plugin.NewSet()
	pps.RegisterBuilder(plugin.DEFAULT_NAME, new(xhyve.Builder))
	pps.SetVersion(version.InitializePluginVersion(Version, VersionPrerelease))
	if err := pps.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
