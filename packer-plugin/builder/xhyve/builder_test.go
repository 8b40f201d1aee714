package xhyve

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// builderFor prepares a Builder on the fake daemon, importing box_url, with its output under a
// scratch directory.
func builderFor(t *testing.T, f *fakeProvider) (*Builder, string) {
	t.Helper()
	dir := t.TempDir()
	box := filepath.Join(dir, "tiny.box")
	os.WriteFile(box, []byte("box"), 0o644)
	out := filepath.Join(dir, "out")
	b := &Builder{}
	_, _, err := b.Prepare(map[string]interface{}{
		"packer_build_name": "tiny", "box_url": box, "box_name": "xhyve/tiny", "xhyve_home": f.home,
		"output_directory": out, "ssh_timeout": "20s", "shutdown_timeout": "30s",
	})
	if err != nil {
		t.Fatal(err)
	}
	return b, out
}

func TestBuilderSpecNamesTheOptions(t *testing.T) {
	spec := (&Builder{}).ConfigSpec()
	for _, k := range []string{"box_url", "box_name", "box_version", "box_checksum", "kernel", "initrd", "disk_image",
		"cpus", "memory", "disk_size", "disk_additional_size", "cmdline", "boot_wait", "network_mode", "ssh_username",
		"shutdown_command", "shutdown_timeout", "output_directory", "vm_name", "output_box_version", "xhyve_home", "provider_command"} {
		if _, ok := spec[k]; !ok {
			t.Errorf("HCL2 spec lacks %s (run go generate ./...)", k)
		}
	}
}

// A whole build: import, create, start, SSH, (no provisioner), power button, export; the
// machine is destroyed at the end.
func TestBuilderRun(t *testing.T) {
	srv := newSSHServer(t)
	f := newFakeProvider(t)
	f.handle("box.add", result(map[string]any{"name": "xhyve/tiny", "version": "0", "architecture": "amd64"}))
	createdMachine(f)
	f.handle("machine.start", result(map[string]any{"id": "m1", "state": "running"}))
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "running"}))
	f.handle("machine.ssh_info", result(srv.info()))
	f.handle("machine.stop", result(map[string]any{"id": "m1", "state": "stopped", "exit_status": 1, "exit_reason": "powered off"}))
	exportTo(f, "the new box")
	b, out := builderFor(t, f)

	ui := &recordUi{}
	a, err := b.Run(context.Background(), ui, &packersdk.MockHook{})
	if err != nil {
		t.Fatalf("%v\n%s", err, ui.text())
	}
	want := []string{filepath.Join(out, "packer-tiny.box"), filepath.Join(out, "packer-tiny.json")}
	if !reflect.DeepEqual(a.Files(), want) {
		t.Errorf("files %v, want %v", a.Files(), want)
	}
	for _, f := range want {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
	var steps []string
	for _, m := range f.methods() {
		if m != "machine.state" && m != "machine.ssh_info" {
			steps = append(steps, m)
		}
	}
	if wantSteps := []string{"box.add", "machine.create", "machine.start", "machine.stop", "machine.package", "machine.destroy"}; !reflect.DeepEqual(steps, wantSteps) {
		t.Errorf("calls %v, want %v", steps, wantSteps)
	}
}

// Ctrl-C while the guest boots: the machine is destroyed and the output directory removed.
func TestBuilderRunCancelled(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("box.add", result(map[string]any{"name": "xhyve/tiny", "version": "0", "architecture": "amd64"}))
	createdMachine(f)
	f.handle("machine.start", result(map[string]any{"id": "m1", "state": "running"}))
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "running"}))
	f.handle("machine.ssh_info", result(nil))
	b, out := builderFor(t, f)

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for len(f.callsOf("machine.ssh_info")) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	ui := &recordUi{}
	_, err := b.Run(ctx, ui, &packersdk.MockHook{})
	if err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Errorf("error %v", err)
	}
	if d := f.callsOf("machine.destroy"); !reflect.DeepEqual(d, []map[string]any{{"id": "m1", "force": true}}) {
		t.Errorf("machine.destroy calls %v", d)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output directory left: %v", err)
	}
}

// A failed export leaves no box and no machine.
func TestBuilderRunExportFails(t *testing.T) {
	srv := newSSHServer(t)
	f := newFakeProvider(t)
	f.handle("box.add", result(map[string]any{"name": "xhyve/tiny", "version": "0", "architecture": "amd64"}))
	createdMachine(f)
	f.handle("machine.start", result(map[string]any{"id": "m1", "state": "running"}))
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "running"}))
	f.handle("machine.ssh_info", result(srv.info()))
	f.handle("machine.stop", result(map[string]any{"id": "m1", "state": "stopped", "exit_status": 1}))
	f.handle("machine.package", rpcError(-32000, "writing box: No space left on device"))
	b, out := builderFor(t, f)

	_, err := b.Run(context.Background(), &recordUi{}, &packersdk.MockHook{})
	if err == nil || !strings.Contains(err.Error(), "No space left on device") {
		t.Errorf("error %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output directory left: %v", err)
	}
	if len(f.callsOf("machine.destroy")) != 1 {
		t.Errorf("calls %v", f.methods())
	}
}
