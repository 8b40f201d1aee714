//go:generate go tool packer-sdc mapstructure-to-hcl2 -type Config

package xhyve

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/common"
	"github.com/hashicorp/packer-plugin-sdk/communicator"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/shutdowncommand"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"
)

// Config of the xhyve builder; README.md is its reference.
type Config struct {
	common.PackerConfig            `mapstructure:",squash"`
	Comm                           communicator.Config `mapstructure:",squash"`
	shutdowncommand.ShutdownConfig `mapstructure:",squash"`

	// The source is a box (installed, or imported from box_url)...
	BoxURL      string `mapstructure:"box_url"`
	BoxName     string `mapstructure:"box_name"`
	BoxVersion  string `mapstructure:"box_version"`
	BoxChecksum string `mapstructure:"box_checksum"`
	// ...or a kernel with an optional initrd and disk image (copied, never changed).
	Kernel    string `mapstructure:"kernel"`
	Initrd    string `mapstructure:"initrd"`
	DiskImage string `mapstructure:"disk_image"`

	CPUs               int      `mapstructure:"cpus"`
	Memory             string   `mapstructure:"memory"`
	DiskSize           string   `mapstructure:"disk_size"`
	DiskAdditionalSize []string `mapstructure:"disk_additional_size"`
	Cmdline            string   `mapstructure:"cmdline"`
	// How the machine boots: "kexec" (the kernel and initrd directly) or "efi" (UEFI firmware
	// from the first disk); empty leaves it to the box's metadata.json.
	Firmware    string        `mapstructure:"firmware"`
	BootWait    time.Duration `mapstructure:"boot_wait"`
	NetworkMode string        `mapstructure:"network_mode"`
	// Named networks (network.create) the machine joins with one more NIC each, by name: a
	// static address, or "" for one from the network's DHCP.
	Networks map[string]string `mapstructure:"networks"`

	OutputDir        string `mapstructure:"output_directory"`
	VMName           string `mapstructure:"vm_name"`
	OutputBoxVersion string `mapstructure:"output_box_version"`

	XhyveHome       string `mapstructure:"xhyve_home"`
	ProviderCommand string `mapstructure:"provider_command"`

	ctx interpolate.Context
}

var (
	sizeRe     = regexp.MustCompile(`^\s*([0-9]+)\s*([KkMmGgTt]?)\s*$`)
	checksumRe = map[string]int{"md5": 32, "sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128}
	hexRe      = regexp.MustCompile(`^[0-9a-fA-F]+$`)
)

// parseSize reads a size as the provider does: a number with an optional K, M, G or T suffix;
// a bare number counts in units of bare.
func parseSize(s string, bare uint64) (uint64, bool) {
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		return 0, false
	}
	mult := map[string]uint64{"": bare, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[strings.ToLower(m[2])]
	if n > (1<<64-1)/mult {
		return 0, false
	}
	return n * mult, true
}

func (c *Config) Prepare(raws ...interface{}) ([]string, error) {
	err := config.Decode(c, &config.DecodeOpts{
		PluginType:         BuilderID,
		Interpolate:        true,
		InterpolateContext: &c.ctx,
	}, raws...)
	if err != nil {
		return nil, err
	}
	var errs *packersdk.MultiError
	add := func(format string, a ...any) { errs = packersdk.MultiErrorAppend(errs, fmt.Errorf(format, a...)) }

	if c.VMName == "" {
		c.VMName = "packer-" + c.PackerBuildName
	}
	if c.OutputDir == "" {
		c.OutputDir = "output-" + c.PackerBuildName
	}
	if c.OutputBoxVersion == "" {
		c.OutputBoxVersion = "0"
	}
	if c.NetworkMode == "" {
		c.NetworkMode = "user"
	}
	if c.ProviderCommand == "" {
		c.ProviderCommand = "xhyve-provider"
	}
	if c.XhyveHome == "" {
		c.XhyveHome = os.Getenv("XHYVE_HOME")
	}
	if c.XhyveHome == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			add("xhyve_home: not set and no home directory to default to: %v", err)
		}
		c.XhyveHome = filepath.Join(home, ".xhyve")
	}
	if abs, err := filepath.Abs(c.XhyveHome); err == nil {
		c.XhyveHome = abs
	}
	// The boxes' user; the key is Vagrant's insecure one, which the provider hands out
	// (machine.ssh_info) unless a key or password is given.
	if c.Comm.SSHUsername == "" {
		c.Comm.SSHUsername = "vagrant"
	}

	c.prepareSource(add)

	if c.CPUs < 0 || c.CPUs > 255 {
		add("cpus: %d: from 1 to 255", c.CPUs)
	}
	if c.Memory != "" {
		if n, ok := parseSize(c.Memory, 1<<20); !ok || n%(1<<20) != 0 || n < 16<<20 {
			add("memory: %q is not a size of at least 16M in whole MiB (e.g. \"512M\", \"2G\", or 512 for MiB)", c.Memory)
		}
	}
	checkDisk := func(field, s string) {
		if n, ok := parseSize(s, 1); !ok || n == 0 || n%512 != 0 {
			add("%s: %q is not a disk size (e.g. \"10G\"; bytes when bare, a multiple of 512)", field, s)
		}
	}
	if c.DiskSize != "" {
		checkDisk("disk_size", c.DiskSize)
	}
	for i, s := range c.DiskAdditionalSize {
		checkDisk(fmt.Sprintf("disk_additional_size[%d]", i), s)
	}
	if strings.ContainsAny(c.Cmdline, "\n\x00") {
		add("cmdline: has a newline or NUL")
	}
	switch c.Firmware {
	case "", "kexec", "efi":
	default:
		add("firmware: %q is not one of kexec (the kernel and initrd), efi (UEFI firmware booting the disk)", c.Firmware)
	}
	if c.BootWait < 0 {
		add("boot_wait: %s is negative", c.BootWait)
	}
	switch c.NetworkMode {
	case "user":
	case "none", "shared":
		// Only mode user forwards the guest's SSH port today (provider/API.md).
		if c.Comm.Type != "none" {
			add("network_mode %q gives the guest no forwarded SSH port: use network_mode \"user\", or communicator \"none\"", c.NetworkMode)
		}
	default:
		add("network_mode: %q is not one of user, none, shared", c.NetworkMode)
	}
	for name, ip := range c.Networks {
		if name == "" {
			add("networks: a network without a name")
		}
		if ip != "" && net.ParseIP(ip).To4() == nil {
			add("networks: %q: %q is not an IPv4 address (give \"\" for DHCP)", name, ip)
		}
	}
	if len(c.Networks) > 0 && c.NetworkMode != "user" && c.NetworkMode != "shared" {
		add("networks: the management NIC (network_mode %q) must be user or shared", c.NetworkMode)
	}
	if strings.ContainsAny(c.VMName, "/\x00") || strings.HasPrefix(c.VMName, ".") {
		add("vm_name: %q names the output files: no slash, no leading dot", c.VMName)
	}
	if _, err := os.Stat(c.OutputDir); err == nil && !c.PackerForce {
		add("output_directory %q already exists: remove it, or build with -force", c.OutputDir)
	}

	if es := c.Comm.Prepare(&c.ctx); len(es) > 0 {
		errs = packersdk.MultiErrorAppend(errs, es...)
	}
	if es := c.ShutdownConfig.Prepare(&c.ctx); len(es) > 0 {
		errs = packersdk.MultiErrorAppend(errs, es...)
	}
	if errs != nil && len(errs.Errors) > 0 {
		return nil, errs
	}
	return nil, nil
}

