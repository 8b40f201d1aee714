// Package xhyve is the Packer builder `xhyve`: its steps drive the xhyve-provider daemon over
// JSON-RPC (provider/API.md) to boot a box, provision it over SSH and export it as a new box.
package xhyve

import (
	"context"
	"errors"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/hashicorp/packer-plugin-sdk/multistep/commonsteps"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// BuilderID identifies the artifacts of this builder (post-processors check it).
const BuilderID = "xhyve-rs.xhyve"

type Builder struct {
	config Config
}

func (b *Builder) ConfigSpec() hcldec.ObjectSpec { return b.config.FlatMapstructure().HCL2Spec() }

func (b *Builder) Prepare(raws ...interface{}) ([]string, []string, error) {
	warnings, err := b.config.Prepare(raws...)
	return nil, warnings, err
}

func (b *Builder) Run(ctx context.Context, ui packersdk.Ui, hook packersdk.Hook) (packersdk.Artifact, error) {
	state := new(multistep.BasicStateBag)
	state.Put("config", &b.config)
	state.Put("hook", hook)
	state.Put("ui", ui)
	state.Put("provider", &Provider{Home: b.config.XhyveHome, Command: b.config.ProviderCommand})

	steps := []multistep.Step{
		&commonsteps.StepOutputDir{Force: b.config.PackerForce, Path: b.config.OutputDir},
		&stepImportBox{},
		&stepCreate{},
		&stepStart{},
		&stepConnect{},
		&commonsteps.StepProvision{},
		&stepShutdown{},
		&stepExport{},
	}
	runner := commonsteps.NewRunnerWithPauseFn(steps, b.config.PackerConfig, ui, state)
	runner.Run(ctx, state)

	if err, ok := state.GetOk("error"); ok {
		return nil, err.(error)
	}
	if _, ok := state.GetOk(multistep.StateCancelled); ok {
		return nil, errors.New("build was cancelled")
	}
	if _, ok := state.GetOk(multistep.StateHalted); ok {
		return nil, errors.New("build was halted")
	}
	return state.Get("artifact").(*Artifact), nil
}

// halt records err for Run to return and stops the steps.
func halt(state multistep.StateBag, err error) multistep.StepAction {
	state.Put("error", err)
	state.Get("ui").(packersdk.Ui).Error(err.Error())
	return multistep.ActionHalt
}
