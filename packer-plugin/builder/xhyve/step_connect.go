package xhyve

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/communicator"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	gossh "golang.org/x/crypto/ssh"
)

// stepConnect is the SDK's communicator step with the address and, unless the template gives
// credentials, the key from machine.ssh_info. It gives up as soon as the machine stops (a guest
// that crashed while booting) instead of waiting out ssh_timeout.
type stepConnect struct {
	connect *communicator.StepConnect

	mu   sync.Mutex
	info *sshInfo
}

// statePoll is how often the machine's state is checked while waiting for SSH.
var statePoll = 2 * time.Second

func (s *stepConnect) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	p := state.Get("provider").(*Provider)
	id := state.Get("machine_id").(string)

	s.connect = &communicator.StepConnect{
		Config:    &c.Comm,
		Host:      func(multistep.StateBag) (string, error) { i, err := s.sshInfo(p, id); return i.Host, err },
		SSHPort:   func(multistep.StateBag) (int, error) { i, err := s.sshInfo(p, id); return i.Port, err },
		SSHConfig: s.sshConfig(c),
	}

	wctx, cancel := context.WithCancel(ctx)
	ended := make(chan machineState, 1)
	watched := make(chan struct{})
	defer func() { cancel(); <-watched }()
	go func(poll time.Duration) {
		defer close(watched)
		for {
			select {
			case <-wctx.Done():
				return
			case <-time.After(poll):
			}
			if st, err := getState(wctx, p, id); err == nil && st.State != "running" {
				ended <- st
				cancel()
				return
			}
		}
	}(statePoll)
	action := s.connect.Run(wctx, state)
	select {
	case st := <-ended:
		return halt(state, fmt.Errorf("machine %s ended before SSH was up: %s", id, st.reason()))
	default:
	}
	return action
}

// sshInfo asks the daemon where the guest's SSH port is forwarded to (null until it runs).
func (s *stepConnect) sshInfo(p *Provider, id string) (sshInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var info *sshInfo
	if err := p.Call(ctx, "machine.ssh_info", map[string]string{"id": id}, &info, nil); err != nil {
		return sshInfo{}, err
	}
	if info == nil {
		return sshInfo{}, fmt.Errorf("machine %s has no SSH address (not running, or no network)", id)
	}
	s.mu.Lock()
	s.info = info
	s.mu.Unlock()
	return *info, nil
}

// sshConfig adds the provider's key (Vagrant's insecure key) when the template gives no
// password, key or agent.
func (s *stepConnect) sshConfig(c *Config) func(multistep.StateBag) (*gossh.ClientConfig, error) {
	base := c.Comm.SSHConfigFunc()
	ownAuth := c.Comm.SSHPassword != "" || c.Comm.SSHPrivateKeyFile != "" || len(c.Comm.SSHPrivateKey) > 0 || c.Comm.SSHAgentAuth
	return func(state multistep.StateBag) (*gossh.ClientConfig, error) {
		s.mu.Lock()
		info := s.info
		s.mu.Unlock()
		if !ownAuth && info != nil && len(info.PrivateKeyPath) > 0 {
			key, err := os.ReadFile(info.PrivateKeyPath[0])
			if err != nil {
				return nil, fmt.Errorf("the provider's SSH key: %w", err)
			}
			state.Put("privateKey", string(key))
		}
		return base(state)
	}
}

func (s *stepConnect) Cleanup(state multistep.StateBag) {
	if s.connect != nil {
		s.connect.Cleanup(state)
	}
}
