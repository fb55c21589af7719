package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Files the agent writes for every target version, in <dir>/v<version>/.
const (
	composeFile = "compose.yaml"
	envFile     = ".env"
	stateFile   = "state.json"
)

// Event types the reconciler reports.
const (
	EventApplied    = "stack.applied"
	EventFailed     = "stack.failed"
	EventRolledBack = "stack.rolled_back"
	EventDied       = "stack.container_died"
	EventRestarted  = "stack.container_restarted"
	EventUnhealthy  = "stack.service_unhealthy"
)

// Options configures a Reconciler.
type Options struct {
	Engine *Engine
	// Dir keeps one directory per target version and the reconciler's state.
	Dir string
	// Project is the compose project name: the instance id.
	Project string
	// HealthTimeout is how long a new version has to turn healthy.
	HealthTimeout time.Duration
	// Emit reports an event.
	Emit func(typ string, sev protocol.Severity, msg string, data map[string]string)
	Log  *slog.Logger
}

// state survives agent restarts, so a restart neither re-applies a good
// version (which would touch running containers) nor retries a failed one.
type state struct {
	Applied  uint64 `json:"applied"`
	LastGood uint64 `json:"last_good"`
	Failed   uint64 `json:"failed"`
	// Why is why Failed failed.
	Why string `json:"why,omitempty"`
}

// Reconciler converges the stack to its target, one target at a time.
type Reconciler struct {
	o Options
	// apply serializes rollouts and commands; mu guards st, so a status
	// read never waits for a rollout.
	apply sync.Mutex
	mu    sync.Mutex
	st    state
	// changed wakes a rollout waiting for health when the engine reports
	// a container event.
	changed chan struct{}
	// seen caches the engine's view for Status: the heartbeat asks for it
	// every few seconds, the engine's events and our own actions expire it.
	seen struct {
		sync.Mutex
		services []protocol.ServiceState
		err      error
		at       time.Time
	}
}

// statusTTL is how long Status may answer from its cache.
const statusTTL = 5 * time.Second

// New loads the reconciler's state from o.Dir.
func New(o Options) (*Reconciler, error) {
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	r := &Reconciler{o: o, changed: make(chan struct{}, 1)}
	raw, err := os.ReadFile(filepath.Join(o.Dir, stateFile))
	if err == nil {
		err = json.Unmarshal(raw, &r.st)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("stack: reading state: %w", err)
	}
	return r, nil
}

// save makes st the reconciler's state, on disk first.
func (r *Reconciler) save(st state) error {
	raw, _ := json.Marshal(st)
	if err := renameio.WriteFile(filepath.Join(r.o.Dir, stateFile), raw, 0o600); err != nil {
		return fmt.Errorf("stack: saving state: %w", err)
	}
	r.mu.Lock()
	r.st = st
	r.mu.Unlock()
	return nil
}

func (r *Reconciler) versionDir(v uint64) string {
	return filepath.Join(r.o.Dir, "v"+strconv.FormatUint(v, 10))
}

// Apply converges to t. A version already applied, older than the applied
// one, or that failed before is left alone: nothing restarts a running
// stack for a target it already runs, and a failed version is not retried
// in a loop. A new version that does not turn healthy within the timeout is
// rolled back to the last good one.
func (r *Reconciler) Apply(ctx context.Context, t protocol.Target) error {
	r.apply.Lock()
	defer r.apply.Unlock()
	defer r.expire()
	st := r.state()
	if t.Version <= st.Applied || t.Version == st.Failed {
		return nil
	}
	v := strconv.FormatUint(t.Version, 10)
	dir := r.versionDir(t.Version)
	err := writeTarget(dir, t)
	if err == nil {
		err = r.up(ctx, dir)
	}
	if err == nil {
		err = r.waitHealthy(ctx)
	}
	if err == nil {
		st.Applied, st.LastGood = t.Version, t.Version
		r.o.Emit(EventApplied, protocol.SeverityInfo, "stack version "+v+" applied and healthy", map[string]string{"version": v})
		r.prune(st.Applied)
		return r.save(st)
	}
	if ctx.Err() != nil {
		return ctx.Err() // the agent is stopping: try again on the next start
	}
	st.Failed, st.Why = t.Version, err.Error()
	r.o.Emit(EventFailed, protocol.SeverityError, "stack version "+v+" failed: "+err.Error(),
		map[string]string{"version": v, "error": err.Error()})
	if st.LastGood > 0 {
		good := strconv.FormatUint(st.LastGood, 10)
		rerr := r.up(ctx, r.versionDir(st.LastGood))
		if rerr == nil {
			rerr = r.waitHealthy(ctx)
		}
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("rolling back to version %s: %w", good, rerr))
		} else {
			st.Applied = st.LastGood
			r.o.Emit(EventRolledBack, protocol.SeverityWarning, "stack rolled back from version "+v+" to "+good,
				map[string]string{"from": v, "to": good})
		}
	}
	return errors.Join(err, r.save(st))
}

