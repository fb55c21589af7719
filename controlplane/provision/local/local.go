// Package local is the provider of the embedded default: an "instance" is a
// stackpro-agent process on this host, started detached with its own state
// directory and a bootstrap file in place of cloud-init's user data. The
// processes outlive the control plane, which finds them again by pid file.
package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Files in an instance's directory.
const (
	bootstrapFile = "bootstrap.yaml"
	pidFile       = "agent.pid"
	logFile       = "agent.log"
)

// Provider runs instances as local agent processes under Dir/<instance id>.
type Provider struct {
	dir      string
	agentBin string
	log      *slog.Logger
}

var _ provision.Provider = (*Provider)(nil)

// New returns a provider keeping instances under dir and running agentBin.
// A relative dir is made absolute, since each agent runs in its own directory.
func New(dir, agentBin string, log *slog.Logger) (*Provider, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	return &Provider{dir: abs, agentBin: agentBin, log: log.With("component", "local-provider")}, nil
}

// Name is "local".
func (p *Provider) Name() string { return "local" }

// InstanceDir is where instance id keeps its bootstrap file, state and log.
func (p *Provider) InstanceDir(id string) string { return filepath.Join(p.dir, id) }

// Launch writes the bootstrap file and starts the agent in its own session,
// so that it survives the control plane. An agent already running for the
// instance is kept. The provider's id of an instance is its own id.
func (p *Provider) Launch(_ context.Context, spec provision.LaunchSpec) (string, error) {
	if _, ok := p.Running(spec.InstanceID); ok {
		return spec.InstanceID, nil
	}
	return spec.InstanceID, p.start(spec)
}

func (p *Provider) start(spec provision.LaunchSpec) error {
	dir := p.InstanceDir(spec.InstanceID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	boot, err := yaml.Marshal(protocol.Bootstrap{
		InstanceID: spec.InstanceID, NATSURL: spec.NATSURL, EnrollmentToken: spec.EnrollmentToken,
		StateDir:          filepath.Join(dir, "state"),
		HeartbeatInterval: spec.HeartbeatInterval, MetricsInterval: spec.MetricsInterval,
		// Every local agent shares this host's engine.
		ComposeSlots: filepath.Join(p.dir, ".compose-slots"),
		CommandKey:   spec.CommandKey,
	})
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	bootPath := filepath.Join(dir, bootstrapFile)
	if err := renameio.WriteFile(bootPath, append([]byte("# stackpro bootstrap, written by the local provider\n"), boot...), 0o600); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(p.agentBin, "--config", bootPath)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("local: starting %s: %w", p.agentBin, err)
	}
	// Reap the child if it exits while this control plane runs; after a
	// restart the process belongs to init.
	go func() { _ = cmd.Wait() }()
	if err := renameio.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("local: %w", err)
	}
	p.log.Info("agent started", "instance", spec.InstanceID, "pid", cmd.Process.Pid, "dir", dir)
	return nil
}

// Running returns the pid of instance id's agent if it is alive.
func (p *Provider) Running(id string) (int, bool) {
	raw, err := os.ReadFile(filepath.Join(p.InstanceDir(id), pidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, p.alive(pid, id)
}

// alive reports whether pid is a live (not zombie) agent of instance id,
// so a reused pid is never mistaken for ours.
func (p *Provider) alive(pid int, id string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte(filepath.Join(p.InstanceDir(id), bootstrapFile)))
}

// Reattach reports, for every instance directory, whether its agent still
// runs. Nothing is started or stopped: a dead instance stays dead until an
// operator acts, as a stopped VM would.
func (p *Provider) Reattach(ids []string) map[string]bool {
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		pid, ok := p.Running(id)
		out[id] = ok
		p.log.Info("reattached instance", "instance", id, "pid", pid, "running", ok)
	}
	return out
}

// WaitRunning waits for the agent process; a local instance's address is
// the loopback address.
func (p *Provider) WaitRunning(ctx context.Context, providerID string) (string, error) {
	for {
		if _, ok := p.Running(providerID); ok {
			return "127.0.0.1", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Resize changes nothing: a local instance has no machine type.
func (p *Provider) Resize(context.Context, string, string) error { return nil }

// Terminate stops the agent (SIGTERM, then SIGKILL after 10 s), removes the
// instance's containers and its directory.
func (p *Provider) Terminate(ctx context.Context, id, _ string) error {
	if pid, ok := p.Running(id); ok {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("local: stopping %s: %w", id, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for p.alive(pid, id) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		if p.alive(pid, id) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := p.removeStack(ctx, id); err != nil {
		return err
	}
	if err := os.RemoveAll(p.InstanceDir(id)); err != nil {
		return fmt.Errorf("local: removing %s: %w", id, err)
	}
	return nil
}

// removeStack removes the containers, volumes and networks of the
// instance's compose project, as deleting its VM would. Only what carries
// the project's label is touched. Without a Docker engine there is nothing
// to remove.
func (p *Provider) removeStack(ctx context.Context, id string) error {
	if err := exec.CommandContext(ctx, "docker", "version").Run(); err != nil {
		p.log.Warn("no Docker engine: not removing the instance's containers", "instance", id, "err", err)
		return nil
	}
	label := "label=com.docker.compose.project=" + id
	for _, kind := range [][2][]string{
		{{"ps", "-aq", "--filter", label}, {"rm", "-f"}},
		{{"volume", "ls", "-q", "--filter", label}, {"volume", "rm", "-f"}},
		{{"network", "ls", "-q", "--filter", label}, {"network", "rm"}},
	} {
		list, remove := kind[0], kind[1]
		out, err := exec.CommandContext(ctx, "docker", list...).Output()
		if err != nil {
			return fmt.Errorf("local: listing %s of %s: %w", list[0], id, err)
		}
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			if out, err := exec.CommandContext(ctx, "docker", append(remove, ids...)...).CombinedOutput(); err != nil {
				return fmt.Errorf("local: removing %s of %s: %v: %s", list[0], id, err, out)
			}
		}
	}
	return nil
}
