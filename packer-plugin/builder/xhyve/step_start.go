package xhyve

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepStart boots the machine (machine.start returns at once), then waits boot_wait. Stopping
// is stepCreate's cleanup (destroy with force) or stepShutdown's job.
type stepStart struct{}

func (s *stepStart) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("provider").(*Provider)
	id := state.Get("machine_id").(string)

	ui.Say(fmt.Sprintf("Starting machine %s...", id))
	if err := p.Call(ctx, "machine.start", map[string]string{"id": id}, nil, nil); err != nil {
		return halt(state, fmt.Errorf("starting machine %s: %w", id, err))
	}
	ui.Message(fmt.Sprintf("The guest's console: %s", filepath.Join(state.Get("machine_path").(string), "console.log")))
	if c.BootWait > 0 {
		ui.Say(fmt.Sprintf("Waiting %s for the guest to boot...", c.BootWait))
		select {
		case <-ctx.Done():
			return multistep.ActionHalt
		case <-time.After(c.BootWait):
		}
	}
	return multistep.ActionContinue
}

func (s *stepStart) Cleanup(multistep.StateBag) {}