// Seen is the newest target version the reconciler has taken, whether it
// runs now or failed; 0 before any.
func (r *Reconciler) Seen() uint64 {
	st := r.state()
	return max(st.Applied, st.Failed)
}

// state is a copy of the reconciler's state.
func (r *Reconciler) state() state {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// upAttempts is how many times compose up runs before a version fails. Up
// is idempotent, and a busy engine times compose out now and then (compose
// v1 gives up on an API call after 60 s).
const upAttempts = 3

func (r *Reconciler) up(ctx context.Context, dir string) error {
	for attempt := 1; ; attempt++ {
		out, err := r.o.Engine.Compose(ctx, r.o.Project, dir, "up", "-d", "--remove-orphans")
		if err == nil {
			return nil
		}
		err = fmt.Errorf("compose up: %s", reason(out, err))
		if attempt == upAttempts {
			return err
		}
		r.o.Log.Warn("compose up failed; trying again", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 2 * time.Second):
		}
	}
}

// Polls of the engine while a rollout waits for health start at
// healthPoll and back off to healthPollMax; a container event wakes the
// wait at once. Many stacks share an engine on the local provider, and
// every poll is two docker calls.
const (
	healthPoll    = time.Second
	healthPollMax = 5 * time.Second
)

// waitHealthy polls the engine until every service runs and every
// healthcheck passes. It gives up when the timeout ends, or at once when
// the engine has given up on a service (its healthcheck ran out of retries,
// or it exited and will not be restarted).
func (r *Reconciler) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.HealthTimeout)
	defer cancel()
	for delay := healthPoll; ; delay = min(2*delay, healthPollMax) {
		services, err := r.o.Engine.Services(ctx, r.o.Project)
		bad := unhealthy(services)
		if err == nil && len(services) > 0 && len(bad) == 0 {
			return nil
		}
		for _, s := range services {
			if s.Health == "unhealthy" || s.State == "dead" {
				return fmt.Errorf("%s is %s", s.Service, strings.TrimSpace(s.State+" "+s.Health))
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return err
			}
			return fmt.Errorf("not healthy after %s: %s", r.o.HealthTimeout, strings.Join(bad, ", "))
		case <-r.changed:
		case <-time.After(delay):
		}
	}
}

// Problems lists what an operator should know about st, for the heartbeat.
func Problems(st protocol.StackStatus) []string {
	var out []string
	if st.Error != "" {
		out = append(out, "stack: "+st.Error)
	}
	if st.FailedVersion > st.AppliedVersion {
		out = append(out, fmt.Sprintf("stack version %d failed: %s", st.FailedVersion, st.FailedReason))
	}
	for _, s := range unhealthy(st.Services) {
		out = append(out, "service "+s)
	}
	return out
}

// unhealthy lists the services that are not running, or failing their healthcheck.
func unhealthy(services []protocol.ServiceState) []string {
	var bad []string
	for _, s := range services {
		if s.State != "running" || (s.Health != "" && s.Health != "healthy") {
			bad = append(bad, s.Service+" "+strings.TrimSpace(s.State+" "+s.Health))
		}
	}
	return bad
}

// prune removes version directories other than the applied one.
func (r *Reconciler) prune(applied uint64) {
	dirs, _ := filepath.Glob(filepath.Join(r.o.Dir, "v*"))
	for _, d := range dirs {
		if d != r.versionDir(applied) {
			if err := os.RemoveAll(d); err != nil {
				r.o.Log.Warn("pruning old stack version", "dir", d, "err", err)
			}
		}
	}
}

// Status is the stack as it is now, or at most statusTTL ago when nothing
// happened since. It never waits for a rollout.
func (r *Reconciler) Status(ctx context.Context) protocol.StackStatus {
	cur := r.state()
	st := protocol.StackStatus{AppliedVersion: cur.Applied, FailedVersion: cur.Failed, FailedReason: cur.Why,
		ComposeTool: r.o.Engine.ComposeTool()}
	r.seen.Lock()
	defer r.seen.Unlock()
	if time.Since(r.seen.at) >= statusTTL {
		r.seen.services, r.seen.err = r.o.Engine.Services(ctx, r.o.Project)
		r.seen.at = time.Now()
	}
	if r.seen.err != nil {
		st.Error = r.seen.err.Error()
	}
	st.Services = slices.Clone(r.seen.services)
	return st
}

// expire makes the next Status ask the engine again.
func (r *Reconciler) expire() {
	r.seen.Lock()
	r.seen.at = time.Time{}
	r.seen.Unlock()
}

