package local_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/provision/local"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

func newProvider(t *testing.T, agentBin string) *local.Provider {
	t.Helper()
	p, err := local.New(t.TempDir(), agentBin, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// With a relative data dir (as `make run` gives), the agent, which runs in
// its own directory, still finds its bootstrap file; and Terminate stops it.
func TestLaunchFromRelativeDir(t *testing.T) {
	t.Chdir(t.TempDir())
	// A stand-in agent that says so, and stays, only if it can read the file it is given.
	script := "#!/bin/sh\ntest -f \"$2\" || exit 1\ntouch \"$2.read\"\nwhile :; do sleep 1; done\n"
	if err := os.WriteFile("agent.sh", []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	bin, _ := filepath.Abs("agent.sh")
	p, err := local.New("data/instances", bin, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Launch(context.Background(), provision.LaunchSpec{InstanceID: "i-aaaa", EnrollmentToken: "t", NATSURL: "nats://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Terminate(context.Background(), "i-aaaa", "") })
	var pid int
	proctest.Within(t, 10*time.Second, "the stand-in agent to run and read its bootstrap file", func() bool {
		_, err := os.Stat(filepath.Join(p.InstanceDir("i-aaaa"), "bootstrap.yaml.read"))
		var running bool
		pid, running = p.Running("i-aaaa")
		return running && err == nil
	})
	if err := p.Terminate(context.Background(), "i-aaaa", ""); err != nil {
		t.Fatal(err)
	}
	if _, still := p.Running("i-aaaa"); still || processAlive(pid) {
		t.Errorf("agent %d still runs after Terminate", pid)
	}
}

func processAlive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(stat), ") Z ")
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
	if err := p.Terminate(context.Background(), id, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.InstanceDir(id)); !os.IsNotExist(err) {
		t.Errorf("instance dir still there: %v", err)
	}
}

func TestTerminateUnknownInstance(t *testing.T) {
	if err := newProvider(t, "/bin/true").Terminate(context.Background(), "i-none", ""); err != nil {
		t.Errorf("Terminate of an unknown instance: %v, want nil", err)
	}
}

func TestLaunchWithoutAgentBinary(t *testing.T) {
	p := newProvider(t, filepath.Join(t.TempDir(), "no-such-agent"))
	_, err := p.Launch(context.Background(), provision.LaunchSpec{InstanceID: "i-aaaa", EnrollmentToken: "t", NATSURL: "nats://127.0.0.1:1"})
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
	if _, err := p.Launch(context.Background(), provision.LaunchSpec{InstanceID: "i-aaaa", EnrollmentToken: "secret", NATSURL: "nats://127.0.0.1:1"}); err != nil {
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

// The bootstrap file hands the agent what it needs to enroll, and pins the
// control plane's command key.
func TestBootstrapFile(t *testing.T) {
	p := newProvider(t, "/bin/true")
	spec := provision.LaunchSpec{InstanceID: "i-aaaa", EnrollmentToken: "secret", NATSURL: "nats://127.0.0.1:1",
		HeartbeatInterval: 2 * time.Second, MetricsInterval: 5 * time.Second,
		CommandKey: "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="}
	if _, err := p.Launch(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(p.InstanceDir("i-aaaa"), "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var got protocol.Bootstrap
	if err := yaml.Unmarshal(raw, &got); err != nil {
		t.Fatalf("bootstrap.yaml: %v", err)
	}
	want := protocol.Bootstrap{InstanceID: spec.InstanceID, NATSURL: spec.NATSURL, EnrollmentToken: spec.EnrollmentToken,
		StateDir: filepath.Join(p.InstanceDir("i-aaaa"), "state"), HeartbeatInterval: spec.HeartbeatInterval,
		MetricsInterval: spec.MetricsInterval, ComposeSlots: got.ComposeSlots, CommandKey: spec.CommandKey}
	if got != want || got.ComposeSlots == "" {
		t.Errorf("bootstrap.yaml = %+v, want %+v with compose slots", got, want)
	}
}
