// Package link is the agent's connection to the control plane: its NKey
// identity kept in the state directory, enrollment with a one-time token
// (which also hands over the key the control plane signs commands with),
// and a NATS connection that reconnects forever with backoff and jitter.
package link

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/renameio/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Files in the state directory.
const (
	seedFile     = "agent.nk"
	enrolledFile = "enrolled"
	// commandKeyFile holds the control plane's command key as the
	// enrollment reply gave it (base64) and a newline.
	commandKeyFile = "command.pub"
)

// ErrRefused means the control plane refused the enrollment for good;
// retrying with the same token cannot help.
var ErrRefused = errors.New("link: enrollment refused")

// ErrKeyMismatch means the enrollment reply handed over a command key other
// than the one the config pins: a man in the middle, or a bootstrap meant
// for another control plane. The agent does not enroll.
var ErrKeyMismatch = errors.New("link: the enrollment reply's command key is not the pinned one")

// Identity is the agent's NKey, kept in the state directory.
type Identity struct {
	kp     nkeys.KeyPair
	public string
}

// PublicKey is the identity's public key, the agent's NATS user.
func (id *Identity) PublicKey() string { return id.public }

// LoadIdentity reads the seed from dir, or creates one (mode 0600) on first
// start. The key is made before enrolling, so an agent that crashes after
// the control plane accepted its key enrolls again with the same key.
func LoadIdentity(dir string) (*Identity, error) {
	path := filepath.Join(dir, seedFile)
	seed, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, fmt.Errorf("link: creating key: %w", err)
		}
		if seed, err = kp.Seed(); err != nil {
			return nil, fmt.Errorf("link: creating key: %w", err)
		}
		if err := renameio.WriteFile(path, seed, 0o600); err != nil {
			return nil, fmt.Errorf("link: writing %s: %w", path, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("link: reading %s: %w", path, err)
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("link: %s holds no valid seed: %w", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("link: %s: %w", path, err)
	}
	return &Identity{kp: kp, public: pub}, nil
}

// Enrolled reports whether the agent of state dir has enrolled.
func Enrolled(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, enrolledFile))
	return err == nil
}

// Options configures enrollment and the connection.
type Options struct {
	URL          string
	InstanceID   string
	StateDir     string
	Token        string
	AgentVersion string
	// CommandKey, when set, is the command key the config pins (base64):
	// an enrollment reply that hands over another one is refused with
	// ErrKeyMismatch.
	CommandKey string
	Log        *slog.Logger
}

