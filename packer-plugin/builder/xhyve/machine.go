package xhyve

import "context"

// machineState is machine.state's result (and machine.stop's).
type machineState struct {
	State      string `json:"state"`
	ExitStatus *int   `json:"exit_status"`
	ExitSignal *int   `json:"exit_signal"`
	ExitReason string `json:"exit_reason"`
}

func (m machineState) reason() string {
	if m.ExitReason != "" {
		return m.ExitReason
	}
	return m.State
}

func getState(ctx context.Context, p *Provider, id string) (machineState, error) {
	var st machineState
	err := p.Call(ctx, "machine.state", map[string]string{"id": id}, &st, nil)
	return st, err
}

// sshInfo is machine.ssh_info's result; nil while the machine does not run.
type sshInfo struct {
	Host           string   `json:"host"`
	Port           int      `json:"port"`
	Username       string   `json:"username"`
	PrivateKeyPath []string `json:"private_key_path"`
}
