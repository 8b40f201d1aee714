package xhyve

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepImportBox installs box_url with box.add and puts machine.create's `box` in the state
// ("box"). A box of that name and version already installed is used as it is, as Vagrant does.
type stepImportBox struct{}

func (s *stepImportBox) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	if c.BoxName == "" {
		return multistep.ActionContinue // kernel source: no box
	}
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("provider").(*Provider)
	ref := map[string]string{"name": c.BoxName}
	if c.BoxVersion != "" {
		ref["version"] = c.BoxVersion
	}
	if c.BoxURL != "" {
		params := map[string]any{"source": c.BoxURL, "name": c.BoxName}
		if c.BoxVersion != "" {
			params["version"] = c.BoxVersion
		}
		if c.BoxChecksum != "" {
			params["checksum"] = c.BoxChecksum
		}
		ui.Say(fmt.Sprintf("Importing box %s from %s...", c.BoxName, c.BoxURL))
		var res struct {
			Name, Version, Architecture, Checksum string
			ChecksumType                          string `json:"checksum_type"`
		}
		err := p.Call(ctx, "box.add", params, &res, progressUI(ui))
		switch {
		case IsRPCError(err, codeAlreadyExists):
			ui.Message(fmt.Sprintf("%v: using the installed box", err))
		case err != nil:
			return halt(state, fmt.Errorf("importing box %s from %s: %w", c.BoxName, c.BoxURL, err))
		default:
			ui.Message(fmt.Sprintf("Imported %s %s (%s), %s %s", res.Name, res.Version, res.Architecture, res.ChecksumType, res.Checksum))
			ref = map[string]string{"name": res.Name, "version": "= " + res.Version, "architecture": res.Architecture}
		}
	}
	state.Put("box", ref)
	return multistep.ActionContinue
}

func (s *stepImportBox) Cleanup(multistep.StateBag) {}

// progressUI shows the daemon's `progress` notifications: each phase's first and last, and one
// every few seconds in between (never the same count twice).
func progressUI(ui packersdk.Ui) func(Notification) {
	var phase string
	var done uint64
	var last time.Time
	return func(n Notification) {
		var p struct {
			Phase string
			Done  uint64
			Total *uint64
		}
		if n.Method != "progress" || json.Unmarshal(n.Params, &p) != nil {
			return
		}
		final := p.Total != nil && p.Done == *p.Total
		if p.Phase == phase && (p.Done == done || !final && time.Since(last) < 5*time.Second) {
			return
		}
		phase, done, last = p.Phase, p.Done, time.Now()
		if p.Total != nil && *p.Total > 0 {
			ui.Message(fmt.Sprintf("%s: %s of %s (%d%%)", p.Phase, mib(p.Done), mib(*p.Total), p.Done*100 / *p.Total))
		} else {
			ui.Message(fmt.Sprintf("%s: %s", p.Phase, mib(p.Done)))
		}
	}
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
