// Package targets keeps the stack each instance should run — its target —
// in the JetStream key-value bucket the agents watch, one key per instance.
// Every new target of an instance gets the next version.
package targets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Errors callers test for (ErrNotFound and ErrInvalid are fault errors:
// their messages are written for a client).
var (
	ErrNotFound = fault.New(fault.NotFound, "instance has no target yet")
	ErrInvalid  = fault.New(fault.Invalid, "invalid target")
	// ErrCorrupt: the bucket holds, under an instance's key, something
	// other than a target of that instance.
	ErrCorrupt = errors.New("targets: the key holds no target of its instance")
)

// Limits on what a target may hold; a target travels in one NATS message.
const (
	maxCompose = 256 << 10
	maxTotal   = 768 << 10
)

// Spec is what an operator or a plan's template says should run.
type Spec struct {
	Compose string            `json:"compose"`
	Env     map[string]string `json:"env,omitempty"`
	Files   map[string]string `json:"files,omitempty"`
}

// reserved are the file names the agent writes itself.
var reserved = map[string]bool{"compose.yaml": true, ".env": true}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate reports every problem with s at once.
func (s Spec) Validate() error {
	var errs []error
	var compose struct {
		Services map[string]any `yaml:"services"`
	}
	switch {
	case strings.TrimSpace(s.Compose) == "":
		errs = append(errs, errors.New("compose is required"))
	case len(s.Compose) > maxCompose:
		errs = append(errs, fmt.Errorf("compose is %d bytes, the limit is %d", len(s.Compose), maxCompose))
	default:
		if err := yaml.Unmarshal([]byte(s.Compose), &compose); err != nil {
			errs = append(errs, fmt.Errorf("compose is not valid YAML: %w", err))
		} else if len(compose.Services) == 0 {
			errs = append(errs, errors.New("compose defines no services"))
		}
	}
	for k, v := range s.Env {
		if !envName.MatchString(k) {
			errs = append(errs, fmt.Errorf("env name %q is not a valid variable name", k))
		}
		if strings.ContainsAny(v, "\n\r") {
			errs = append(errs, fmt.Errorf("env %s: value spans lines", k))
		}
	}
	total := len(s.Compose)
	for path, content := range s.Files {
		total += len(path) + len(content)
		if !filepath.IsLocal(path) || filepath.Clean(path) != path {
			errs = append(errs, fmt.Errorf("file %q: want a clean relative path inside the stack directory", path))
		} else if reserved[path] {
			errs = append(errs, fmt.Errorf("file %q: the agent writes that file itself", path))
		}
	}
	if total > maxTotal {
		errs = append(errs, fmt.Errorf("target is %d bytes, the limit is %d", total, maxTotal))
	}
	if len(errs) > 0 {
		return ErrInvalid.With(errs...)
	}
	return nil
}

// Store reads and writes targets.
type Store struct {
	kv  jetstream.KeyValue
	log *slog.Logger
}

// Open binds to the targets bucket, which the broker creates.
func Open(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*Store, error) {
	kv, err := js.KeyValue(ctx, protocol.TargetsBucket)
	if err != nil {
		return nil, fmt.Errorf("targets: %w", err)
	}
	return &Store{kv: kv, log: log.With("component", "targets")}, nil
}

// Get returns instance id's current target, ErrNotFound, or an error
// wrapping ErrCorrupt when the key holds something else.
func (s *Store) Get(ctx context.Context, instanceID string) (protocol.Target, error) {
	t, _, err := s.get(ctx, instanceID)
	return t, err
}

func (s *Store) get(ctx context.Context, instanceID string) (protocol.Target, uint64, error) {
	entry, err := s.kv.Get(ctx, instanceID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return protocol.Target{}, 0, ErrNotFound
	}
	if err != nil {
		return protocol.Target{}, 0, fmt.Errorf("targets: reading %s: %w", instanceID, err)
	}
	t, err := decode(instanceID, entry.Value())
	return t, entry.Revision(), err
}

// decode reads the value of instance id's key. Only the control plane
// writes there, so a value that is not a target of id with a version is a
// fault or an attack (a JetStream acknowledgement aimed at the key, say),
// and is never taken for a target.
func decode(id string, value []byte) (protocol.Target, error) {
	var t protocol.Target
	if err := json.Unmarshal(value, &t); err != nil {
		return protocol.Target{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, id, err)
	}
	if t.InstanceID != id || t.Version == 0 {
		return protocol.Target{}, fmt.Errorf("%w: %s holds instance %q, version %d", ErrCorrupt, id, t.InstanceID, t.Version)
	}
	return t, nil
}

// Set makes spec the target of instance id with the next version. Two
// concurrent writers never get the same version: the write is conditional
// on the revision read, and retried when another writer came first. A
// key that holds no target is written over, with a version above any it
// can have held.
func (s *Store) Set(ctx context.Context, instanceID string, spec Spec) (protocol.Target, error) {
	if err := spec.Validate(); err != nil {
		return protocol.Target{}, err
	}
	for attempt := 0; ; attempt++ {
		cur, rev, err := s.get(ctx, instanceID)
		next := cur.Version + 1
		switch {
		case errors.Is(err, ErrCorrupt):
			// The revision counts every write to the bucket, so it is
			// above every version this key was ever given: the one its
			// agent runs included.
			next = rev + 1
			s.log.Error("a target key holds no target; writing over it", "instance", instanceID, "revision", rev, "err", err)
		case err != nil && !errors.Is(err, ErrNotFound):
			return protocol.Target{}, err
		}
		t := protocol.Target{V: protocol.Version, InstanceID: instanceID, Version: next,
			Compose: spec.Compose, Env: spec.Env, Files: spec.Files}
		data, err := json.Marshal(t)
		if err != nil {
			return protocol.Target{}, err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, instanceID, data)
		} else {
			_, err = s.kv.Update(ctx, instanceID, data, rev)
		}
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) || attempt >= 10 {
			return protocol.Target{}, fmt.Errorf("targets: writing %s: %w", instanceID, err)
		}
	}
}

// Delete removes instance id's target, when the instance is terminated.
func (s *Store) Delete(ctx context.Context, instanceID string) error {
	if err := s.kv.Purge(ctx, instanceID); err != nil {
		return fmt.Errorf("targets: deleting %s: %w", instanceID, err)
	}
	return nil
}
