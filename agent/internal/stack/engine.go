// Package stack runs an instance's docker compose stack from its target:
// it writes the target's files, brings the stack up, waits for it to turn
// healthy, and rolls back to the last good version when it does not. It
// touches only containers of its own compose project.
package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Errors that say why no stack can run on this host.
var (
	ErrNoDocker  = errors.New("docker engine not available")
	ErrNoCompose = errors.New("docker compose not available (neither the compose plugin nor docker-compose)")
)

// Engine runs docker and compose commands.
type Engine struct {
	// compose is the command line prefix: docker compose, or docker-compose.
	compose []string
	// slots, if set, is the directory of lock files that bounds the
	// compose commands the agents of this host run at once.
	slots string
}

// Detect finds the Docker engine and a compose tool, preferring the
// compose v2 plugin over the docker-compose binary. slots, if set, is a
// directory the agents sharing this host's engine take turns through.
func Detect(ctx context.Context, slots string) (*Engine, error) {
	e, err := detect(ctx)
	if err != nil {
		return nil, err
	}
	if slots != "" {
		if err := os.MkdirAll(slots, 0o700); err != nil {
			return nil, fmt.Errorf("stack: compose slots: %w", err)
		}
		e.slots = slots
	}
	return e, nil
}

func detect(ctx context.Context) (*Engine, error) {
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, fmt.Errorf("%w: no docker command", ErrNoDocker)
	}
	if out, err := run(ctx, "docker", "version", "--format", "{{.Server.Version}}"); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrNoDocker, reason(out, err))
	}
	if _, err := run(ctx, "docker", "compose", "version"); err == nil {
		return &Engine{compose: []string{"docker", "compose"}}, nil
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return &Engine{compose: []string{"docker-compose"}}, nil
	}
	return nil, ErrNoCompose
}

// ComposeTool names the compose command in use, for the agent's facts.
func (e *Engine) ComposeTool() string { return strings.Join(e.compose, " ") }

// Compose runs a compose command for project with the files of dir, in a
// slot when the host's agents share them.
func (e *Engine) Compose(ctx context.Context, project, dir string, args ...string) ([]byte, error) {
	if e.slots != "" {
		release, err := takeSlot(ctx, e.slots, 2*runtime.NumCPU())
		if err != nil {
			return nil, err
		}
		defer release()
	}
	argv := append(append([]string{}, e.compose[1:]...), "-p", project, "--project-directory", dir,
		"-f", dir+"/"+composeFile)
	return run(ctx, e.compose[0], append(argv, args...)...)
}

// takeSlot locks one of n slot files in dir, waiting until one is free or
// ctx ends. The lock goes with the process, so a crashed agent frees its
// slot.
func takeSlot(ctx context.Context, dir string, n int) (func(), error) {
	for {
		for i := range n {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("slot-%d", i)), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				return nil, fmt.Errorf("stack: compose slot: %w", err)
			}
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
				return func() { f.Close() }, nil
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stack: waiting for a compose slot: %w", ctx.Err())
		case <-time.After(time.Duration(100+rand.IntN(200)) * time.Millisecond):
		}
	}
}

// projectLabel is the label compose puts on every container of a project.
const projectLabel = "com.docker.compose.project"

// Services returns the state of every container of project, from the engine.
func (e *Engine) Services(ctx context.Context, project string) ([]protocol.ServiceState, error) {
	ids, err := run(ctx, "docker", "ps", "-aq", "--filter", "label="+projectLabel+"="+project)
	if err != nil {
		return nil, fmt.Errorf("stack: listing containers: %s", reason(ids, err))
	}
	fields := strings.Fields(string(ids))
	if len(fields) == 0 {
		return nil, nil
	}
	out, err := run(ctx, "docker", append([]string{"inspect"}, fields...)...)
	if err != nil {
		return nil, fmt.Errorf("stack: inspecting containers: %s", reason(out, err))
	}
	var containers []struct {
		RestartCount int
		State        struct {
			Status    string
			StartedAt time.Time
			Health    *struct{ Status string }
		}
		Config struct{ Labels map[string]string }
	}
	if err := json.Unmarshal(out, &containers); err != nil {
		return nil, fmt.Errorf("stack: decoding docker inspect: %w", err)
	}
	states := make([]protocol.ServiceState, 0, len(containers))
	for _, c := range containers {
		s := protocol.ServiceState{Service: c.Config.Labels["com.docker.compose.service"], State: c.State.Status,
			RestartCount: c.RestartCount, StartedAt: c.State.StartedAt.UTC()}
		if c.State.Health != nil {
			s.Health = c.State.Health.Status
		}
		states = append(states, s)
	}
	return states, nil
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// reason is why a command failed, in one line: its last line of output,
// or the error when it printed nothing.
func reason(out []byte, err error) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if last := strings.TrimSpace(lines[len(lines)-1]); last != "" {
		return last
	}
	return err.Error()
}

// Event is a change the engine reports for a container of the project.
type Event struct {
	Service string
	// Action is die, start or health_status: healthy/unhealthy.
	Action   string
	ExitCode string
}

// Events streams the engine's container events for project to fn until
// ctx ends or the stream breaks.
func (e *Engine) Events(ctx context.Context, project string, fn func(Event)) error {
	// Only the actions the reconciler acts on: a healthcheck alone would
	// otherwise send three exec events every interval.
	cmd := exec.CommandContext(ctx, "docker", "events", "--format", "{{json .}}",
		"--filter", "type=container", "--filter", "label="+projectLabel+"="+project,
		"--filter", "event=start", "--filter", "event=die", "--filter", "event=destroy", "--filter", "event=health_status")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("stack: docker events: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("stack: docker events: %w", err)
	}
	dec := json.NewDecoder(stdout)
	for {
		var ev struct {
			Action string
			Actor  struct{ Attributes map[string]string }
		}
		if err := dec.Decode(&ev); err != nil {
			_ = cmd.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("stack: docker events: %w", err)
		}
		fn(Event{Service: ev.Actor.Attributes["com.docker.compose.service"], Action: ev.Action,
			ExitCode: ev.Actor.Attributes["exitCode"]})
	}
}
