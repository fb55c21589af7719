package fleetsim_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/fleetsim"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// logWriter sends a process's log lines to the test's log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// credentialsFile writes e's credentials to a file for the command.
func (e *env) credentialsFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agents.jsonl")
	writeCredentials(t, path, e.creds)
	return path
}

func waitStats(t *testing.T, p *fleetsim.Processes, what string, cond func(fleetsim.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for !cond(p.Stats()) {
		select {
		case <-p.Done():
			t.Fatalf("the fleet exited (%v) before %s; last stats %+v", p.Stop(), what, p.Stats())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s after 45s: stats %+v", what, p.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestProcessSplit(t *testing.T) {
	e := start(t, 300)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(simulateEnv, "1") // the fleet's processes run Main, not the tests
	p, err := fleetsim.StartProcesses(context.Background(), exe, []string{"--nats", e.b.ClientURL(),
		"--agents", e.credentialsFile(t), "--per-process", "100", "--heartbeat", "500ms", "--fail", "10%"}, logWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })

	waitStats(t, p, "300 agents connected in 3 processes, 30 failing", func(s fleetsim.Stats) bool {
		return s.Processes == 3 && s.Agents == 300 && s.Enrolled == 300 && s.Connected == 300 && s.Failing == 30
	})
	if got := e.enr.count(); got != 300 {
		t.Errorf("%d enrollments, want 300", got)
	}
	ping := func(id string, wait time.Duration) (protocol.CommandReply, error) {
		var r protocol.CommandReply
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		m, err := broker.Ask(ctx, e.b.Conn(), id, e.seal(t, request(id, protocol.CommandPing, nil, false)))
		if err == nil {
			err = json.Unmarshal(m.Data, &r)
		}
		return r, err
	}
	answered := 0
	for _, c := range e.creds {
		if r, err := ping(c.InstanceID, 5*time.Second); err != nil {
			t.Errorf("ping %s: %v", c.InstanceID, err)
		} else if r.OK {
			answered++
		}
	}
	if answered != 270 {
		t.Errorf("%d agents answered a ping, want 270 (10%% failing)", answered)
	}
	waitStats(t, p, "300 pings counted", func(s fleetsim.Stats) bool {
		return s.Received == 300 && s.Answered == 300 && s.Failed == 30 && s.Heartbeats > 0
	})

	if err := p.Send("offline 10%"); err != nil {
		t.Fatal(err)
	}
	waitStats(t, p, "30 agents offline", func(s fleetsim.Stats) bool {
		return s.Offline == 30 && s.Connected == 270 && s.Failing == 30
	})
	if err := p.Send("normal"); err != nil {
		t.Fatal(err)
	}
	waitStats(t, p, "everyone normal and connected", func(s fleetsim.Stats) bool {
		return s.Offline == 0 && s.Failing == 0 && s.Connected == 300
	})
	for _, c := range e.creds {
		if r, err := ping(c.InstanceID, 5*time.Second); err != nil || !r.OK {
			t.Errorf("ping %s after normal: %+v, %v", c.InstanceID, r, err)
		}
	}

	if err := p.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if s := p.Stats(); s.Processes != 3 || s.Connected != 0 || s.Received < 600 {
		t.Errorf("final stats %+v, want 3 processes, none connected, 600 commands", s)
	}
	// No child outlives the fleet: no agent is left to answer (once the
	// server has seen the connections close).
	for _, c := range e.creds {
		proctest.Until(t, c.InstanceID+" gone", func() bool {
			_, err := ping(c.InstanceID, 100*time.Millisecond)
			return errors.Is(err, broker.ErrNoAgent)
		})
	}
}

func TestChildStopsWhenStdinCloses(t *testing.T) {
	e := start(t, 10)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "--child", "--nats", e.b.ClientURL(), "--agents", e.credentialsFile(t),
		"--from", "5", "--count", "5")
	cmd.Env = append(os.Environ(), simulateEnv+"=1")
	cmd.Stderr = logWriter{t}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := bufio.NewScanner(out)
	var first fleetsim.Stats
	if !lines.Scan() || json.Unmarshal(lines.Bytes(), &first) != nil {
		t.Fatalf("no stats line from the child: %q %v", lines.Bytes(), lines.Err())
	}
	if first.Agents != 5 || first.Connected != 5 || e.enr.count() != 5 {
		t.Errorf("child stats %+v with %d enrollments, want its 5 agents", first, e.enr.count())
	}
	if _, err := io.WriteString(stdin, "fail i-sim00006\n"); err != nil {
		t.Fatal(err)
	}
	var s fleetsim.Stats
	for s.Failing != 1 && lines.Scan() {
		if err := json.Unmarshal(lines.Bytes(), &s); err != nil {
			t.Fatal(err)
		}
	}
	if s.Failing != 1 {
		t.Fatalf("stats %+v, want the agent named failing", s)
	}

	stdin.Close() // as when the parent dies
	done := make(chan error, 1)
	go func() {
		for lines.Scan() {
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("child exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the child still runs 30s after its stdin closed")
	}
}

func TestMainRefusesBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no url", []string{"--agents", "x"}, "--nats is required"},
		{"bad share", []string{"--nats", "nats://h", "--agents", "x", "--fail", "150%"}, "not a share"},
		{"shares over 100%", []string{"--nats", "nats://h", "--agents", "x", "--fail", "60%", "--silent", "0.5"}, "more than 100%"},
		{"no file", []string{"--nats", "nats://h", "--agents", filepath.Join(t.TempDir(), "none")}, "no such file"},
		{"unknown flag", []string{"--nats", "nats://h", "--agents", "x", "--agnets", "y"}, "not defined: -agnets"},
		{"arguments", []string{"--nats", "nats://h", "--agents", "x", "extra"}, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fleetsim.Main(context.Background(), tt.args, strings.NewReader(""), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("stackpro-sim %v: %v, want an error saying %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestMainHelp(t *testing.T) {
	var out strings.Builder
	if err := fleetsim.Main(context.Background(), []string{"--help"}, strings.NewReader(""), io.Discard, &out); err != nil {
		t.Fatalf("stackpro-sim --help: %v", err)
	}
	for _, want := range []string{"usage: stackpro-sim --nats URL --agents FILE", "offline 10%", "-per-process int"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stackpro-sim --help lacks %q:\n%s", want, out.String())
		}
	}
}
