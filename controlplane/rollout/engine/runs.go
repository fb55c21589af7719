package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stackpro/stackpro/controlplane/audit"
	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"
)

// resolveTimeout bounds one command.result question after a restart.
const resolveTimeout = 10 * time.Second

// resolve asks the agent of every target sent before a restart, and not
// answered, what became of its nonce: an outcome is recorded, a command
// still running is waited for, and a nonce the agent never saw is sent
// again (the same nonce, so it cannot run twice).
func (e *Engine) resolve(ctx context.Context, a *active, ids []string) {
	e.mu.Lock()
	run := a.run
	e.mu.Unlock()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			e.resolveOne(ctx, a, run, id)
		})
	}
	wg.Wait()
}

func (e *Engine) resolveOne(ctx context.Context, a *active, run rollout.Run, id string) {
	args, _ := json.Marshal(protocol.ResultArgs{Nonce: e.nonce(run.ID, id)})
	// Agents reconnect after the control plane's restart: give them the
	// run's timeout to come back.
	var m *nats.Msg
	var err error
	for giveUp := time.Now().Add(time.Duration(run.Spec.Timeout)); ; {
		now := time.Now().UTC()
		var data []byte
		data, err = e.o.Sealer.Seal(protocol.CommandRequest{V: protocol.Version, ID: run.ID, Name: protocol.CommandResult,
			Args: args, Target: id, Nonce: protocol.NewNonce(), IssuedAt: now, Expires: now.Add(resolveTimeout), Run: run.ID})
		if err != nil {
			e.finish(a, id, rollout.TargetFailed, "control plane could not ask for the outcome: "+err.Error(), "", nil)
			return
		}
		qctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		m, err = broker.Ask(qctx, e.o.Conn, id, data)
		cancel()
		if !errors.Is(err, broker.ErrNoAgent) || time.Now().After(giveUp) {
			break
		}
		select {
		case <-time.After(retryEvery):
		case <-ctx.Done():
			return
		}
	}
	switch {
	case errors.Is(err, broker.ErrNoAgent):
		e.finish(a, id, rollout.TargetUndeliverable, "agent not connected when the run resumed; whether it ran is unknown", "", nil)
		return
	case err != nil:
		e.finish(a, id, rollout.TargetTimedOut, "no answer about the outcome after a control plane restart", "", nil)
		return
	}
	var r protocol.CommandReply
	var res protocol.ResultReply
	if err := json.Unmarshal(m.Data, &r); err != nil || !r.OK || json.Unmarshal(r.Result, &res) != nil {
		e.finish(a, id, rollout.TargetFailed, "the agent could not say what became of the command: "+r.Error, string(r.Refused), nil)
		return
	}
	switch {
	case res.Reply != nil:
		e.outcome(a, id, *res.Reply)
	case res.Known:
		// Still running: its outcome comes to the same inbox.
		e.mu.Lock()
		if t := a.targets[id]; t != nil && !t.State.Final() {
			a.count(t.State, rollout.TargetRunning)
			t.State = rollout.TargetRunning
			a.inflight[id] = time.Now().Add(time.Duration(run.Spec.Timeout))
			a.dirty[id] = struct{}{}
		}
		e.mu.Unlock()
	default:
		e.mu.Lock()
		if t := a.targets[id]; t != nil && !t.State.Final() {
			a.count(t.State, rollout.TargetPending)
			t.State, t.SentAt = rollout.TargetPending, time.Time{}
			a.resend = append(a.resend, id)
			a.dirty[id] = struct{}{}
		}
		e.mu.Unlock()
	}
}

// Get returns run id with its live counts.
func (e *Engine) Get(id string) (rollout.Run, error) {
	e.mu.Lock()
	if a, ok := e.active[id]; ok {
		run := a.run
		run.Counts = maps.Clone(a.run.Counts)
		e.mu.Unlock()
		return run, nil
	}
	e.mu.Unlock()
	run, err := e.o.Store.Run(id)
	return run, storeErr(id, err)
}

// List returns every run, newest first, with live counts.
func (e *Engine) List() ([]rollout.Run, error) {
	runs, err := e.o.Store.Runs()
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, run := range runs {
		if a, ok := e.active[run.ID]; ok {
			runs[i] = a.run
			runs[i].Counts = maps.Clone(a.run.Counts)
		}
	}
	return runs, nil
}

// Targets returns run id's targets, ordered by instance id.
func (e *Engine) Targets(id string) ([]rollout.Target, error) {
	e.mu.Lock()
	if a, ok := e.active[id]; ok {
		out := make([]rollout.Target, len(a.order))
		for i, inst := range a.order {
			out[i] = *a.targets[inst]
		}
		e.mu.Unlock()
		return out, nil
	}
	e.mu.Unlock()
	targets, err := e.o.Store.RunTargets(id)
	return targets, storeErr(id, err)
}

// Cancel stops run id from sending to more targets; those in flight
// still report. The run ends cancelled once they have.
func (e *Engine) Cancel(id, by string) (rollout.Run, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a, ok := e.active[id]
	if !ok || a.run.Done() {
		if _, err := e.o.Store.Run(id); err != nil {
			return rollout.Run{}, storeErr(id, err)
		}
		return rollout.Run{}, fmt.Errorf("rollout: %s: %w", id, ErrFinished)
	}
	if !a.stopping || !isCancel(a.run.Reason) {
		a.stopping = true
		a.run.Reason = "cancelled by " + by
		now := time.Now().UTC()
		// Targets waiting for their agent to connect were never taken:
		// they are not sent again.
		for id := range a.retry {
			t := a.targets[id]
			a.count(t.State, rollout.TargetSkipped)
			e.counters.target(a.run.Spec.Command, rollout.TargetSkipped)
			t.State, t.Error = rollout.TargetSkipped, "cancelled while waiting for its agent to connect"
			delete(a.retry, id)
			delete(a.inflight, id)
			a.dirty[id] = struct{}{}
		}
		a.audit = append(a.audit, audit.Record{Time: now, Event: "run.cancelled", Actor: by,
			Detail: fmt.Sprintf("run %s cancelled with %d in flight", id, len(a.inflight))})
		e.settle(a, now)
		select {
		case a.kick <- struct{}{}:
		default:
		}
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
	run := a.run
	run.Counts = maps.Clone(a.run.Counts)
	return run, nil
}

func isCancel(reason string) bool { return strings.HasPrefix(reason, "cancelled") }

func storeErr(id string, err error) error {
	if errors.Is(err, fault.ErrNotFound) {
		return fmt.Errorf("rollout: %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	return nil
}
