package xhyve

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// fakeProvider answers JSON-RPC on HOME/provider.sock as xhyve-provider does, from handlers
// the test sets, and records every request.
type fakeProvider struct {
	home string
	ln   net.Listener

	mu       sync.Mutex
	calls    []fakeCall
	handlers map[string]handler
}

type fakeCall struct {
	Method string
	Params map[string]any
}

// A handler returns a result or an error; notify sends a notification first.
type handler func(params map[string]any, notify func(method string, params any)) (any, *RPCError)

func newFakeProvider(t *testing.T) *fakeProvider {
	t.Helper()
	// Short: a unix socket path holds at most 107 bytes.
	home, err := os.MkdirTemp("", "xf")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeProvider{home: home, handlers: map[string]handler{}}
	t.Cleanup(func() {
		f.close()
		os.RemoveAll(home)
	})
	if err := f.listen(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeProvider) listen() error {
	ln, err := net.Listen("unix", filepath.Join(f.home, "provider.sock"))
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.ln = ln
	f.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return nil
}

func (f *fakeProvider) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
	}
}

func (f *fakeProvider) provider() *Provider { return &Provider{Home: f.home} }

func (f *fakeProvider) handle(method string, h handler) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handlers[method] = h
}

// result makes a handler that always answers v.
func result(v any) handler {
	return func(map[string]any, func(string, any)) (any, *RPCError) { return v, nil }
}

func rpcError(code int, msg string) handler {
	return func(map[string]any, func(string, any)) (any, *RPCError) {
		return nil, &RPCError{Code: code, Message: msg}
	}
}

func (f *fakeProvider) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req struct {
			ID     int64          `json:"id"`
			Method string         `json:"method"`
			Params map[string]any `json:"params"`
		}
		if json.Unmarshal(line, &req) != nil {
			return
		}
		f.mu.Lock()
		f.calls = append(f.calls, fakeCall{req.Method, req.Params})
		h := f.handlers[req.Method]
		f.mu.Unlock()
		send := func(m map[string]any) {
			m["jsonrpc"] = "2.0"
			b, _ := json.Marshal(m)
			c.Write(append(b, '\n'))
		}
		if h == nil {
			send(map[string]any{"id": req.ID, "error": map[string]any{"code": -32601, "message": "no such method: " + req.Method}})
			continue
		}
		res, rerr := h(req.Params, func(method string, params any) {
			send(map[string]any{"method": method, "params": params})
		})
		if rerr != nil {
			send(map[string]any{"id": req.ID, "error": rerr})
		} else {
			send(map[string]any{"id": req.ID, "result": res})
		}
	}
}

// callsOf returns the params of every call of method, in order.
func (f *fakeProvider) callsOf(method string) []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []map[string]any
	for _, c := range f.calls {
		if c.Method == method {
			out = append(out, c.Params)
		}
	}
	return out
}

func (f *fakeProvider) methods() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		out = append(out, c.Method)
	}
	return out
}
