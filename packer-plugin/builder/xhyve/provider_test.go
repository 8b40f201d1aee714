package xhyve

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCallResultNotificationsAndErrors(t *testing.T) {
	f := newFakeProvider(t)
	f.handle("box.add", func(params map[string]any, notify func(string, any)) (any, *RPCError) {
		notify("progress", map[string]any{"request_id": 1, "phase": "read", "done": 1, "total": 2})
		notify("progress", map[string]any{"request_id": 1, "phase": "read", "done": 2, "total": 2})
		return map[string]any{"name": params["name"], "version": "1.0.0"}, nil
	})
	f.handle("box.remove", rpcError(codeNotFound, `box "x" is not installed`))
	p := f.provider()

	var got []Notification
	var res struct{ Name, Version string }
	err := p.Call(context.Background(), "box.add", map[string]string{"name": "acme/tiny"}, &res, func(n Notification) { got = append(got, n) })
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "acme/tiny" || res.Version != "1.0.0" {
		t.Errorf("result %+v", res)
	}
	if len(got) != 2 || got[0].Method != "progress" {
		t.Fatalf("notifications %+v", got)
	}
	var prog struct{ Done int }
	json.Unmarshal(got[1].Params, &prog)
	if prog.Done != 2 {
		t.Errorf("second notification %s", got[1].Params)
	}

	err = p.Call(context.Background(), "box.remove", map[string]string{"name": "x"}, nil, nil)
	if !IsRPCError(err, codeNotFound) || !strings.Contains(err.Error(), `box "x" is not installed`) {
		t.Errorf("error %v", err)
	}
}

func TestCallCancelClosesTheConnection(t *testing.T) {
	f := newFakeProvider(t)
	block := make(chan struct{})
	defer close(block)
	f.handle("machine.stop", func(map[string]any, func(string, any)) (any, *RPCError) {
		<-block
		return nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := f.provider().Call(ctx, "machine.stop", map[string]string{"id": "m"}, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want the context's", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("returned after %s", d)
	}
}

// With no daemon listening, the provider command (`xhyve-provider call ...`) is run once to
// start one, with the same home.
func TestCallStartsTheDaemon(t *testing.T) {
	f := newFakeProvider(t)
	f.close()
	os.Remove(filepath.Join(f.home, "provider.sock"))
	f.handle("provider.info", result(map[string]any{"name": "xhyve-provider"}))

	cmd := filepath.Join(f.home, "xhyve-provider")
	script := "#!/bin/sh\necho \"$@\" > \"$0.args\"\nwhile [ ! -S " + filepath.Join(f.home, "provider.sock") + " ]; do sleep 0.01; done\n"
	if err := os.WriteFile(cmd, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, err := os.Stat(cmd + ".args"); err == nil {
				f.listen()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	p := &Provider{Home: f.home, Command: cmd}
	var info struct{ Name string }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Call(ctx, "provider.info", nil, &info, nil); err != nil {
		t.Fatal(err)
	}
	args, _ := os.ReadFile(cmd + ".args")
	if want := "call --home " + f.home + " provider.info\n"; string(args) != want {
		t.Errorf("command args %q, want %q", args, want)
	}
	if info.Name != "xhyve-provider" {
		t.Errorf("info %+v", info)
	}
}

func TestCallNamesAFailedDaemonStart(t *testing.T) {
	home := t.TempDir()
	cmd := filepath.Join(home, "xhyve-provider")
	os.WriteFile(cmd, []byte("#!/bin/sh\necho 'no xhyve found' >&2\nexit 2\n"), 0o755)
	err := (&Provider{Home: home, Command: cmd}).Call(context.Background(), "box.list", nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no xhyve found") || !strings.Contains(err.Error(), "provider.sock") {
		t.Errorf("error %v: want the command's message and the socket", err)
	}
}