// writeTarget writes t's files into a fresh directory and moves it into
// place at dir, so compose never reads half a target.
func writeTarget(dir string, t protocol.Target) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".tmp-")
	if err != nil {
		return fmt.Errorf("writing target: %w", err)
	}
	defer os.RemoveAll(tmp)
	var env strings.Builder
	for _, k := range slices.Sorted(maps.Keys(t.Env)) {
		fmt.Fprintf(&env, "%s=%s\n", k, t.Env[k])
	}
	files := map[string]string{composeFile: t.Compose, envFile: env.String()}
	for path, content := range t.Files {
		if _, reserved := files[path]; reserved || !filepath.IsLocal(path) {
			return fmt.Errorf("writing target: refusing file path %q", path)
		}
		files[path] = content
	}
	for path, content := range files {
		full := filepath.Join(tmp, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			return fmt.Errorf("writing target: %w", err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			return fmt.Errorf("writing target: %w", err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("writing target: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("writing target: %w", err)
	}
	return nil
}

// WatchContainers reports every container of the stack that dies, comes
// back, or turns unhealthy, until ctx ends. If the engine's event stream
// breaks (the daemon restarted), it is opened again.
func (r *Reconciler) WatchContainers(ctx context.Context) error {
	died := map[string]bool{}
	for ctx.Err() == nil {
		err := r.o.Engine.Events(ctx, r.o.Project, func(ev Event) {
			r.expire()
			select {
			case r.changed <- struct{}{}:
			default:
			}
			switch {
			case ev.Action == "die":
				died[ev.Service] = true
				r.o.Emit(EventDied, protocol.SeverityWarning, "service "+ev.Service+" exited with code "+ev.ExitCode,
					map[string]string{"service": ev.Service, "exit_code": ev.ExitCode})
			case ev.Action == "start" && died[ev.Service]:
				delete(died, ev.Service)
				r.o.Emit(EventRestarted, protocol.SeverityInfo, "service "+ev.Service+" is running again",
					map[string]string{"service": ev.Service})
			case ev.Action == "health_status: unhealthy":
				r.o.Emit(EventUnhealthy, protocol.SeverityWarning, "service "+ev.Service+" turned unhealthy",
					map[string]string{"service": ev.Service})
			}
		})
		if err != nil {
			r.o.Log.Warn("container events interrupted", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
	return nil
}

// Errors of the stack commands.
var (
	ErrNothingApplied = errors.New("no stack version applied yet")
	ErrBadService     = errors.New("no such service")
)

// MaxLogBytes bounds what Logs returns.
const MaxLogBytes = 64 << 10

// Restart restarts one service of the applied version.
func (r *Reconciler) Restart(ctx context.Context, service string) error {
	return r.command(ctx, service, "restart", service)
}

// Stop stops every service; Start starts them again. Nothing else stops a
// stack: not a lost link, not an agent restart.
func (r *Reconciler) Stop(ctx context.Context) error  { return r.command(ctx, "", "stop") }
func (r *Reconciler) Start(ctx context.Context) error { return r.command(ctx, "", "start") }

// Pull pulls the images of the applied version.
func (r *Reconciler) Pull(ctx context.Context) error { return r.command(ctx, "", "pull") }

// Logs returns the last lines of a service's logs, at most MaxLogBytes
// (the newest are kept).
func (r *Reconciler) Logs(ctx context.Context, service string, lines int) (string, error) {
	lines = min(max(lines, 1), 1000)
	var out []byte
	err := r.locked(ctx, service, func(dir string) error {
		var err error
		out, err = r.o.Engine.Compose(ctx, r.o.Project, dir, "logs", "--no-color", "--tail", strconv.Itoa(lines), service)
		if err != nil {
			return fmt.Errorf("compose logs: %s", reason(out, err))
		}
		return nil
	})
	if len(out) > MaxLogBytes {
		out = out[len(out)-MaxLogBytes:]
	}
	return string(out), err
}

// command runs one compose command on the applied version.
func (r *Reconciler) command(ctx context.Context, service string, args ...string) error {
	return r.locked(ctx, service, func(dir string) error {
		if out, err := r.o.Engine.Compose(ctx, r.o.Project, dir, args...); err != nil {
			return fmt.Errorf("compose %s: %s", args[0], reason(out, err))
		}
		return nil
	})
}

// locked runs fn on the applied version's directory, between rollouts: a
// command that comes during a rollout is not refused, it waits for the
// rollout to end and then acts on the version the rollout left running.
// A service, when named, must be one of the stack's.
func (r *Reconciler) locked(ctx context.Context, service string, fn func(dir string) error) error {
	if !r.apply.TryLock() {
		// Say why a command takes long: a rollout can take minutes.
		r.o.Log.Info("a stack command waits for the rollout in progress to end")
		r.apply.Lock()
	}
	defer r.apply.Unlock()
	defer r.expire()
	applied := r.state().Applied
	if applied == 0 {
		return ErrNothingApplied
	}
	dir := r.versionDir(applied)
	if service != "" {
		out, err := r.o.Engine.Compose(ctx, r.o.Project, dir, "config", "--services")
		if err != nil {
			return fmt.Errorf("compose config: %s", reason(out, err))
		}
		if !slices.Contains(strings.Fields(string(out)), service) {
			return fmt.Errorf("%w %q", ErrBadService, service)
		}
	}
	return fn(dir)
}
