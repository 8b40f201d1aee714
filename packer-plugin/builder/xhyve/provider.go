package xhyve

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// Provider is a JSON-RPC 2.0 client of the xhyve-provider daemon (provider/API.md): one
// newline-delimited JSON message per line over $XHYVE_HOME/provider.sock.
type Provider struct {
	Home    string // XHYVE_HOME: the socket is Home/provider.sock
	Command string // xhyve-provider, run once to start the daemon when none listens

	nextID  atomic.Int64
	started sync.Once
}

// RPCError is an error object of the daemon; its messages say what to do.
type RPCError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *RPCError) Error() string { return fmt.Sprintf("%s (error %d)", e.Message, e.Code) }

// Error codes of the daemon that the steps act on.
const (
	codeNotFound      = -32001
	codeAlreadyExists = -32003
)

// IsRPCError tells whether err is an error object of the daemon with that code.
func IsRPCError(err error, code int) bool {
	var e *RPCError
	return errors.As(err, &e) && e.Code == code
}

// Notification is a `progress` or `output` message sent before a request's response.
type Notification struct {
	Method string
	Params json.RawMessage
}

type message struct {
	ID     *int64          `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *RPCError       `json:"error"`
}

func (p *Provider) socket() string { return filepath.Join(p.Home, "provider.sock") }

func (p *Provider) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", p.socket())
	if err == nil || p.Command == "" {
		return c, err
	}
	// No daemon yet: `xhyve-provider call` starts one in the background (as for Vagrant).
	p.started.Do(func() {
		out, e := exec.CommandContext(ctx, p.Command, "call", "--home", p.Home, "provider.info").CombinedOutput()
		if e != nil {
			err = fmt.Errorf("no xhyve-provider daemon on %s and `%s call --home %s provider.info` failed: %v: %s",
				p.socket(), p.Command, p.Home, e, strings.TrimSpace(string(out)))
		}
	})
	if c, e := d.DialContext(ctx, "unix", p.socket()); e == nil {
		return c, nil
	}
	return nil, fmt.Errorf("cannot reach xhyve-provider on %s: %w", p.socket(), err)
}

// Call sends one request on its own connection and decodes the result into result (unless nil).
// Notifications that come first go to notify (unless nil). Cancelling ctx closes the
// connection and returns ctx's error.
func (p *Provider) Call(ctx context.Context, method string, params, result any, notify func(Notification)) error {
	conn, err := p.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	id := p.nextID.Add(1)
	req, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	if err != nil {
		return err
	}
	if _, err := conn.Write(append(req, '\n')); err != nil {
		return p.connErr(ctx, method, err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return p.connErr(ctx, method, err)
		}
		var m message
		if err := json.Unmarshal(line, &m); err != nil {
			return fmt.Errorf("%s: the daemon sent a line that is not JSON: %v", method, err)
		}
		if m.ID == nil {
			if notify != nil {
				notify(Notification{Method: m.Method, Params: m.Params})
			}
			continue
		}
		if m.Error != nil {
			return m.Error
		}
		if result == nil || string(m.Result) == "null" {
			return nil
		}
		return json.Unmarshal(m.Result, result)
	}
}

func (p *Provider) connErr(ctx context.Context, method string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%s: connection to xhyve-provider (%s) lost: %w", method, p.socket(), err)
}
