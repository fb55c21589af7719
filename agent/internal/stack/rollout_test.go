package stack

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/internal/dockertest"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// lineWatch is a log that closes seen once a line holding want is written.
type lineWatch struct {
	want string
	seen chan struct{}
	once sync.Once
}

func (w *lineWatch) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

// holdSlots takes every compose slot of dir, so that no compose command
// of an engine with these slots runs until release is called.
func holdSlots(t *testing.T, dir string) (release func()) {
	t.Helper()
	n := 2 * runtime.NumCPU() // what Engine.Compose takes its slot among
	var held []func()
	for range n {
		r, err := takeSlot(context.Background(), dir, n)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, r)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			for _, r := range held {
				r()
			}
		})
	}
	t.Cleanup(release)
	return release
}

// TestCommandDuringRollout: a stack command that comes while a target is
// being applied is neither refused nor run alongside the rollout: it waits
// for the rollout to end, then acts on the version the rollout left
// running. The rollout is held at its compose up by taking every compose
// slot, and the command is sent once the rollout has written its files.
func TestCommandDuringRollout(t *testing.T) {
	dockertest.Require(t)
	img := dockertest.DemoImage(t)
	slots := t.TempDir()
	e, err := Detect(context.Background(), slots)
	if err != nil {
		t.Fatalf("Detect: %v", err)
	}
	project, dir := "i-test-"+randomSuffix(), t.TempDir()
	t.Cleanup(func() {
		_, _ = e.Compose(context.Background(), project, filepath.Join(dir, "v1"), "down", "--remove-orphans", "--timeout", "1")
	})
	release := holdSlots(t, slots)
	waits := &lineWatch{want: "waits for the rollout", seen: make(chan struct{})}
	r, err := New(Options{Engine: e, Dir: dir, Project: project, HealthTimeout: 20 * time.Second,
		Emit: (&recorder{}).emit, Log: slog.New(slog.NewTextHandler(waits, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	applied := make(chan error, 1)
	go func() {
		applied <- r.Apply(ctx, protocol.Target{V: 1, InstanceID: project, Version: 1, Compose: composeFor(img, false)})
	}()
	proctest.Until(t, "the rollout of version 1 to write its files", func() bool {
		_, err := os.Stat(filepath.Join(dir, "v1"))
		return err == nil
	})
	stopped := make(chan error, 1)
	go func() { stopped <- r.Stop(ctx) }()
	select {
	case <-waits.seen:
	case err := <-stopped:
		t.Fatalf("Stop during the rollout returned at once (%v): want it to wait for the rollout", err)
	case <-time.After(proctest.Timeout):
		t.Fatal("Stop during the rollout neither returned nor waited")
	}
	release()
	if err := <-applied; err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop after the rollout it waited for: %v", err)
	}
	st := r.Status(ctx)
	if st.AppliedVersion != 1 || len(st.Services) != 2 {
		t.Fatalf("after the rollout and the stop: %+v, want version 1 with its two services", st)
	}
	for _, s := range st.Services {
		if s.State != "exited" {
			t.Errorf("service %s is %s, want exited: the stop came after the rollout", s.Service, s.State)
		}
	}
}
