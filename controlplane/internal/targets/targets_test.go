package targets_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/controlplane/internal/targets"
	"github.com/stackpro/stackpro/shared/protocol"
)

func open(t *testing.T) *targets.Store {
	t.Helper()
	s, _ := openWithBucket(t)
	return s
}

// openWithBucket is open, with the bucket itself for writing around the store.
func openWithBucket(t *testing.T) (*targets.Store, jetstream.KeyValue) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats: not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: protocol.TargetsBucket, History: 10})
	if err != nil {
		t.Fatal(err)
	}
	s, err := targets.Open(ctx, js, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, kv
}

// A key that holds something other than its instance's target is never
// read as one, and the next target written goes above every version the
// key can have held, so its agent takes it.
func TestForgedValuesAreNotTargets(t *testing.T) {
	for _, forged := range []string{
		`{"stream":"STACKPRO_EVENTS","seq":7}`,
		`{"v":4,"instance_id":"i-bbbb","version":99}`,
		`{"v":4,"instance_id":"i-aaaa"}`,
		`not json`,
	} {
		t.Run(forged, func(t *testing.T) {
			s, kv := openWithBucket(t)
			ctx := context.Background()
			for range 3 {
				if _, err := s.Set(ctx, "i-aaaa", targets.Spec{Compose: compose}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := kv.Put(ctx, "i-aaaa", []byte(forged)); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Get(ctx, "i-aaaa"); !errors.Is(err, targets.ErrCorrupt) {
				t.Errorf("Get = %+v, %v, want ErrCorrupt", got, err)
			}
			next, err := s.Set(ctx, "i-aaaa", targets.Spec{Compose: compose})
			if err != nil {
				t.Fatal(err)
			}
			if next.Version <= 3 {
				t.Errorf("the target written over the forged value has version %d, want above 3", next.Version)
			}
			if got, err := s.Get(ctx, "i-aaaa"); err != nil || got.Version != next.Version {
				t.Errorf("Get = %+v, %v, want version %d", got, err, next.Version)
			}
		})
	}
}

const compose = "services:\n  web:\n    image: stackpro/web:1\n"

func TestSetAndGet(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	if _, err := s.Get(ctx, "i-aaaa"); !errors.Is(err, targets.ErrNotFound) {
		t.Fatalf("Get before Set: %v, want ErrNotFound", err)
	}
	for want := uint64(1); want <= 3; want++ {
		got, err := s.Set(ctx, "i-aaaa", targets.Spec{Compose: compose, Env: map[string]string{"N": "1"}})
		if err != nil {
			t.Fatal(err)
		}
		if got.Version != want || got.InstanceID != "i-aaaa" || got.V != protocol.Version {
			t.Errorf("Set #%d = %+v, want version %d", want, got, want)
		}
	}
	got, err := s.Get(ctx, "i-aaaa")
	if err != nil || got.Version != 3 || got.Env["N"] != "1" {
		t.Errorf("Get = %+v, %v", got, err)
	}
	if err := s.Delete(ctx, "i-aaaa"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "i-aaaa"); !errors.Is(err, targets.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
}

// Concurrent writers never hand out the same version twice.
func TestConcurrentSetsGetDistinctVersions(t *testing.T) {
	s := open(t)
	var (
		mu       sync.Mutex
		versions []uint64
		wg       sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			got, err := s.Set(context.Background(), "i-aaaa", targets.Spec{Compose: compose})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			versions = append(versions, got.Version)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(versions)
	if want := []uint64{1, 2, 3, 4, 5, 6, 7, 8}; !slices.Equal(versions, want) {
		t.Errorf("versions = %v, want %v", versions, want)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		spec targets.Spec
		want []string // each must appear in the error; none means valid
	}{
		{"valid", targets.Spec{Compose: compose, Env: map[string]string{"SUBDOMAIN": "acme"},
			Files: map[string]string{"config/app.yaml": "a: 1\n"}}, nil},
		{"empty", targets.Spec{}, []string{"compose is required"}},
		{"not YAML", targets.Spec{Compose: "services: [oops"}, []string{"not valid YAML"}},
		{"no services", targets.Spec{Compose: "volumes: {}\n"}, []string{"no services"}},
		{"too big", targets.Spec{Compose: compose + "#" + strings.Repeat("x", 300<<10)}, []string{"limit"}},
		{"every problem at once", targets.Spec{Compose: compose,
			Env:   map[string]string{"1BAD": "x", "MULTI": "a\nb"},
			Files: map[string]string{"../escape": "", "/etc/passwd": "", "a/../b": "", ".env": "", "compose.yaml": ""}},
			[]string{`"1BAD"`, "MULTI", `"../escape"`, `"/etc/passwd"`, `"a/../b"`, `".env"`, `"compose.yaml"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, targets.ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %s:\n%v", w, err)
				}
			}
		})
	}
}

func TestSetRefusesInvalid(t *testing.T) {
	s := open(t)
	if _, err := s.Set(context.Background(), "i-aaaa", targets.Spec{}); !errors.Is(err, targets.ErrInvalid) {
		t.Fatalf("Set of an empty spec: %v, want ErrInvalid", err)
	}
	if _, err := s.Get(context.Background(), "i-aaaa"); !errors.Is(err, targets.ErrNotFound) {
		t.Errorf("an invalid spec was written: %v", err)
	}
}
