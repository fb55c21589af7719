package link

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
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
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	key := protocol.FormatCommandKey(pub)
	tests := []struct {
		name    string
		token   string
		reply   protocol.EnrollReply
		refused bool
		failed  bool // an error that is not a refusal
		hasKey  bool
	}{
		{"accepted", "tok", protocol.EnrollReply{V: 3, OK: true, CommandKey: key}, false, false, true},
		{"accepted without a command key", "tok", protocol.EnrollReply{V: 2, OK: true}, false, false, false},
		{"accepted with a malformed command key", "tok", protocol.EnrollReply{V: 3, OK: true, CommandKey: key[:20]}, false, true, false},
		{"refused token", "tok", protocol.EnrollReply{V: 1, Code: protocol.EnrollRefused, Error: "enrollment refused"}, true, true, false},
		{"bad request", "tok", protocol.EnrollReply{V: 1, Code: protocol.EnrollBadRequest, Error: "invalid token"}, true, true, false},
		{"no token in the config", "", protocol.EnrollReply{V: 1, OK: true}, true, true, false},
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
			if tt.refused != errors.Is(err, ErrRefused) || tt.failed != (err != nil) {
				t.Fatalf("Enroll = %v, want refused=%v failed=%v", err, tt.refused, tt.failed)
			}
			if Enrolled(dir) == tt.failed {
				t.Errorf("Enrolled = %v after %s", Enrolled(dir), tt.name)
			}
			got, err := LoadCommandKey(dir)
			switch {
			case tt.hasKey && (err != nil || !got.Equal(pub)):
				t.Errorf("LoadCommandKey = %v, %v; want the enrollment reply's key", got, err)
			case !tt.hasKey && !errors.Is(err, fs.ErrNotExist):
				t.Errorf("LoadCommandKey = %v, %v; want fs.ErrNotExist", got, err)
			}
			if tt.hasKey {
				info, err := os.Stat(filepath.Join(dir, commandKeyFile))
				if err != nil || info.Mode().Perm() != 0o600 {
					t.Errorf("command key file: %v, %v; want mode 0600", info, err)
				}
			}
		})
	}
}

// A command key the config pins wins: an enrollment reply that hands over
// another one is refused at once, and nothing of it is kept.
func TestEnrollPinnedCommandKey(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pinned, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		reply    string // the reply's command key
		mismatch bool
		kept     bool // the reply's key is kept in the state dir
	}{
		{"the reply hands over the pinned key", protocol.FormatCommandKey(pinned), false, true},
		{"the reply hands over no key", "", false, false},
		{"the reply hands over another key", protocol.FormatCommandKey(other), true, false},
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
			url := enrollServer(t, protocol.EnrollReply{V: protocol.Version, OK: true, CommandKey: tt.reply})
			err = Enroll(ctx, Options{URL: url, InstanceID: "i-aaaa", StateDir: dir, Token: "tok",
				CommandKey: protocol.FormatCommandKey(pinned), Log: log}, id)
			if tt.mismatch != errors.Is(err, ErrKeyMismatch) || tt.mismatch != (err != nil) {
				t.Fatalf("Enroll = %v, want mismatch=%v", err, tt.mismatch)
			}
			if Enrolled(dir) == tt.mismatch {
				t.Errorf("Enrolled = %v after %s", Enrolled(dir), tt.name)
			}
			got, err := LoadCommandKey(dir)
			switch {
			case tt.kept && (err != nil || !got.Equal(pinned)):
				t.Errorf("LoadCommandKey = %v, %v; want the pinned key", got, err)
			case !tt.kept && !errors.Is(err, fs.ErrNotExist):
				t.Errorf("LoadCommandKey = %v, %v; want fs.ErrNotExist", got, err)
			}
		})
	}
}

func TestLoadCommandKeyCorrupt(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, commandKeyFile), []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if key, err := LoadCommandKey(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadCommandKey of a corrupt file = %v, %v; want an error that is not fs.ErrNotExist", key, err)
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
