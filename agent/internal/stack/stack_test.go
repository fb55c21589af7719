package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/internal/dockertest"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// requireEngine returns the Docker engine with its compose tool; without
// them the test skips, or fails under CI (see dockertest.Require).
func requireEngine(t *testing.T) *Engine {
	t.Helper()
	dockertest.Require(t)
	e, err := Detect(context.Background(), "")
	if err != nil {
		t.Fatalf("Detect: %v", err)
	}
	return e
}

func TestMain(m *testing.M) {
	code := m.Run()
	dockertest.RemoveImage()
	os.Exit(code)
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// composeFor is a two-service stack of the demo image; unhealthy makes
// "files" fail its healthcheck.
func composeFor(image string, unhealthy bool) string {
	flag := "0"
	if unhealthy {
		flag = "1"
	}
	svc := func(name string) string {
		return "  " + name + ":\n" +
			"    image: " + image + "\n" +
			"    command: [\"-name\", \"" + name + "\"]\n" +
			"    restart: unless-stopped\n" +
			"    environment:\n      STACKPRO_DEMO_UNHEALTHY: \"" + flag + "\"\n" +
			"    healthcheck:\n" +
			"      test: [\"CMD\", \"/demo\", \"check\", \"http://127.0.0.1:8080/healthz\"]\n" +
			"      interval: 1s\n      timeout: 2s\n      retries: 2\n"
	}
	return "version: \"3.8\"\nservices:\n" + svc("crm") + svc("files")
}

type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) emit(typ string, _ protocol.Severity, _ string, _ map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, typ)
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func newReconciler(t *testing.T, e *Engine, dir, project string, rec *recorder) *Reconciler {
	t.Helper()
	r, err := New(Options{Engine: e, Dir: dir, Project: project, HealthTimeout: 20 * time.Second, Emit: rec.emit,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func startTimes(t *testing.T, r *Reconciler) map[string]time.Time {
	t.Helper()
	st := r.Status(context.Background())
	if st.Error != "" {
		t.Fatal(st.Error)
	}
	out := map[string]time.Time{}
	for _, s := range st.Services {
		out[s.Service] = s.StartedAt
	}
	return out
}

func TestStackLifecycle(t *testing.T) {
	e := requireEngine(t)
	img := dockertest.DemoImage(t)
	project := "i-test-" + randomSuffix()
	dir := t.TempDir()
	t.Cleanup(func() {
		_, _ = e.Compose(context.Background(), project, filepath.Join(dir, "v1"), "down", "--remove-orphans", "--timeout", "1")
	})
	// A container that is not ours must survive everything below.
	foreign := "stackpro-foreign-" + randomSuffix()
	if out, err := exec.Command("docker", "run", "-d", "--name", foreign, img).CombinedOutput(); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", foreign).Run() })

	rec := &recorder{}
	r := newReconciler(t, e, dir, project, rec)
	ctx := context.Background()

	// From nothing to healthy.
	v1 := protocol.Target{V: 1, InstanceID: project, Version: 1, Compose: composeFor(img, false),
		Env: map[string]string{"SUBDOMAIN": "acme"}, Files: map[string]string{"config/crm.yaml": "title: Acme\n"}}
	if err := r.Apply(ctx, v1); err != nil {
		t.Fatalf("Apply v1: %v", err)
	}
	st := r.Status(ctx)
	if st.AppliedVersion != 1 || len(st.Services) != 2 || len(unhealthy(st.Services)) != 0 {
		t.Fatalf("after v1: %+v", st)
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "v1", "config", "crm.yaml")); err != nil || string(raw) != "title: Acme\n" {
		t.Errorf("extra file: %q, %v", raw, err)
	}
	started := startTimes(t, r)

	// An agent restart re-reads the same target: nothing is restarted.
	r2 := newReconciler(t, e, dir, project, rec)
	if err := r2.Apply(ctx, v1); err != nil {
		t.Fatal(err)
	}
	if got := startTimes(t, r2); !equalTimes(got, started) {
		t.Errorf("re-applying v1 restarted containers: %v, was %v", got, started)
	}

	// A version that never turns healthy is rolled back to v1.
	v2 := v1
	v2.Version, v2.Compose = 2, composeFor(img, true)
	if err := r2.Apply(ctx, v2); err == nil {
		t.Fatal("Apply of an unhealthy v2 succeeded")
	}
	st = r2.Status(ctx)
	if st.AppliedVersion != 1 || st.FailedVersion != 2 || len(unhealthy(st.Services)) != 0 {
		t.Errorf("after the failed v2: %+v, want v1 running and healthy, v2 failed", st)
	}
	if got := strings.Join(rec.got(), ","); got != "stack.applied,stack.failed,stack.rolled_back" {
		t.Errorf("events = %s", got)
	}
	// The failed version is not tried again.
	if err := r2.Apply(ctx, v2); err != nil {
		t.Errorf("re-applying the failed v2: %v, want it left alone", err)
	}
	if len(rec.got()) != 3 {
		t.Errorf("the failed version was retried: %v", rec.got())
	}

	if out, err := exec.Command("docker", "inspect", "-f", "{{.State.Running}}", foreign).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "true" {
		t.Errorf("the foreign container was touched: %s %v", out, err)
	}

	// A killed container is reported, and comes back by its restart policy.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watched := &recorder{}
	watcher := newReconciler(t, e, dir, project, watched)
	go func() { _ = watcher.WatchContainers(ctx) }()
	before := startTimes(t, r2)["crm"]
	proctest.Until(t, "the event stream to open", func() bool {
		// docker events only reports what happens after it started: poke
		// until the watcher sees something.
		return eventsStreamUp(t, project)
	})
	// Kill the process itself, as a crash would: docker kill counts as an
	// operator's stop, which a restart policy respects.
	// Found by label: compose v1 and v2 name containers differently.
	id, err := exec.Command("docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+project,
		"--filter", "label=com.docker.compose.service=crm").Output()
	if err != nil || len(strings.Fields(string(id))) != 1 {
		t.Fatalf("finding crm's container: %q %v", id, err)
	}
	pid, err := exec.Command("docker", "inspect", "-f", "{{.State.Pid}}", strings.TrimSpace(string(id))).Output()
	if err != nil {
		t.Fatalf("docker inspect: %v", err)
	}
	if out, err := exec.Command("kill", "-KILL", strings.TrimSpace(string(pid))).CombinedOutput(); err != nil {
		t.Fatalf("kill: %v\n%s", err, out)
	}
	proctest.Until(t, "crm to die and come back", func() bool {
		got := strings.Join(watched.got(), ",")
		return strings.Contains(got, EventDied) && strings.Contains(got, EventRestarted)
	})
	proctest.Until(t, "crm running again", func() bool {
		after, ok := startTimes(t, r2)["crm"]
		return ok && after.After(before)
	})
}

// eventsStreamUp reports whether a docker events stream for project is open
// (the watcher's command shows in the process list).
func eventsStreamUp(t *testing.T, project string) bool {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", "docker events .*"+project).Output()
	return len(strings.TrimSpace(string(out))) > 0
}

func equalTimes(a, b map[string]time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !b[k].Equal(v) {
			return false
		}
	}
	return true
}

func TestInvalidComposeIsReported(t *testing.T) {
	e := requireEngine(t)
	rec := &recorder{}
	r := newReconciler(t, e, t.TempDir(), "i-test-"+randomSuffix(), rec)
	err := r.Apply(context.Background(), protocol.Target{V: 1, Version: 1, Compose: "services:\n  web:\n    image: [not, a, string]\n"})
	if err == nil {
		t.Fatal("an invalid compose file applied")
	}
	st := r.Status(context.Background())
	if st.FailedVersion != 1 || st.AppliedVersion != 0 || !strings.Contains(st.FailedReason, "compose up") {
		t.Errorf("status = %+v, want version 1 failed with compose's reason", st)
	}
	if p := Problems(st); len(p) != 1 || !strings.Contains(p[0], "stack version 1 failed") {
		t.Errorf("Problems = %v, want the failure reported", p)
	}
	if got := rec.got(); len(got) != 1 || got[0] != EventFailed {
		t.Errorf("events = %v, want one stack.failed", got)
	}
}

func TestDetectWithoutDocker(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := Detect(context.Background(), ""); !errors.Is(err, ErrNoDocker) {
		t.Errorf("Detect with no docker on PATH = %v, want ErrNoDocker", err)
	}
}

// With the engine but no docker-compose on PATH, the compose v2 plugin is
// used where it is installed, and otherwise the error says compose is missing.
func TestDetectWithoutComposeBinary(t *testing.T) {
	requireEngine(t)
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(docker, filepath.Join(dir, "docker")); err != nil {
		t.Fatal(err)
	}
	plugin := exec.Command(docker, "compose", "version").Run() == nil
	t.Setenv("PATH", dir)
	e, err := Detect(context.Background(), "")
	switch {
	case plugin && (err != nil || e.ComposeTool() != "docker compose"):
		t.Errorf("Detect = %v, %v; want the compose plugin", e, err)
	case !plugin && !errors.Is(err, ErrNoCompose):
		t.Errorf("Detect = %v; want ErrNoCompose", err)
	}
}

func TestComposeSlots(t *testing.T) {
	dir := t.TempDir()
	release, err := takeSlot(context.Background(), dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := takeSlot(ctx, dir, 1); err == nil {
		t.Fatal("took a slot that another holder has")
	}
	got := make(chan error, 1)
	go func() {
		r, err := takeSlot(context.Background(), dir, 1)
		if err == nil {
			r()
		}
		got <- err
	}()
	release()
	if err := <-got; err != nil {
		t.Fatalf("the slot was not freed: %v", err)
	}
	if two, err := takeSlot(context.Background(), dir, 2); err != nil {
		t.Fatal(err)
	} else {
		two()
	}
}
