package xhyve

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"golang.org/x/crypto/ssh"
)

// recordUi keeps every line the steps show.
type recordUi struct {
	mu    sync.Mutex
	lines []string
}

func (u *recordUi) add(kind, m string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lines = append(u.lines, kind+": "+m)
}
func (u *recordUi) Ask(string) (string, error)                                        { return "", nil }
func (u *recordUi) Say(m string)                                                      { u.add("say", m) }
func (u *recordUi) Message(m string)                                                  { u.add("message", m) }
func (u *recordUi) Error(m string)                                                    { u.add("error", m) }
func (u *recordUi) Machine(string, ...string)                                         {}
func (u *recordUi) TrackProgress(_ string, _, _ int64, r io.ReadCloser) io.ReadCloser { return r }

func (u *recordUi) text() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.lines, "\n")
}

func (u *recordUi) count(substr string) int {
	return strings.Count(u.text(), substr)
}

// newState is the state bag the builder gives its steps, with the fake as the daemon.
func newState(f *fakeProvider, c *Config) (*multistep.BasicStateBag, *recordUi) {
	ui := &recordUi{}
	state := new(multistep.BasicStateBag)
	state.Put("config", c)
	state.Put("ui", packersdk.Ui(ui))
	state.Put("hook", &packersdk.MockHook{})
	state.Put("provider", f.provider())
	return state, ui
}

func stateError(state multistep.StateBag) string {
	if err, ok := state.GetOk("error"); ok {
		return err.(error).Error()
	}
	return ""
}

// sshServer accepts user vagrant with one key, as the guest's dropbear does with Vagrant's
// insecure key; sessions are refused (the steps only log in).
type sshServer struct {
	port    int
	keyFile string // the client's private key, as the provider's insecure_private_key
	logins  atomic.Int32
}

func newSSHServer(t *testing.T) *sshServer {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	clientPub, clientPriv, _ := ed25519.GenerateKey(rand.Reader)
	authorized, _ := ssh.NewPublicKey(clientPub)
	block, err := ssh.MarshalPrivateKey(clientPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	s := &sshServer{keyFile: filepath.Join(t.TempDir(), "insecure_private_key")}
	if err := os.WriteFile(s.keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(m ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if m.User() == "vagrant" && bytes.Equal(k.Marshal(), authorized.Marshal()) {
			s.logins.Add(1)
			return nil, nil
		}
		return nil, fmt.Errorf("%s with that key: refused", m.User())
	}}
	cfg.AddHostKey(hostSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s.port = ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				conn, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					return
				}
				defer conn.Close()
				go ssh.DiscardRequests(reqs)
				for ch := range chans {
					ch.Reject(ssh.Prohibited, "no sessions here")
				}
			}()
		}
	}()
	return s
}

func (s *sshServer) info() map[string]any {
	return map[string]any{"host": "127.0.0.1", "port": s.port, "username": "vagrant", "private_key_path": []string{s.keyFile}}
}
