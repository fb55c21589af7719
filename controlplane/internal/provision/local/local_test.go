package local_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stackpro/stackpro/controlplane/internal/provision"
	"github.com/stackpro/stackpro/controlplane/internal/provision/local"
)

func newProvider(t *testing.T, agentBin string) *local.Provider {
	t.Helper()
	return local.New(t.TempDir(), agentBin, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// A pid file pointing at a live process that is not this instance's agent
// (a reused pid) is not taken for the agent.
func TestRunningIgnoresReusedPID(t *testing.T) {
	p := newProvider(t, "/bin/true")
	id := "i-aaaa"
	if err := os.MkdirAll(p.InstanceDir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(p.InstanceDir(id), "agent.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Running(id); ok {
		t.Error("the test process was taken for the agent")
	}
	if got := p.Reattach([]string{id, "i-none"}); got[id] || got["i-none"] {
		t.Errorf("Reattach = %v, want nothing running", got)
	}
	// Terminating never signals a process that is not ours.
	if err := p.Terminate(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.InstanceDir(id)); !os.IsNotExist(err) {
		t.Errorf("instance dir still there: %v", err)
	}
}

func TestTerminateUnknownInstance(t *testing.T) {
	if err := newProvider(t, "/bin/true").Terminate(context.Background(), "i-none"); err != nil {
		t.Errorf("Terminate of an unknown instance: %v, want nil", err)
	}
}

func TestLaunchWithoutAgentBinary(t *testing.T) {
	p := newProvider(t, filepath.Join(t.TempDir(), "no-such-agent"))
	err := p.Launch(context.Background(), provision.LaunchSpec{InstanceID: "i-aaaa", EnrollmentToken: "t", NATSURL: "nats://127.0.0.1:1"})
	if err == nil {
		t.Fatal("Launch with a missing agent binary succeeded")
	}
	if _, ok := p.Running("i-aaaa"); ok {
		t.Error("an instance runs after a failed launch")
	}
}

// The bootstrap file carries the token, so only its owner may read it.
func TestBootstrapFileIsPrivate(t *testing.T) {
	p := newProvider(t, "/bin/true")
	if err := p.Launch(context.Background(), provision.LaunchSpec{InstanceID: "i-aaaa", EnrollmentToken: "secret", NATSURL: "nats://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(p.InstanceDir("i-aaaa"), "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("bootstrap.yaml mode %v, want 0600", info.Mode().Perm())
	}
}
