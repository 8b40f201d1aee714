package xhyve

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepCreate makes the machine (machine.create) and, in Cleanup, always destroys it with
// force: no machine outlives the build, whether it succeeded, failed or was interrupted.
type stepCreate struct {
	uuid string
	id   string
}

func (s *stepCreate) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("provider").(*Provider)

	// Our own UUID finds the machine again should the build be interrupted before the
	// daemon answers (it finishes the creation anyway).
	s.uuid = newUUID()
	params := map[string]any{"name": c.VMName, "uuid": s.uuid}
	if len(c.Networks) == 0 {
		params["network"] = c.NetworkMode
	} else {
		params["nics"] = nics(c.NetworkMode, c.Networks)
	}
	var disks []map[string]string
	if box, ok := state.GetOk("box"); ok {
		params["box"] = box
	} else {
		if c.Kernel != "" {
			params["kernel"] = c.Kernel
		}
		if c.Initrd != "" {
			params["initrd"] = c.Initrd
		}
		if c.DiskImage != "" {
			disks = append(disks, map[string]string{"copy": c.DiskImage})
		}
	}
	for _, size := range c.DiskAdditionalSize {
		disks = append(disks, map[string]string{"size": size})
	}
	if len(disks) > 0 {
		params["disks"] = disks
	}
	if c.CPUs > 0 {
		params["cpus"] = c.CPUs
	}
	for k, v := range map[string]string{"memory": c.Memory, "cmdline": c.Cmdline, "disk_size": c.DiskSize, "firmware": c.Firmware} {
		if v != "" {
			params[k] = v
		}
	}

	ui.Say(fmt.Sprintf("Creating machine %s...", c.VMName))
	var res struct{ ID, Path string }
	if err := p.Call(ctx, "machine.create", params, &res, nil); err != nil {
		return halt(state, fmt.Errorf("creating machine %s: %w", c.VMName, err))
	}
	s.id = res.ID
	state.Put("machine_id", res.ID)
	state.Put("machine_path", res.Path)
	ui.Message(fmt.Sprintf("Machine %s in %s", res.ID, res.Path))
	return multistep.ActionContinue
}

func (s *stepCreate) Cleanup(state multistep.StateBag) {
	if s.uuid == "" {
		return
	}
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("provider").(*Provider)
	// Runs after a cancel too: a context of its own.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	id := s.id
	if id == "" {
		var machines []struct{ ID, UUID string }
		if err := p.Call(ctx, "machine.list", nil, &machines, nil); err != nil {
			ui.Error(fmt.Sprintf("Cannot list machines to find the one of uuid %s: %v", s.uuid, err))
			return
		}
		for _, m := range machines {
			if m.UUID == s.uuid {
				id = m.ID
			}
		}
		if id == "" {
			return // never created
		}
	}
	if _, failed := state.GetOk(multistep.StateHalted); failed {
		showConsole(ui, state)
	}
	ui.Say(fmt.Sprintf("Destroying machine %s...", id))
	err := p.Call(ctx, "machine.destroy", map[string]any{"id": id, "force": true}, nil, nil)
	if err != nil && !IsRPCError(err, codeNotFound) {
		ui.Error(fmt.Sprintf("Destroying machine %s: %v (remove it with: xhyve-provider call machine.destroy '{\"id\": \"%s\", \"force\": true}')", id, err, id))
	}
}

// newUUID is a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// consoleLines is how much of a failed build's guest console is shown.
const consoleLines = 30

// showConsole prints the end of the guest's console: the machine (and its console.log) goes
// with the build, and it is what tells why a guest never answered.
func showConsole(ui packersdk.Ui, state multistep.StateBag) {
	dir, ok := state.GetOk("machine_path")
	if !ok {
		return
	}
	b, err := os.ReadFile(filepath.Join(dir.(string), "console.log"))
	if err != nil || len(b) == 0 {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > consoleLines {
		lines = lines[len(lines)-consoleLines:]
	}
	ui.Message(fmt.Sprintf("The guest's console, last %d lines:\n%s", len(lines), strings.Join(lines, "\n")))
}

// nics is machine.create's NIC list: the management NIC, then one per named network in name
// order (guest eth1, eth2, ... stay the same from build to build).
func nics(mode string, networks map[string]string) []any {
	names := make([]string, 0, len(networks))
	for n := range networks {
		names = append(names, n)
	}
	sort.Strings(names)
	out := []any{mode}
	for _, n := range names {
		nic := map[string]string{"network": n}
		if ip := networks[n]; ip != "" {
			nic["ip"] = ip
		}
		out = append(out, nic)
	}
	return out
}
