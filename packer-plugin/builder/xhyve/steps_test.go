package xhyve

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

func TestImportBoxAddsTheBoxWithProgress(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("box.add", func(_ map[string]any, notify func(string, any)) (any, *RPCError) {
		for _, done := range []int{0, 4, 8, 10, 10} {
			notify("progress", map[string]any{"request_id": 1, "phase": "read", "done": done << 20, "total": 10 << 20})
		}
		notify("progress", map[string]any{"request_id": 1, "phase": "install", "done": 3 << 20, "total": nil})
		return map[string]any{"name": "acme/tiny", "version": "1.2.0", "architecture": "amd64", "checksum_type": "sha256", "checksum": "ab12"}, nil
	})
	c := &Config{BoxURL: "/srv/tiny.box", BoxName: "acme/tiny", BoxVersion: "1.2.0", BoxChecksum: "sha256:ab12"}
	state, ui := newState(f, c)
	if a := (&stepImportBox{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	want := map[string]any{"source": "/srv/tiny.box", "name": "acme/tiny", "version": "1.2.0", "checksum": "sha256:ab12"}
	if got := f.callsOf("box.add"); len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Errorf("box.add params %v, want %v", got, want)
	}
	ref := state.Get("box").(map[string]string)
	if !reflect.DeepEqual(ref, map[string]string{"name": "acme/tiny", "version": "= 1.2.0", "architecture": "amd64"}) {
		t.Errorf("box %v: want exactly the imported one", ref)
	}
	// The first and the last of each phase; the ones between within 5 s are dropped.
	for _, line := range []string{"read: 0.0 MiB of 10.0 MiB (0%)", "read: 10.0 MiB of 10.0 MiB (100%)", "install: 3.0 MiB", "Imported acme/tiny 1.2.0 (amd64), sha256 ab12"} {
		if ui.count(line) != 1 {
			t.Errorf("%q not shown once in:\n%s", line, ui.text())
		}
	}
	if ui.count("read: 4.0 MiB") != 0 {
		t.Errorf("progress not throttled:\n%s", ui.text())
	}
}

func TestImportBoxAlreadyInstalledIsUsed(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("box.add", rpcError(codeAlreadyExists, `box "acme/tiny" version 1.0.0 (amd64) is already installed (pass force to replace it)`))
	c := &Config{BoxURL: "/srv/tiny.box", BoxName: "acme/tiny", BoxVersion: "1.0.0"}
	state, ui := newState(f, c)
	if a := (&stepImportBox{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	if ref := state.Get("box").(map[string]string); !reflect.DeepEqual(ref, map[string]string{"name": "acme/tiny", "version": "1.0.0"}) {
		t.Errorf("box %v", ref)
	}
	if ui.count("using the installed box") != 1 {
		t.Errorf("ui:\n%s", ui.text())
	}
}

func TestImportBoxFailureHalts(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("box.add", rpcError(-32004, "checksum mismatch for /srv/tiny.box: expected sha256 00, got 11"))
	state, _ := newState(f, &Config{BoxURL: "/srv/tiny.box", BoxName: "t"})
	if a := (&stepImportBox{}).Run(context.Background(), state); a != multistep.ActionHalt {
		t.Fatal("continued")
	}
	if e := stateError(state); !strings.Contains(e, "importing box t from /srv/tiny.box: checksum mismatch") {
		t.Errorf("error %q", e)
	}
}

func TestImportBoxInstalledOnly(t *testing.T) {
	f := newFakeProvider(t)
	state, _ := newState(f, &Config{BoxName: "acme/tiny", BoxVersion: "~> 1.2"})
	(&stepImportBox{}).Run(context.Background(), state)
	if ref := state.Get("box").(map[string]string); !reflect.DeepEqual(ref, map[string]string{"name": "acme/tiny", "version": "~> 1.2"}) {
		t.Errorf("box %v", ref)
	}
	if m := f.methods(); len(m) != 0 {
		t.Errorf("calls %v: nothing to import", m)
	}
}

func createdMachine(f *fakeProvider) {
	f.handle("machine.create", result(map[string]any{"id": "m1", "name": "packer-tiny", "state": "stopped", "path": "/x/machines/m1"}))
	f.handle("machine.destroy", result(map[string]any{"id": "m1", "state": "not_created"}))
}

func TestCreateFromABoxAndDestroy(t *testing.T) {
	f := newFakeProvider(t)
	createdMachine(f)
	c := &Config{VMName: "packer-tiny", NetworkMode: "user", CPUs: 2, Memory: "512M", Cmdline: "console=ttyS0 quiet",
		Firmware: "efi", DiskSize: "10G", DiskAdditionalSize: []string{"64M"}}
	state, _ := newState(f, c)
	state.Put("box", map[string]string{"name": "acme/tiny"})
	s := &stepCreate{}
	if a := s.Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	got := f.callsOf("machine.create")[0]
	uuid, _ := got["uuid"].(string)
	if len(uuid) != 36 || uuid[14] != '4' {
		t.Errorf("uuid %q is not a version 4 UUID", uuid)
	}
	want := map[string]any{"box": map[string]any{"name": "acme/tiny"}, "name": "packer-tiny", "uuid": uuid, "network": "user",
		"cpus": 2.0, "memory": "512M", "cmdline": "console=ttyS0 quiet", "firmware": "efi", "disk_size": "10G",
		"disks": []any{map[string]any{"size": "64M"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("machine.create params\n%v\nwant\n%v", got, want)
	}
	if state.Get("machine_id") != "m1" || state.Get("machine_path") != "/x/machines/m1" {
		t.Errorf("state id %v path %v", state.Get("machine_id"), state.Get("machine_path"))
	}
	s.Cleanup(state)
	if d := f.callsOf("machine.destroy"); !reflect.DeepEqual(d, []map[string]any{{"id": "m1", "force": true}}) {
		t.Errorf("machine.destroy calls %v", d)
	}
}

// networks: the management NIC first, then one NIC per named network in name order.
func TestCreateOnNamedNetworks(t *testing.T) {
	f := newFakeProvider(t)
	createdMachine(f)
	c := &Config{VMName: "packer-tiny", NetworkMode: "user",
		Networks: map[string]string{"lab": "192.168.56.20", "dhcp-net": ""}}
	state, _ := newState(f, c)
	state.Put("box", map[string]string{"name": "acme/tiny"})
	s := &stepCreate{}
	if a := s.Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	got := f.callsOf("machine.create")[0]
	want := []any{"user", map[string]any{"network": "dhcp-net"}, map[string]any{"network": "lab", "ip": "192.168.56.20"}}
	if !reflect.DeepEqual(got["nics"], want) {
		t.Errorf("nics %v, want %v", got["nics"], want)
	}
	if _, ok := got["network"]; ok {
		t.Errorf("network given beside nics: %v", got)
	}
	s.Cleanup(state)
}

func TestFailedBuildShowsTheConsoleBeforeDestroying(t *testing.T) {
	f := newFakeProvider(t)
	createdMachine(f)
	dir := t.TempDir()
	f.handle("machine.create", result(map[string]any{"id": "m1", "path": dir}))
	var lines []string
	for i := 0; i < 40; i++ {
		lines = append(lines, fmt.Sprintf("line %d", i))
	}
	if err := os.WriteFile(filepath.Join(dir, "console.log"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state, ui := newState(f, &Config{VMName: "v"})
	state.Put("box", map[string]string{"name": "acme/tiny"})
	s := &stepCreate{}
	if a := s.Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	s.Cleanup(state)
	if ui.count("line ") != 0 {
		t.Errorf("a build that went well shows no console:\n%s", ui.text())
	}
	state.Put(multistep.StateHalted, true)
	s.Cleanup(state)
	text := ui.text()
	if !strings.Contains(text, "last 30 lines:\nline 10\n") || !strings.HasSuffix(text, "line 39\nsay: Destroying machine m1...") {
		t.Errorf("console not shown before destroying:\n%s", text)
	}
}

// Unset settings (cpus, memory, firmware, ...) are not sent: the daemon's defaults apply.
func TestCreateFromAKernel(t *testing.T) {
	f := newFakeProvider(t)
	createdMachine(f)
	c := &Config{VMName: "k", NetworkMode: "user", Kernel: "/b/vmlinux", Initrd: "/b/initrd.img", DiskImage: "/b/disk.img", DiskAdditionalSize: []string{"1G"}}
	state, _ := newState(f, c)
	if a := (&stepCreate{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	got := f.callsOf("machine.create")[0]
	delete(got, "uuid")
	want := map[string]any{"name": "k", "network": "user", "kernel": "/b/vmlinux", "initrd": "/b/initrd.img",
		"disks": []any{map[string]any{"copy": "/b/disk.img"}, map[string]any{"size": "1G"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("machine.create params\n%v\nwant\n%v", got, want)
	}
}

// An EFI-bootable disk image alone: machine.create gets the disk and firmware, no kernel.
func TestCreateFromADiskImageThroughFirmware(t *testing.T) {
	f := newFakeProvider(t)
	createdMachine(f)
	c := &Config{VMName: "e", NetworkMode: "user", DiskImage: "/b/disk.img", Firmware: "efi"}
	state, _ := newState(f, c)
	if a := (&stepCreate{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	got := f.callsOf("machine.create")[0]
	delete(got, "uuid")
	want := map[string]any{"name": "e", "network": "user", "firmware": "efi",
		"disks": []any{map[string]any{"copy": "/b/disk.img"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("machine.create params\n%v\nwant\n%v", got, want)
	}
}

// Interrupted before the daemon answered: the machine it went on to create is found by our
// UUID and destroyed.
func TestCreateInterruptedStillDestroys(t *testing.T) {
	f := newFakeProvider(t)
	uuids := make(chan string, 1)
	f.handle("machine.create", func(p map[string]any, _ func(string, any)) (any, *RPCError) {
		uuids <- p["uuid"].(string)
		time.Sleep(300 * time.Millisecond)
		return map[string]any{"id": "late"}, nil
	})
	f.handle("machine.destroy", result(map[string]any{"id": "late", "state": "not_created"}))
	state, _ := newState(f, &Config{VMName: "v", NetworkMode: "user"})
	state.Put("box", map[string]string{"name": "b"})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		u := <-uuids
		f.handle("machine.list", result([]map[string]any{{"id": "other", "uuid": "0000"}, {"id": "late", "uuid": u}}))
		cancel()
	}()
	s := &stepCreate{}
	if a := s.Run(ctx, state); a != multistep.ActionHalt {
		t.Fatal("continued after the cancel")
	}
	s.Cleanup(state)
	if d := f.callsOf("machine.destroy"); !reflect.DeepEqual(d, []map[string]any{{"id": "late", "force": true}}) {
		t.Errorf("machine.destroy calls %v", d)
	}
}

func TestCreateFailureDestroysNothing(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.create", rpcError(codeNotFound, `box "nope" (amd64) is not installed; box.list shows the installed boxes, box.add installs one`))
	f.handle("machine.list", result([]any{}))
	state, _ := newState(f, &Config{VMName: "v", NetworkMode: "user"})
	state.Put("box", map[string]string{"name": "nope"})
	s := &stepCreate{}
	if a := s.Run(context.Background(), state); a != multistep.ActionHalt {
		t.Fatal("continued")
	}
	if e := stateError(state); !strings.Contains(e, `creating machine v: box "nope" (amd64) is not installed`) {
		t.Errorf("error %q", e)
	}
	s.Cleanup(state)
	if m := f.methods(); !reflect.DeepEqual(m, []string{"machine.create", "machine.list"}) {
		t.Errorf("calls %v", m)
	}
}

func TestStartThenBootWait(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.start", result(map[string]any{"id": "m1", "state": "running", "pid": 42}))
	state, ui := newState(f, &Config{BootWait: 200 * time.Millisecond})
	state.Put("machine_id", "m1")
	state.Put("machine_path", "/x/machines/m1")
	t0 := time.Now()
	if a := (&stepStart{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	if d := time.Since(t0); d < 200*time.Millisecond {
		t.Errorf("boot_wait not waited: %s", d)
	}
	if !reflect.DeepEqual(f.callsOf("machine.start"), []map[string]any{{"id": "m1"}}) || ui.count("/x/machines/m1/console.log") != 1 {
		t.Errorf("calls %v ui:\n%s", f.methods(), ui.text())
	}
}

func TestStartFailureHalts(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.start", rpcError(-32010, "no xhyve found: set XHYVE_BIN"))
	state, _ := newState(f, &Config{})
	state.Put("machine_id", "m1")
	if a := (&stepStart{}).Run(context.Background(), state); a != multistep.ActionHalt {
		t.Fatal("continued")
	}
	if e := stateError(state); !strings.Contains(e, "starting machine m1: no xhyve found") {
		t.Errorf("error %q", e)
	}
}

// connectConfig is a prepared config with SSH defaults (user vagrant, no key of its own).
func connectConfig(t *testing.T, raw map[string]interface{}) *Config {
	t.Helper()
	raw["box_name"] = "b"
	raw["ssh_timeout"] = "20s"
	c, err := prepare(t, raw)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConnectWithTheProvidersKey(t *testing.T) {
	srv := newSSHServer(t)
	f := newFakeProvider(t)
	// No address while the guest boots, then the forwarded port.
	var asked atomic.Int32
	f.handle("machine.ssh_info", func(map[string]any, func(string, any)) (any, *RPCError) {
		if asked.Add(1) == 1 {
			return nil, nil
		}
		return srv.info(), nil
	})
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "running"}))
	state, _ := newState(f, connectConfig(t, map[string]interface{}{}))
	state.Put("machine_id", "m1")
	state.Put("machine_path", "/x/m1")
	s := &stepConnect{}
	if a := s.Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	defer s.Cleanup(state)
	if _, ok := state.GetOk("communicator"); !ok || srv.logins.Load() == 0 {
		t.Errorf("no login (communicator in state: %v)", ok)
	}
}

func TestConnectGivesUpWhenTheMachineEnds(t *testing.T) {
	defer func(d time.Duration) { statePoll = d }(statePoll)
	statePoll = 50 * time.Millisecond
	f := newFakeProvider(t)
	f.handle("machine.ssh_info", result(nil))
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "aborted", "exit_status": 3, "exit_reason": "triple fault (exit status 3)"}))
	state, _ := newState(f, connectConfig(t, map[string]interface{}{}))
	state.Put("machine_id", "m1")
	state.Put("machine_path", "/x/m1")
	t0 := time.Now()
	if a := (&stepConnect{}).Run(context.Background(), state); a != multistep.ActionHalt {
		t.Fatal("continued")
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("took %s: ssh_timeout waited out", d)
	}
	if e := stateError(state); !strings.Contains(e, "machine m1 ended before SSH was up: triple fault (exit status 3)") {
		t.Errorf("error %q", e)
	}
}

func TestConnectTimeout(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.ssh_info", result(nil))
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "running"}))
	c := connectConfig(t, map[string]interface{}{})
	c.Comm.SSHTimeout = 500 * time.Millisecond
	state, _ := newState(f, c)
	state.Put("machine_id", "m1")
	state.Put("machine_path", "/x/m1")
	if a := (&stepConnect{}).Run(context.Background(), state); a != multistep.ActionHalt {
		t.Fatal("continued")
	}
	if e := stateError(state); !strings.Contains(e, "Timeout waiting for SSH") {
		t.Errorf("error %q", e)
	}
}

func shutdownState(f *fakeProvider, c *Config) (*multistep.BasicStateBag, *recordUi, *packersdk.MockCommunicator) {
	state, ui := newState(f, c)
	state.Put("machine_id", "m1")
	comm := &packersdk.MockCommunicator{}
	state.Put("communicator", packersdk.Communicator(comm))
	return state, ui, comm
}

func TestShutdownPowerButton(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.stop", result(map[string]any{"id": "m1", "state": "stopped", "exit_status": 1,
		"exit_reason": "powered off by machine.stop (ACPI power button; exit status 1)"}))
	c := &Config{}
	c.ShutdownTimeout = 90 * time.Second
	state, ui, comm := shutdownState(f, c)
	if a := (&stepShutdown{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	if s := f.callsOf("machine.stop"); !reflect.DeepEqual(s, []map[string]any{{"id": "m1", "timeout": 90.0}}) {
		t.Errorf("machine.stop calls %v", s)
	}
	if comm.StartCalled || ui.count("The guest is off: powered off by machine.stop") != 1 {
		t.Errorf("command run: %v; ui:\n%s", comm.StartCalled, ui.text())
	}
}

func TestShutdownForcedOffIsReported(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.stop", result(map[string]any{"id": "m1", "state": "stopped", "exit_signal": 9,
		"exit_reason": "forced off by machine.stop (signal 9, SIGKILL)"}))
	c := &Config{}
	c.ShutdownTimeout = time.Second
	state, ui, _ := shutdownState(f, c)
	if a := (&stepShutdown{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	if ui.count("error: The guest did not power off and was killed (forced off by machine.stop (signal 9, SIGKILL))") != 1 {
		t.Errorf("ui:\n%s", ui.text())
	}
}

func TestShutdownCommand(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "stopped", "exit_status": 1, "exit_reason": "guest powered off (exit status 1)"}))
	c := &Config{}
	c.ShutdownCommand = "sudo poweroff"
	c.ShutdownTimeout = time.Minute
	state, ui, comm := shutdownState(f, c)
	if a := (&stepShutdown{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	if comm.StartCmd == nil || comm.StartCmd.Command != "sudo poweroff" {
		t.Errorf("command %+v", comm.StartCmd)
	}
	if len(f.callsOf("machine.stop")) != 0 || ui.count("The guest is off: guest powered off") != 1 {
		t.Errorf("calls %v ui:\n%s", f.methods(), ui.text())
	}
}

// A guest that ignores shutdown_command gets the power button after shutdown_timeout.
func TestShutdownCommandTimesOutThenPowerButton(t *testing.T) {
	defer func(d time.Duration) { statePoll = d }(statePoll)
	statePoll = 20 * time.Millisecond
	f := newFakeProvider(t)
	f.handle("machine.state", result(map[string]any{"id": "m1", "state": "running"}))
	f.handle("machine.stop", result(map[string]any{"id": "m1", "state": "stopped", "exit_status": 1, "exit_reason": "powered off"}))
	c := &Config{}
	c.ShutdownCommand = "true"
	c.ShutdownTimeout = 200 * time.Millisecond
	state, ui, _ := shutdownState(f, c)
	if a := (&stepShutdown{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	if len(f.callsOf("machine.stop")) != 1 || ui.count("still runs 200ms after shutdown_command") != 1 {
		t.Errorf("calls %v ui:\n%s", f.methods(), ui.text())
	}
}

// exportTo makes the fake's machine.package write a box at the path it is given.
func exportTo(f *fakeProvider, content string) {
	f.handle("machine.package", func(p map[string]any, notify func(string, any)) (any, *RPCError) {
		path := p["output"].(string)
		notify("progress", map[string]any{"request_id": 1, "phase": "package", "done": len(content), "total": len(content)})
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return nil, &RPCError{Code: -32000, Message: err.Error()}
		}
		sum := sha256.Sum256([]byte(content))
		return map[string]any{"path": path, "size": len(content), "checksum_type": "sha256", "checksum": hex.EncodeToString(sum[:]),
			"metadata": map[string]any{"provider": "xhyve", "kernel": "vmlinux"}}, nil
	})
}

func TestExportWritesBoxAndCatalog(t *testing.T) {
	f := newFakeProvider(t)
	exportTo(f, "a box")
	out := t.TempDir()
	state, _ := newState(f, &Config{OutputDir: out, VMName: "tiny", OutputBoxVersion: "1.0.0"})
	state.Put("machine_id", "m1")
	if a := (&stepExport{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("halted: %s", stateError(state))
	}
	box := filepath.Join(out, "tiny.box")
	if e := f.callsOf("machine.package"); !reflect.DeepEqual(e, []map[string]any{{"id": "m1", "output": box}}) {
		t.Errorf("machine.package calls %v", e)
	}
	sum := sha256.Sum256([]byte("a box"))
	var catalog struct {
		Name     string
		Versions []struct {
			Version   string
			Providers []map[string]string
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "tiny.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &catalog); err != nil {
		t.Fatal(err)
	}
	wantProvider := map[string]string{"name": "xhyve", "url": "tiny.box", "checksum_type": "sha256", "checksum": hex.EncodeToString(sum[:])}
	if catalog.Name != "tiny" || len(catalog.Versions) != 1 || catalog.Versions[0].Version != "1.0.0" ||
		!reflect.DeepEqual(catalog.Versions[0].Providers, []map[string]string{wantProvider}) {
		t.Errorf("catalog %s", data)
	}
	a := state.Get("artifact").(*Artifact)
	if a.BuilderId() != BuilderID || a.Id() != "tiny" || !reflect.DeepEqual(a.Files(), []string{box, filepath.Join(out, "tiny.json")}) {
		t.Errorf("artifact %+v", a)
	}
	if a.State("checksum") != "sha256:"+hex.EncodeToString(sum[:]) || !strings.Contains(a.String(), box) {
		t.Errorf("artifact %s, checksum %v", a, a.State("checksum"))
	}
	if err := a.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(box); !os.IsNotExist(err) {
		t.Errorf("box still there after Destroy: %v", err)
	}
}

func TestExportFailureHalts(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("machine.package", rpcError(-32009, "machine m1 (v) is running: package needs it stopped (machine.stop)"))
	state, _ := newState(f, &Config{OutputDir: t.TempDir(), VMName: "v"})
	state.Put("machine_id", "m1")
	if a := (&stepExport{}).Run(context.Background(), state); a != multistep.ActionHalt {
		t.Fatal("continued")
	}
	if e := stateError(state); !strings.Contains(e, "exporting machine m1: machine m1 (v) is running") {
		t.Errorf("error %q", e)
	}
}