func (c *Config) prepareSource(add func(string, ...any)) {
	fromBox := c.BoxName != "" || c.BoxURL != ""
	fromKernel := c.Kernel != "" || c.Initrd != "" || c.DiskImage != ""
	switch {
	case fromBox && fromKernel:
		add("give one source: box_name (and box_url) or kernel (with initrd and disk_image), not both")
	case !fromBox && !fromKernel:
		add("no source: set box_name (an installed box, or with box_url one to import) or kernel (with initrd and disk_image)")
	case fromBox:
		if c.BoxName == "" {
			add("box_url needs box_name: the name the box is installed under (for a catalog, it overrides the catalog's name)")
		}
		if c.BoxURL != "" {
			c.BoxURL = c.prepareURL(c.BoxURL, add)
		}
		if c.BoxChecksum != "" {
			if c.BoxURL == "" {
				add("box_checksum checks what box_url downloads: set box_url too")
			}
			kind, sum, ok := strings.Cut(c.BoxChecksum, ":")
			if want, known := checksumRe[strings.ToLower(kind)]; !ok || !known || len(sum) != want || !hexRe.MatchString(sum) {
				add("box_checksum: %q is not TYPE:HEX with TYPE md5, sha1, sha256, sha384 or sha512 (e.g. \"sha256:9f86...\")", c.BoxChecksum)
			}
		}
	default:
		switch {
		case c.Kernel == "" && c.Firmware == "efi":
			// The firmware boots the disk image's EFI system partition: no kernel of its own.
			if c.DiskImage == "" || c.Initrd != "" {
				add("firmware efi boots disk_image, without kernel or initrd: set disk_image alone")
			}
		case c.Kernel == "":
			add("initrd and disk_image need kernel: the kernel the machine boots (or firmware \"efi\" to boot disk_image)")
		}
		for _, f := range []struct {
			name string
			path *string
		}{{"kernel", &c.Kernel}, {"initrd", &c.Initrd}, {"disk_image", &c.DiskImage}} {
			if *f.path == "" {
				continue
			}
			abs, err := filepath.Abs(*f.path)
			if err == nil {
				_, err = os.Stat(abs)
			}
			if err != nil {
				add("%s: %v", f.name, err)
			}
			*f.path = abs
		}
	}
}

// prepareURL returns box_url as the daemon takes it: an absolute path (it does not share our
// working directory) or an http(s) or file URL.
func (c *Config) prepareURL(s string, add func(string, ...any)) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && len(u.Scheme) > 1 {
		switch u.Scheme {
		case "http", "https", "file":
			return s
		}
		add("box_url: %q: the scheme %q is not http, https or file", s, u.Scheme)
		return s
	}
	abs, err := filepath.Abs(s)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil {
		add("box_url: %v", err)
	}
	return abs
}
