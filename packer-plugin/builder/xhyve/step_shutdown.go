package xhyve

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepShutdown powers the guest off so that its disks are complete: shutdown_command when
// given (waiting up to shutdown_timeout), then machine.stop, which presses the ACPI power button
// and kills xhyve after another shutdown_timeout.
type stepShutdown struct{}

func (s *stepShutdown) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("provider").(*Provider)
	id := state.Get("machine_id").(string)

	if c.ShutdownCommand != "" && c.Comm.Type != "none" {
		ui.Say(fmt.Sprintf("Running the shutdown command: %s", c.ShutdownCommand))
		comm := state.Get("communicator").(packersdk.Communicator)
		// The connection drops as the guest powers off: its end is not waited for.
		if err := comm.Start(ctx, &packersdk.RemoteCmd{Command: c.ShutdownCommand}); err != nil {
			return halt(state, fmt.Errorf("running shutdown_command: %w", err))
		}
		st, err := waitNotRunning(ctx, p, id, c.ShutdownTimeout)
		if err != nil {
			return halt(state, err)
		}
		if st.State != "running" {
			ui.Message(fmt.Sprintf("The guest is off: %s", st.reason()))
			return multistep.ActionContinue
		}
		ui.Error(fmt.Sprintf("The guest still runs %s after shutdown_command", c.ShutdownTimeout))
	}

	ui.Say(fmt.Sprintf("Pressing the power button (forced off after %s)...", c.ShutdownTimeout))
	var st machineState
	params := map[string]any{"id": id, "timeout": c.ShutdownTimeout.Seconds()}
	if err := p.Call(ctx, "machine.stop", params, &st, nil); err != nil {
		return halt(state, fmt.Errorf("stopping machine %s: %w", id, err))
	}
	if st.ExitSignal != nil {
		ui.Error(fmt.Sprintf("The guest did not power off and was killed (%s): what it had not written to its disks is lost", st.reason()))
	} else {
		ui.Message(fmt.Sprintf("The guest is off: %s", st.reason()))
	}
	return multistep.ActionContinue
}

// waitNotRunning polls machine.state until the machine no longer runs or timeout passes.
func waitNotRunning(ctx context.Context, p *Provider, id string, timeout time.Duration) (machineState, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := getState(ctx, p, id)
		if err != nil {
			return st, fmt.Errorf("state of machine %s: %w", id, err)
		}
		if st.State != "running" || time.Now().After(deadline) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(statePoll):
		}
	}
}

func (s *stepShutdown) Cleanup(multistep.StateBag) {}