// Enroll trades the one-time token for the right of id to connect, retrying
// with backoff while the control plane cannot be reached. It returns
// ErrRefused when the control plane says no, and ErrKeyMismatch when its
// command key is not the pinned one.
func Enroll(ctx context.Context, o Options, id *Identity) error {
	if o.Token == "" {
		return fmt.Errorf("%w: no enrollment token in the config", ErrRefused)
	}
	hostname, _ := os.Hostname()
	req, err := json.Marshal(protocol.EnrollRequest{V: protocol.Version, InstanceID: o.InstanceID, Token: o.Token,
		PublicKey: id.public, Hostname: hostname, AgentVersion: o.AgentVersion})
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		reply, err := enrollOnce(ctx, o.URL, req)
		switch {
		case err == nil && reply.OK:
			// The key is kept before the enrollment is: an agent that
			// stops in between enrolls again and is handed it again.
			if err := keepCommandKey(o, reply.CommandKey); err != nil {
				return err
			}
			if err := renameio.WriteFile(filepath.Join(o.StateDir, enrolledFile), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
				return fmt.Errorf("link: %w", err)
			}
			o.Log.Info("enrolled", "key", id.public)
			return nil
		case err == nil && reply.Code != protocol.EnrollInternal:
			return fmt.Errorf("%w: %s (%s)", ErrRefused, reply.Error, reply.Code)
		case err == nil:
			err = errors.New(reply.Error)
		}
		delay := Backoff(attempt)
		o.Log.Warn("enrollment failed, retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// keepCommandKey checks the command key of an enrollment reply against the
// one o pins and keeps it in the state dir. An empty key leaves the agent
// with the pinned one, if any.
func keepCommandKey(o Options, key string) error {
	if key == "" {
		if o.CommandKey == "" {
			o.Log.Error("the control plane sent no command key; every command will be refused")
		}
		return nil
	}
	got, err := protocol.ParseCommandKey(key)
	if err != nil {
		return fmt.Errorf("link: enrollment reply: %w", err)
	}
	if o.CommandKey != "" {
		pinned, err := protocol.ParseCommandKey(o.CommandKey)
		if err != nil {
			return fmt.Errorf("link: pinned command key: %w", err)
		}
		if !got.Equal(pinned) {
			return fmt.Errorf("%w: handed %s, pinned %s", ErrKeyMismatch, key, o.CommandKey)
		}
	}
	path := filepath.Join(o.StateDir, commandKeyFile)
	if err := renameio.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return fmt.Errorf("link: writing %s: %w", path, err)
	}
	return nil
}

// LoadCommandKey returns the control plane's command key kept in dir at
// enrollment. Without one the error wraps fs.ErrNotExist.
func LoadCommandKey(dir string) (ed25519.PublicKey, error) {
	path := filepath.Join(dir, commandKeyFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("link: reading the command key: %w", err)
	}
	key, err := protocol.ParseCommandKey(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("link: %s: %w", path, err)
	}
	return key, nil
}

func enrollOnce(ctx context.Context, url string, req []byte) (protocol.EnrollReply, error) {
	var reply protocol.EnrollReply
	nc, err := nats.Connect(url, nats.UserInfo(protocol.EnrollUser, ""), nats.Name("stackpro-agent-enroll"),
		nats.CustomInboxPrefix(protocol.EnrollInboxPrefix), nats.Timeout(10*time.Second))
	if err != nil {
		return reply, fmt.Errorf("link: connecting to %s: %w", url, err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, protocol.EnrollSubject, req)
	if err != nil {
		return reply, fmt.Errorf("link: enrollment request: %w", err)
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return reply, fmt.Errorf("link: malformed enrollment reply: %w", err)
	}
	return reply, nil
}

// Backoff is the wait before retry number attempt: exponential from 250 ms
// to 30 s, with jitter over its upper half so that a fleet cut off at once
// does not come back at once.
func Backoff(attempt int) time.Duration {
	d := 30 * time.Second
	if attempt < 7 {
		d = 250 * time.Millisecond << attempt
	}
	return d/2 + rand.N(d/2+1)
}

// Handlers are told of the connection's life.
type Handlers struct {
	// Reconnected runs after the link came back.
	Reconnected func(down time.Duration)
}

// Connect opens the agent's connection with its identity. It returns at
// once even when the server cannot be reached, and keeps trying forever.
// Publishing while disconnected fails instead of buffering: what must
// survive an outage goes through the outbox.
func Connect(o Options, id *Identity, h Handlers) (*nats.Conn, error) {
	var downSince time.Time
	nc, err := nats.Connect(o.URL,
		nats.Name(o.InstanceID),
		nats.Nkey(id.public, id.kp.Sign),
		nats.CustomInboxPrefix(protocol.InboxPrefix(o.InstanceID)),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// The broker refuses agents while the control plane starts or
		// stops; that must not end the link for good.
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(Backoff),
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			downSince = time.Now()
			o.Log.Warn("link down", "err", err)
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			down := time.Since(downSince)
			o.Log.Info("link restored", "down", down.Round(time.Millisecond))
			if h.Reconnected != nil {
				h.Reconnected(down)
			}
		}),
		nats.ConnectHandler(func(*nats.Conn) { o.Log.Info("link up", "url", o.URL) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			o.Log.Error("link error", "err", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("link: connecting to %s: %w", o.URL, err)
	}
	return nc, nil
}
