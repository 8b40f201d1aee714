package xhyve

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// prepare runs Config.Prepare on raw as a template would give it, from a scratch directory.
func prepare(t *testing.T, raw map[string]interface{}) (*Config, error) {
	t.Helper()
	t.Chdir(t.TempDir())
	t.Setenv("XHYVE_HOME", "")
	t.Setenv("HOME", "/home/someone")
	raw["packer_build_name"] = "tiny"
	var c Config
	_, err := c.Prepare(raw)
	return &c, err
}

func TestConfigDefaults(t *testing.T) {
	c, err := prepare(t, map[string]interface{}{"box_name": "xhyve/tiny"})
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][2]string{
		"ssh_username":       {c.Comm.SSHUsername, "vagrant"},
		"vm_name":            {c.VMName, "packer-tiny"},
		"output_directory":   {c.OutputDir, "output-tiny"},
		"network_mode":       {c.NetworkMode, "user"},
		"output_box_version": {c.OutputBoxVersion, "0"},
		"provider_command":   {c.ProviderCommand, "xhyve-provider"},
		"xhyve_home":         {c.XhyveHome, "/home/someone/.xhyve"},
		"firmware":           {c.Firmware, ""}, // the box's
	} {
		if got[0] != got[1] {
			t.Errorf("%s = %q, want %q", name, got[0], got[1])
		}
	}
	if c.ShutdownTimeout != 5*time.Minute {
		t.Errorf("shutdown_timeout = %s", c.ShutdownTimeout)
	}
}

func TestConfigXhyveHomeFromEnvironment(t *testing.T) {
	t.Setenv("XHYVE_HOME", "/srv/xhyve")
	var c Config
	if _, err := c.Prepare(map[string]interface{}{"box_name": "b"}); err != nil {
		t.Fatal(err)
	}
	if c.XhyveHome != "/srv/xhyve" {
		t.Errorf("xhyve_home = %q", c.XhyveHome)
	}
}

func TestConfigPathsBecomeAbsolute(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"tiny.box", "vmlinux", "initrd.img", "disk.img"} {
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	t.Chdir(dir)
	var c Config
	if _, err := c.Prepare(map[string]interface{}{"box_name": "b", "box_url": "tiny.box"}); err != nil {
		t.Fatal(err)
	}
	if c.BoxURL != filepath.Join(dir, "tiny.box") {
		t.Errorf("box_url = %q: the daemon does not share our working directory", c.BoxURL)
	}
	var k Config
	if _, err := k.Prepare(map[string]interface{}{"kernel": "vmlinux", "initrd": "initrd.img", "disk_image": "disk.img"}); err != nil {
		t.Fatal(err)
	}
	if k.Kernel != filepath.Join(dir, "vmlinux") || k.Initrd != filepath.Join(dir, "initrd.img") || k.DiskImage != filepath.Join(dir, "disk.img") {
		t.Errorf("kernel %q initrd %q disk_image %q", k.Kernel, k.Initrd, k.DiskImage)
	}
	// An EFI-bootable disk image alone: the firmware boots it, no kernel is needed.
	var e Config
	if _, err := e.Prepare(map[string]interface{}{"disk_image": "disk.img", "firmware": "efi"}); err != nil || e.DiskImage != filepath.Join(dir, "disk.img") {
		t.Errorf("disk_image %q with firmware efi: %v", e.DiskImage, err)
	}
	var u Config
	url := "https://example.com/acme/tiny.json"
	if _, err := u.Prepare(map[string]interface{}{"box_name": "b", "box_url": url}); err != nil || u.BoxURL != url {
		t.Errorf("box_url %q: %v", u.BoxURL, err)
	}
}

func TestConfigAccepts(t *testing.T) {
	for name, raw := range map[string]map[string]interface{}{
		"sizes":          {"box_name": "b", "memory": "512M", "disk_size": "10G", "disk_additional_size": []string{"64M", "1048576"}, "cpus": 2},
		"memory in MiB":  {"box_name": "b", "memory": "2048"},
		"checksum":       {"box_name": "b", "box_url": "http://h/b.box", "box_checksum": "sha256:" + strings.Repeat("aB", 32)},
		"no network":     {"box_name": "b", "network_mode": "none", "communicator": "none"},
		"durations":      {"box_name": "b", "boot_wait": "10s", "shutdown_timeout": "30s", "ssh_timeout": "20m"},
		"JSON numbers":   {"box_name": "b", "memory": 512, "cpus": "2"},
		"networks":       {"box_name": "b", "networks": map[string]string{"lab": "192.168.56.20", "dhcp-net": ""}},
		"firmware efi":   {"box_name": "b", "firmware": "efi"},
		"firmware kexec": {"box_name": "b", "firmware": "kexec"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := prepare(t, raw); err != nil {
				t.Errorf("%v", err)
			}
		})
	}
}

func TestConfigRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		raw  map[string]interface{}
		want string
	}{
		"no source":           {map[string]interface{}{}, "no source: set box_name"},
		"two sources":         {map[string]interface{}{"box_name": "b", "kernel": "/vmlinux"}, "give one source"},
		"url without name":    {map[string]interface{}{"box_url": "http://h/b.box"}, "box_url needs box_name"},
		"missing box file":    {map[string]interface{}{"box_name": "b", "box_url": "nope.box"}, "box_url: stat "},
		"bad scheme":          {map[string]interface{}{"box_name": "b", "box_url": "ftp://h/b.box"}, `the scheme "ftp" is not http, https or file`},
		"checksum form":       {map[string]interface{}{"box_name": "b", "box_url": "http://h/b.box", "box_checksum": "abc"}, "box_checksum: \"abc\" is not TYPE:HEX"},
		"checksum type":       {map[string]interface{}{"box_name": "b", "box_url": "http://h/b.box", "box_checksum": "crc32:abcd1234"}, "is not TYPE:HEX"},
		"checksum length":     {map[string]interface{}{"box_name": "b", "box_url": "http://h/b.box", "box_checksum": "md5:abcd"}, "is not TYPE:HEX"},
		"checksum, no url":    {map[string]interface{}{"box_name": "b", "box_checksum": "md5:" + strings.Repeat("0", 32)}, "set box_url too"},
		"initrd alone":        {map[string]interface{}{"initrd": "/initrd.img"}, "initrd and disk_image need kernel"},
		"missing kernel":      {map[string]interface{}{"kernel": "/no/vmlinux"}, "kernel: stat /no/vmlinux"},
		"memory unit":         {map[string]interface{}{"box_name": "b", "memory": "512X"}, `memory: "512X" is not a size`},
		"memory too small":    {map[string]interface{}{"box_name": "b", "memory": "8M"}, "at least 16M"},
		"memory not MiB":      {map[string]interface{}{"box_name": "b", "memory": "1500K"}, "whole MiB"},
		"disk size":           {map[string]interface{}{"box_name": "b", "disk_size": "ten"}, `disk_size: "ten" is not a disk size`},
		"disk not sectors":    {map[string]interface{}{"box_name": "b", "disk_size": "1000"}, "multiple of 512"},
		"additional disk":     {map[string]interface{}{"box_name": "b", "disk_additional_size": []string{"1G", "0"}}, "disk_additional_size[1]"},
		"cpus":                {map[string]interface{}{"box_name": "b", "cpus": 300}, "cpus: 300: from 1 to 255"},
		"network mode":        {map[string]interface{}{"box_name": "b", "network_mode": "bridged"}, `network_mode: "bridged" is not one of user, none, shared`},
		"no network, ssh":     {map[string]interface{}{"box_name": "b", "network_mode": "none"}, "no forwarded SSH port"},
		"vm_name":             {map[string]interface{}{"box_name": "b", "vm_name": "a/b"}, "vm_name"},
		"network address":     {map[string]interface{}{"box_name": "b", "networks": map[string]string{"lab": "192.168.56"}}, `networks: "lab": "192.168.56" is not an IPv4 address`},
		"networks, no NIC":    {map[string]interface{}{"box_name": "b", "network_mode": "none", "communicator": "none", "networks": map[string]string{"lab": ""}}, "must be user or shared"},
		"cmdline":             {map[string]interface{}{"box_name": "b", "cmdline": "a\nb"}, "cmdline: has a newline"},
		"firmware":            {map[string]interface{}{"box_name": "b", "firmware": "bios"}, `firmware: "bios" is not one of kexec (the kernel and initrd), efi (UEFI firmware booting the disk)`},
		"firmware case":       {map[string]interface{}{"box_name": "b", "firmware": "EFI"}, `firmware: "EFI" is not one of kexec`},
		"efi with initrd":     {map[string]interface{}{"firmware": "efi", "initrd": "/initrd.img"}, "firmware efi boots disk_image, without kernel or initrd"},
		"negative boot_wait":  {map[string]interface{}{"box_name": "b", "boot_wait": "-1s"}, "boot_wait"},
		"unknown field":       {map[string]interface{}{"box_name": "b", "boxname": "x"}, "boxname"},
		"bad ssh file method": {map[string]interface{}{"box_name": "b", "ssh_file_transfer_method": "rsync"}, "ssh_file_transfer_method"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := prepare(t, tc.raw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

// Several mistakes are all reported at once.
func TestConfigReportsEveryError(t *testing.T) {
	_, err := prepare(t, map[string]interface{}{"box_name": "b", "memory": "x", "cpus": -1, "network_mode": "y"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"memory", "cpus", "network_mode"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing from: %v", want, err)
		}
	}
}

func TestConfigOutputDirectoryExists(t *testing.T) {
	dir := t.TempDir()
	_, err := prepare(t, map[string]interface{}{"box_name": "b", "output_directory": dir})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("error %v", err)
	}
	if _, err := prepare(t, map[string]interface{}{"box_name": "b", "output_directory": dir, "packer_force": true}); err != nil {
		t.Errorf("with -force: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"512": 512 << 20, "512M": 512 << 20, "2g": 2 << 30, " 1 T ": 1 << 40, "64k": 64 << 10} {
		if got, ok := parseSize(in, 1<<20); !ok || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "M", "1.5G", "-1", "99999999999999999999", "16777216T"} {
		if got, ok := parseSize(in, 1); ok {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}
