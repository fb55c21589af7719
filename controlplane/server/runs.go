package server

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	dashboardapi "github.com/stackpro/stackpro/dashboard-api"
	"github.com/stackpro/stackpro/shared/protocol"
)

// nonceKey derives the key run nonces are made with from the command key:
// secret, and the same after a restart.
func nonceKey(key ed25519.PrivateKey) []byte {
	sum := sha256.Sum256(append([]byte("stackpro run nonces\x00"), key.Seed()...))
	return sum[:]
}

// runsAPI is the rollout engine as dashboard-api wants it.
type runsAPI struct{ e *rollout.Engine }

func (r runsAPI) StartRun(ctx context.Context, spec fleet.RunSpec, by string) (fleet.Run, error) {
	run, err := r.e.Start(ctx, spec, by)
	return run, runErr(err)
}

func (r runsAPI) Run(_ context.Context, id string) (fleet.Run, error) {
	run, err := r.e.Get(id)
	return run, runErr(err)
}

func (r runsAPI) Runs(context.Context) ([]fleet.Run, error) { return r.e.List() }

func (r runsAPI) RunTargets(_ context.Context, id string) ([]fleet.Target, error) {
	targets, err := r.e.Targets(id)
	return targets, runErr(err)
}

func (r runsAPI) CancelRun(_ context.Context, id, by string) (fleet.Run, error) {
	run, err := r.e.Cancel(id, by)
	return run, runErr(err)
}

// runErr maps the engine's sentinels to the API's.
func runErr(err error) error {
	switch {
	case errors.Is(err, rollout.ErrInvalid):
		return fmt.Errorf("%w: %w", dashboardapi.ErrInvalid, err)
	case errors.Is(err, rollout.ErrNotFound):
		return fmt.Errorf("%w: %w", dashboardapi.ErrNotFound, err)
	case errors.Is(err, rollout.ErrFinished):
		return fmt.Errorf("%w: %w", dashboardapi.ErrConflict, err)
	}
	return err
}

// tagsAPI sets an instance's tags, which dashboard-api has validated, in
// the store and the tracker.
type tagsAPI struct {
	st      *store.Store
	tracker *fleet.Tracker
}

func (t tagsAPI) SetTags(_ context.Context, id string, tags map[string]string) (fleet.Instance, error) {
	if _, err := t.tracker.Get(id, time.Now()); errors.Is(err, fleet.ErrNotFound) {
		return fleet.Instance{}, fmt.Errorf("%w: %w", dashboardapi.ErrNotFound, err)
	}
	if err := t.st.SetTags(id, maps.Clone(tags)); err != nil {
		return fleet.Instance{}, err
	}
	t.tracker.Update(id, func(i *fleet.Instance) { i.Tags = maps.Clone(tags) })
	return t.tracker.Get(id, time.Now())
}

// auditRefusal writes what an agent refused (a command.refused or
// target.refused event) to the audit log.
func auditRefusal(st *store.Store, ev protocol.Event) error {
	var detail string
	switch {
	case ev.Type == protocol.EventTargetRefused:
		detail = fmt.Sprintf("%s refused its target (version %s): %s", ev.InstanceID, cmp.Or(ev.Data["version"], "none"), ev.Message)
	case ev.Data["suppressed"] != "":
		detail = fmt.Sprintf("%s refused %s more commands (not reported one by one): %s", ev.InstanceID, ev.Data["suppressed"], ev.Message)
	default:
		detail = fmt.Sprintf("%s refused %s (nonce %s, run %s): %s: %s", ev.InstanceID, ev.Data["command"],
			ev.Data["nonce"], ev.Data["run"], ev.Data["reason"], ev.Message)
	}
	return st.AppendAudit(store.AuditRecord{Time: ev.At, Event: ev.Type, Actor: ev.InstanceID, Detail: detail})
}
