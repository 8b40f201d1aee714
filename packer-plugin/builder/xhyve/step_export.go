package xhyve

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepExport has the daemon pack the stopped machine as a .box (machine.package: metadata.json,
// kernel, initrd and the machine's disks as they are now, written to a temporary file and
// renamed) and writes a Vagrant catalog beside it with the box's sha256. On an error or a
// cancel, StepOutputDir removes the output directory: no half box is left.
type stepExport struct{}

// packaged is machine.package's result.
type packaged struct {
	Path         string `json:"path"`
	Size         int64  `json:"size"`
	ChecksumType string `json:"checksum_type"`
	Checksum     string `json:"checksum"`
}

func (s *stepExport) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("provider").(*Provider)
	id := state.Get("machine_id").(string)

	boxPath, err := filepath.Abs(filepath.Join(c.OutputDir, c.VMName+".box"))
	if err != nil {
		return halt(state, err)
	}
	ui.Say(fmt.Sprintf("Exporting machine %s as %s...", id, boxPath))
	var res packaged
	err = p.Call(ctx, "machine.package", map[string]string{"id": id, "output": boxPath}, &res, progressUI(ui))
	if err != nil {
		return halt(state, fmt.Errorf("exporting machine %s: %w", id, err))
	}
	ui.Message(fmt.Sprintf("%s: %s, %s %s", res.Path, mib(uint64(res.Size)), res.ChecksumType, res.Checksum))

	catalogPath := filepath.Join(filepath.Dir(boxPath), c.VMName+".json")
	if err := writeCatalog(catalogPath, c, res); err != nil {
		return halt(state, fmt.Errorf("writing the catalog %s: %w", catalogPath, err))
	}
	state.Put("artifact", &Artifact{
		name:     c.VMName,
		files:    []string{res.Path, catalogPath},
		checksum: res.ChecksumType + ":" + res.Checksum,
	})
	return multistep.ActionContinue
}

func (s *stepExport) Cleanup(multistep.StateBag) {}

// writeCatalog writes Vagrant's box metadata for the new box: box.add installs it from there
// (the url is relative to the catalog) and checks the checksum.
func writeCatalog(path string, c *Config, box packaged) error {
	provider := map[string]string{
		"name":          "xhyve",
		"url":           filepath.Base(box.Path),
		"checksum_type": box.ChecksumType,
		"checksum":      box.Checksum,
	}
	catalog := map[string]any{
		"name": c.VMName,
		"versions": []any{map[string]any{
			"version":   c.OutputBoxVersion,
			"providers": []any{provider},
		}},
	}
	data, err := json.MarshalIndent(catalog, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
