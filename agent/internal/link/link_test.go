package link

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/stackpro/stackpro/shared/protocol"
)

func TestLoadIdentity(t *testing.T) {
	dir := t.TempDir()
	first, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, seedFile))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("seed file mode %v, want 0600", info.Mode().Perm())
	}
	again, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.PublicKey() != first.PublicKey() {
		t.Errorf("second load made a new key: %s, was %s", again.PublicKey(), first.PublicKey())
	}
	if err := os.WriteFile(filepath.Join(dir, seedFile), []byte("not a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(dir); err == nil {
		t.Error("a corrupt seed loaded")
	}
}

func TestBackoff(t *testing.T) {
	for attempt := range 20 {
		max := 30 * time.Second
		if attempt < 7 {
			max = 250 * time.Millisecond << attempt
		}
		for range 50 {
			if d := Backoff(attempt); d < max/2 || d > max {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", attempt, d, max/2, max)
			}
		}
	}
}

// enrollServer runs a real NATS server and answers enrollment requests
// with reply.
func enrollServer(t *testing.T, reply protocol.EnrollReply) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats: not ready")
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if _, err := nc.Subscribe(protocol.EnrollSubject, func(m *nats.Msg) {
		data, _ := json.Marshal(reply)
		_ = m.Respond(data)
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ns.ClientURL()
}

func TestEnroll(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tests := []struct {
		name    string
		token   string
		reply   protocol.EnrollReply
		refused bool
	}{
		{"accepted", "tok", protocol.EnrollReply{V: 1, OK: true}, false},
		{"refused token", "tok", protocol.EnrollReply{V: 1, Code: protocol.EnrollRefused, Error: "enrollment refused"}, true},
		{"bad request", "tok", protocol.EnrollReply{V: 1, Code: protocol.EnrollBadRequest, Error: "invalid token"}, true},
		{"no token in the config", "", protocol.EnrollReply{V: 1, OK: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			id, err := LoadIdentity(dir)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = Enroll(ctx, Options{URL: enrollServer(t, tt.reply), InstanceID: "i-aaaa", StateDir: dir, Token: tt.token, Log: log}, id)
			if tt.refused != errors.Is(err, ErrRefused) || (!tt.refused && err != nil) {
				t.Fatalf("Enroll = %v, want refused=%v", err, tt.refused)
			}
			if Enrolled(dir) == tt.refused {
				t.Errorf("Enrolled = %v after %s", Enrolled(dir), tt.name)
			}
		})
	}
}

// While no control plane answers, Enroll keeps trying until its context ends.
func TestEnrollRetriesUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = Enroll(ctx, Options{URL: "nats://127.0.0.1:1", InstanceID: "i-aaaa", StateDir: dir, Token: "tok",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, id)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Enroll = %v, want the context's error", err)
	}
}
