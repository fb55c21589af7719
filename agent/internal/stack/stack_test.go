package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// requireEngine returns the Docker engine, or skips when there is none —
// except in CI (CI=true), where a missing engine fails the test.
func requireEngine(t *testing.T) *Engine {
	t.Helper()
	e, err := Detect(context.Background())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and the Docker tests cannot run: %v", err)
		}
		t.Skipf("no Docker engine here: %v", err)
	}
	return e
}

var (
	imageOnce sync.Once
	image     string
	imageErr  error
)

// demoImage builds the stand-in service FROM scratch (no registry is
// reachable) once per test binary and returns its tag.
func demoImage(t *testing.T) string {
	t.Helper()
	imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "stackpro-demo-image-")
		if err != nil {
			imageErr = err
			return
		}
		defer os.RemoveAll(dir)
		build := exec.Command("go", "build", "-o", filepath.Join(dir, "demo"), "./deploy/stacks/demo")
		build.Dir, build.Env = filepath.Join("..", "..", ".."), append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			imageErr = err
			t.Logf("%s", out)
			return
		}
		dockerfile := "FROM scratch\nCOPY demo /demo\nENTRYPOINT [\"/demo\"]\n"
		if imageErr = os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o600); imageErr != nil {
			return
		}
		image = "stackpro-test-demo:" + randomSuffix()
		if out, err := exec.Command("docker", "build", "-q", "-t", image, dir).CombinedOutput(); err != nil {
			imageErr = err
			t.Logf("%s", out)
		}
	})
	if imageErr != nil {
		t.Fatalf("building the demo image: %v", imageErr)
	}
	return image
}

func TestMain(m *testing.M) {
	code := m.Run()
	if image != "" {
		_ = exec.Command("docker", "rmi", "-f", image).Run()
	}
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
	img := demoImage(t)
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
	if st := r.Status(context.Background()); st.FailedVersion != 1 || st.AppliedVersion != 0 {
		t.Errorf("status = %+v, want version 1 failed", st)
	}
	if got := rec.got(); len(got) != 1 || got[0] != EventFailed {
		t.Errorf("events = %v, want one stack.failed", got)
	}
}
