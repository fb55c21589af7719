// Package engine runs fleet commands (their vocabulary is package rollout). A run resolves a selection to its
// targets, sends each one a signed request of the agents' catalog with rate
// control (at most so many in flight; no new target once the error budget
// is spent), follows each target's acknowledgement, outcome or timeout, and
// keeps the run, every target and the audit trail in the store.
//
// A run survives a restart of the control plane without sending anything
// twice. Targets are sent in instance id order, and the run records how
// many were sent before it sends them; each target's nonce is derived from
// the run and the instance, so the agent refuses a second copy. On resume,
// the targets sent but not answered are asked what became of their nonce
// (command.result) instead of being sent again, and the unsent rest go out
// as before.
package engine

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stackpro/stackpro/controlplane/audit"
	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Store keeps runs, their targets and the audit log.
type Store interface {
	CreateRun(run rollout.Run, targets []rollout.Target, audit audit.Record) error
	UpdateRun(run rollout.Run, targets []rollout.Target, audit []audit.Record) error
	Run(id string) (rollout.Run, error)
	Runs() ([]rollout.Run, error)
	RunTargets(id string) ([]rollout.Target, error)
}

// Fleet lists the instances a selection picks from, with their status.
type Fleet interface {
	List(now time.Time) []fleet.Instance
}

// Sealer signs a request for its target (the broker, with the command key).
type Sealer interface {
	Seal(req protocol.CommandRequest) ([]byte, error)
}

// Errors callers test for (fault errors: their messages are written for
// a client).
var (
	// ErrInvalid is a RunSpec refused; its problems say why.
	ErrInvalid = fault.New(fault.Invalid, "invalid run")
	// ErrNotFound is a run that does not exist.
	ErrNotFound = fault.New(fault.NotFound, "run not found")
	// ErrFinished is a run that cannot be cancelled any more.
	ErrFinished = fault.New(fault.Conflict, "run already finished")
)

// Options configures an Engine.
type Options struct {
	Store  Store
	Fleet  Fleet
	Conn   *nats.Conn
	Sealer Sealer
	// CommandKey is the key commands are signed with: each target's nonce
	// is derived from it, so it is the same across restarts and secret.
	CommandKey ed25519.PrivateKey
	// FlushEvery is how often target changes are written (default 100 ms).
	FlushEvery time.Duration
	Log        *slog.Logger
}

// Engine runs command runs. New, then Run until ctx ends; Start, Get,
// List, Targets and Cancel are safe to call at any time after New.
type Engine struct {
	o   Options
	log *slog.Logger
	// nonceKey makes each target's nonce (see nonce).
	nonceKey []byte

	mu     sync.Mutex
	active map[string]*active
	// ready is closed once Run has subscribed and resumed.
	ready chan struct{}
	// wake tells the writer a run wants its progress written now.
	wake     chan struct{}
	counters counters
	// ctx is Run's: dispatchers end with it, and Run waits for them.
	ctx         context.Context
	dispatchers sync.WaitGroup
}

// active is a run in progress, in memory. Guarded by Engine.mu.
type active struct {
	run     rollout.Run
	targets map[string]*rollout.Target
	// order is every target in send order; run.Sent of them were sent.
	order []string
	// resend holds targets whose nonce the agent never saw after a
	// restart: they go out again (same nonce) before order[run.Sent:].
	resend []string
	// inflight maps each sent target without an outcome to its deadline.
	inflight map[string]time.Time
	// retry maps each in-flight target no agent took to its next try.
	retry    map[string]time.Time
	dirty    map[string]struct{}
	audit    []audit.Record
	stopping bool
	// kick wakes the run's dispatcher.
	kick chan struct{}
}

// New returns an engine; Run starts it.
func New(o Options) *Engine {
	if o.FlushEvery == 0 {
		o.FlushEvery = 100 * time.Millisecond
	}
	return &Engine{o: o, log: o.Log.With("component", "rollout"), counters: newCounters(), nonceKey: nonceKey(o.CommandKey),
		active: map[string]*active{}, ready: make(chan struct{}), wake: make(chan struct{}, 1)}
}

// Run answers replies, resumes unfinished runs, writes progress and times
// out silent targets until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	sub, err := e.o.Conn.Subscribe(protocol.ReplyWildcard(replyToken), e.reply)
	if err != nil {
		return fmt.Errorf("rollout: subscribing to replies: %w", err)
	}
	defer sub.Unsubscribe()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	runs, err := e.o.Store.Runs()
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	defer e.dispatchers.Wait()
	for _, run := range runs {
		if run.Done() {
			continue
		}
		a, unanswered, err := e.load(run)
		if err != nil {
			return err
		}
		e.log.Info("resuming run", "run", run.ID, "sent", run.Sent, "total", run.Total, "unanswered", len(unanswered))
		e.dispatchers.Go(func() {
			e.resolve(ctx, a, unanswered)
			e.dispatch(ctx, a)
		})
	}
	e.ctx = ctx
	close(e.ready)
	tick := time.NewTicker(e.o.FlushEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			e.dispatchers.Wait()
			e.flush()
			return nil
		case <-e.wake:
		case now := <-tick.C:
			e.expire(now)
		}
		e.flush()
	}
}

// load rebuilds an unfinished run from the store. Targets sent but
// without an outcome are returned: only their agents know what happened.
func (e *Engine) load(run rollout.Run) (*active, []string, error) {
	stored, err := e.o.Store.RunTargets(run.ID)
	if err != nil {
		return nil, nil, fmt.Errorf("rollout: resuming %s: %w", run.ID, err)
	}
	a := newActive(run, stored)
	var unanswered []string
	for _, id := range a.order[:run.Sent] {
		// Sent, as Sent says, even when still pending here: its delivery
		// had not been written yet.
		if !a.targets[id].State.Final() {
			unanswered = append(unanswered, id)
		}
	}
	e.mu.Lock()
	e.active[run.ID] = a
	e.mu.Unlock()
	return a, unanswered, nil
}

// newActive holds run and its targets in memory. Counts are counted from
// the targets: after a crash, a run's record may be ahead of its targets'.
func newActive(run rollout.Run, targets []rollout.Target) *active {
	a := &active{run: run, targets: make(map[string]*rollout.Target, len(targets)), inflight: map[string]time.Time{},
		retry: map[string]time.Time{}, dirty: map[string]struct{}{}, kick: make(chan struct{}, 1)}
	a.run.Counts = map[rollout.TargetState]int{}
	for i := range targets {
		t := &targets[i]
		a.targets[t.Instance] = t
		a.order = append(a.order, t.Instance)
		a.run.Counts[t.State]++
	}
	slices.Sort(a.order)
	return a
}

// Start resolves spec's selection, writes the run and starts sending.
func (e *Engine) Start(ctx context.Context, spec rollout.RunSpec, by string) (rollout.Run, error) {
	if err := spec.Validate(); err != nil {
		return rollout.Run{}, ErrInvalid.With(err)
	}
	if !slices.Contains(protocol.OperatorCommands, spec.Command) {
		return rollout.Run{}, ErrInvalid.With(fmt.Errorf("command %q is not one of %s", spec.Command,
			strings.Join(protocol.OperatorCommands, ", ")))
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return rollout.Run{}, ctx.Err()
	}
	now := time.Now().UTC()
	var targets []rollout.Target
	for _, inst := range e.o.Fleet.List(now) {
		if spec.Select.Match(inst, inst.Status) {
			targets = append(targets, rollout.Target{Instance: inst.ID, State: rollout.TargetPending})
		}
	}
	if len(targets) == 0 {
		return rollout.Run{}, ErrInvalid.With(fmt.Errorf("the selection %s matches no instance", spec.Select))
	}
	run := rollout.Run{ID: newRunID(now), Spec: spec, CreatedBy: by, CreatedAt: now, State: rollout.RunRunning,
		Total: len(targets), Counts: map[rollout.TargetState]int{rollout.TargetPending: len(targets)}}
	run.Concurrency = spec.MaxConcurrency.Of(run.Total)
	if run.Concurrency <= 0 || run.Concurrency > run.Total {
		run.Concurrency = run.Total
	}
	run.ErrorBudget = spec.MaxErrors.Of(run.Total)
	audit := audit.Record{Time: now, Event: "run.started", Actor: by, Detail: fmt.Sprintf(
		"run %s: %s %s on %s: %d targets, max concurrency %s, max errors %s, timeout %s", run.ID, spec.Command,
		string(spec.Args), spec.Select, run.Total, spec.MaxConcurrency, spec.MaxErrors, time.Duration(spec.Timeout))}
	if err := e.o.Store.CreateRun(run, targets, audit); err != nil {
		return rollout.Run{}, fmt.Errorf("rollout: %w", err)
	}
	a := newActive(run, targets)
	e.mu.Lock()
	e.active[run.ID] = a
	e.mu.Unlock()
	e.log.Info("run started", "run", run.ID, "command", spec.Command, "select", spec.Select.String(), "targets", run.Total, "by", by)
	e.dispatchers.Go(func() { e.dispatch(e.ctx, a) })
	return run, nil
}

// newRunID is "r-", the creation time in milliseconds (12 hex digits, so
// ids sort by creation) and 6 random hex digits.
func newRunID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("r-%012x%s", now.UnixMilli(), hex.EncodeToString(b))
}

// nonceKey derives the key run nonces are made with from the command key.
func nonceKey(key ed25519.PrivateKey) []byte {
	sum := sha256.Sum256(append([]byte("stackpro run nonces\x00"), key.Seed()...))
	return sum[:]
}

// nonce is target id's nonce in run: the same every time it is asked, so
// that a request sent twice is refused by the agent the second time.
func (e *Engine) nonce(run, id string) string {
	mac := hmac.New(sha256.New, e.nonceKey)
	mac.Write([]byte(run + "/" + id))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:16])
}

// dispatch sends a's targets as slots free up until none is left to send.
// Each batch is counted in run.Sent and written before it goes out.
func (e *Engine) dispatch(ctx context.Context, a *active) {
	for ctx.Err() == nil {
		e.mu.Lock()
		if a.run.Done() {
			e.mu.Unlock()
			return
		}
		var batch []string
		free := a.run.Concurrency - len(a.inflight)
		for ; free > 0 && !a.stopping && len(a.resend) > 0; free-- {
			batch = append(batch, a.resend[0])
			a.resend = a.resend[1:]
		}
		fresh := 0
		for ; free > 0 && !a.stopping && a.run.Sent+fresh < len(a.order); free-- {
			batch = append(batch, a.order[a.run.Sent+fresh])
			fresh++
		}
		now := time.Now().UTC()
		deadline := now.Add(time.Duration(a.run.Spec.Timeout))
		for _, id := range batch {
			t := a.targets[id]
			t.State, t.Nonce, t.SentAt = rollout.TargetDelivered, e.nonce(a.run.ID, id), now
			a.inflight[id] = deadline
			a.count(rollout.TargetPending, rollout.TargetDelivered)
			a.dirty[id] = struct{}{}
		}
		a.run.Sent += fresh
		run := a.run
		run.Counts = maps.Clone(a.run.Counts)
		e.mu.Unlock()
		if len(batch) == 0 {
			e.mu.Lock()
			e.settle(a, now)
			e.mu.Unlock()
			select {
			case <-a.kick:
				continue
			case <-ctx.Done():
				return
			}
		}
		if fresh > 0 {
			// Written before anything is sent: after a restart, every target
			// past Sent was certainly never sent.
			if err := e.o.Store.UpdateRun(run, nil, nil); err != nil {
				e.log.Error("recording sent targets; the run waits", "run", run.ID, "err", err)
				e.unsend(a, batch, fresh)
				select {
				case <-time.After(time.Second):
					continue
				case <-ctx.Done():
					return
				}
			}
		}
		e.send(a, run, batch, now)
	}
}

// unsend puts back a batch that could not be recorded.
func (e *Engine) unsend(a *active, batch []string, fresh int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a.run.Sent -= fresh
	a.resend = append(batch[:len(batch)-fresh:len(batch)-fresh], a.resend...)
	for _, id := range batch {
		t := a.targets[id]
		t.State, t.SentAt = rollout.TargetPending, time.Time{}
		delete(a.inflight, id)
		a.count(rollout.TargetDelivered, rollout.TargetPending)
	}
}

// send seals and publishes batch, spread over a few goroutines: signing
// is most of the cost of a large fan-out.
func (e *Engine) send(a *active, run rollout.Run, batch []string, now time.Time) {
	const workers = 4
	var wg sync.WaitGroup
	for w := range min(workers, len(batch)) {
		wg.Go(func() {
			for i := w; i < len(batch); i += workers {
				id := batch[i]
				req := protocol.CommandRequest{V: protocol.Version, ID: run.ID, Name: run.Spec.Command, Args: run.Spec.Args,
					Target: id, Nonce: e.nonce(run.ID, id), IssuedAt: now, Expires: now.Add(time.Duration(run.Spec.Timeout)),
					Run: run.ID, Ack: true}
				data, err := e.o.Sealer.Seal(req)
				if err == nil {
					err = e.o.Conn.PublishMsg(&nats.Msg{Subject: protocol.CommandSubject(id), Reply: protocol.ReplySubject(id, replyToken+"."+run.ID), Data: data})
				}
				if err != nil {
					e.finish(a, id, rollout.TargetFailed, "control plane could not send: "+err.Error(), "", nil)
				}
			}
		})
	}
	wg.Wait()
}

// reply takes an agent's acknowledgement or outcome, or the server's word
// that nobody took the request.
// replyToken begins the token of every run's reply subjects: targets
// answer run r on protocol.ReplySubject(id, replyToken+"."+r).
const replyToken = "run"

// reply takes one answer of a target. The subject says which instance
// sent it: an agent can publish under its own subjects only.
func (e *Engine) reply(m *nats.Msg) {
	id, ok := protocol.InstanceFromSubject(m.Subject)
	if !ok {
		return
	}
	runID, ok := strings.CutPrefix(m.Subject, protocol.ReplySubject(id, replyToken)+".")
	if !ok {
		return
	}
	e.mu.Lock()
	a := e.active[runID]
	e.mu.Unlock()
	if a == nil {
		return
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		e.noAgent(a, id)
		return
	}
	var r protocol.CommandReply
	if err := json.Unmarshal(m.Data, &r); err != nil || r.InstanceID != id {
		e.finish(a, id, rollout.TargetFailed, "malformed reply from the agent", "", nil)
		return
	}
	e.outcome(a, id, r)
}

// retryEvery is how often a target whose agent is not connected is sent
// again, until its timeout makes it undeliverable: an agent reconnecting
// (after its own blip, or the control plane's restart) still gets it.
const retryEvery = time.Second

// noAgent takes the server's word that no agent took target id's request.
func (e *Engine) noAgent(a *active, id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := a.targets[id]
	if t == nil || t.State != rollout.TargetDelivered || a.run.Done() {
		return
	}
	a.count(t.State, rollout.TargetPending)
	t.State, t.Error = rollout.TargetPending, "waiting for its agent to connect"
	a.retry[id] = time.Now().Add(retryEvery)
	a.dirty[id] = struct{}{}
}

// outcome applies an agent's reply for target id.
func (e *Engine) outcome(a *active, id string, r protocol.CommandReply) {
	switch {
	case r.State == protocol.StateRunning:
		e.mu.Lock()
		defer e.mu.Unlock()
		if t := a.targets[id]; t != nil && t.State == rollout.TargetDelivered {
			t.State = rollout.TargetRunning
			a.count(rollout.TargetDelivered, rollout.TargetRunning)
			a.dirty[id] = struct{}{}
		}
	case r.OK:
		e.finish(a, id, rollout.TargetSucceeded, "", "", r.Result)
	default:
		e.finish(a, id, rollout.TargetFailed, r.Error, string(r.Refused), r.Result)
	}
}

// maxResult bounds the result kept per target.
const maxResult = 16 << 10

// finish records target id's outcome, once, and decides what the run does next.
func (e *Engine) finish(a *active, id string, state rollout.TargetState, msg, refused string, result json.RawMessage) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := a.targets[id]
	if t == nil || t.State.Final() || a.run.Done() {
		return
	}
	if len(result) > maxResult {
		result, _ = json.Marshal(map[string]any{"truncated": true, "bytes": len(result)})
	}
	now := time.Now().UTC()
	a.count(t.State, state)
	e.counters.target(a.run.Spec.Command, state)
	t.State, t.Error, t.Refused, t.Result, t.FinishedAt = state, msg, refused, result, now
	delete(a.inflight, id)
	delete(a.retry, id)
	a.dirty[id] = struct{}{}
	detail := fmt.Sprintf("run %s: %s on %s: %s", a.run.ID, a.run.Spec.Command, id, state)
	if refused != "" {
		detail += " (refused: " + refused + ")"
	}
	if msg != "" {
		detail += ": " + msg
	}
	event := "run.target"
	if refused != "" {
		event = "command.refused"
	}
	a.audit = append(a.audit, audit.Record{Time: now, Event: event, Actor: a.run.CreatedBy, Detail: detail})
	if !a.stopping && a.run.Errors() > a.run.ErrorBudget {
		a.stopping = true
		a.run.Reason = fmt.Sprintf("error budget spent: %d errors, %d allowed", a.run.Errors(), a.run.ErrorBudget)
		e.log.Warn("run stopped", "run", a.run.ID, "reason", a.run.Reason)
	}
	e.settle(a, now)
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// settle ends a once nothing is in flight and nothing more will be sent.
// Called with e.mu held.
func (e *Engine) settle(a *active, now time.Time) {
	if a.run.Done() || len(a.inflight) > 0 || len(a.resend) > 0 || !a.stopping && a.run.Sent < len(a.order) {
		return
	}
	a.run.State = rollout.RunCompleted
	if a.stopping {
		a.run.State = rollout.RunStopped
		if isCancel(a.run.Reason) {
			a.run.State = rollout.RunCancelled
		}
	}
	for _, id := range a.order {
		if t := a.targets[id]; t.State == rollout.TargetPending {
			t.State = rollout.TargetSkipped
			a.count(rollout.TargetPending, rollout.TargetSkipped)
			e.counters.target(a.run.Spec.Command, rollout.TargetSkipped)
			a.dirty[id] = struct{}{}
		}
	}
	a.run.FinishedAt = now
	e.counters.run(a.run.State)
	a.audit = append(a.audit, audit.Record{Time: now, Event: "run.finished", Actor: a.run.CreatedBy,
		Detail: fmt.Sprintf("run %s: %s %s; %s", a.run.ID, a.run.State, a.run.Reason, countsText(a.run.Counts))})
	e.log.Info("run finished", "run", a.run.ID, "state", a.run.State, "counts", countsText(a.run.Counts))
	select {
	case e.wake <- struct{}{}:
	default:
	}
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func countsText(c map[rollout.TargetState]int) string {
	var parts []string
	for _, s := range rollout.TargetStates {
		if c[s] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, c[s]))
		}
	}
	return strings.Join(parts, ", ")
}

// count moves one target from state from to state to in the run's counts.
func (a *active) count(from, to rollout.TargetState) {
	a.run.Counts[from]--
	if a.run.Counts[from] == 0 {
		delete(a.run.Counts, from)
	}
	a.run.Counts[to]++
}

// expire ends every target past its deadline: undeliverable when no agent
// ever took it, else timed out. It sends again the targets due a retry.
func (e *Engine) expire(now time.Time) {
	type late struct {
		a     *active
		id    string
		state rollout.TargetState
		msg   string
	}
	var ended []late
	type retry struct {
		run rollout.Run
		ids []string
	}
	retries := map[*active]*retry{}
	e.mu.Lock()
	for _, a := range e.active {
		timeout := time.Duration(a.run.Spec.Timeout).String()
		for id, deadline := range a.inflight {
			next, waiting := a.retry[id]
			switch {
			case now.After(deadline) && waiting:
				ended = append(ended, late{a, id, rollout.TargetUndeliverable, "no agent connected within " + timeout})
			case now.After(deadline):
				ended = append(ended, late{a, id, rollout.TargetTimedOut, "no answer within " + timeout})
			case waiting && now.After(next):
				t := a.targets[id]
				a.count(t.State, rollout.TargetDelivered)
				t.State = rollout.TargetDelivered
				delete(a.retry, id)
				if retries[a] == nil {
					retries[a] = &retry{run: a.run}
				}
				retries[a].ids = append(retries[a].ids, id)
			}
		}
	}
	e.mu.Unlock()
	for a, r := range retries {
		e.send(a, r.run, r.ids, now)
	}
	for _, l := range ended {
		e.finish(l.a, l.id, l.state, l.msg, "", nil)
	}
}

// flush writes every run's changes since the last flush, and forgets
// runs that are done and written.
func (e *Engine) flush() {
	type write struct {
		run     rollout.Run
		targets []rollout.Target
		audit   []audit.Record
		a       *active
	}
	var writes []write
	e.mu.Lock()
	for _, a := range e.active {
		if len(a.dirty) == 0 && len(a.audit) == 0 && !a.run.Done() {
			continue
		}
		w := write{run: a.run, audit: a.audit, a: a}
		w.run.Counts = maps.Clone(a.run.Counts)
		for id := range a.dirty {
			w.targets = append(w.targets, *a.targets[id])
		}
		a.dirty, a.audit = map[string]struct{}{}, nil
		writes = append(writes, w)
	}
	e.mu.Unlock()
	for _, w := range writes {
		if err := e.o.Store.UpdateRun(w.run, w.targets, w.audit); err != nil {
			e.log.Error("writing run progress; will retry", "run", w.run.ID, "err", err)
			e.mu.Lock()
			for _, t := range w.targets {
				if _, ok := w.a.dirty[t.Instance]; !ok {
					w.a.dirty[t.Instance] = struct{}{}
				}
			}
			w.a.audit = append(w.audit, w.a.audit...)
			e.mu.Unlock()
			continue
		}
		if w.run.Done() {
			e.mu.Lock()
			if len(w.a.dirty) == 0 && len(w.a.audit) == 0 {
				delete(e.active, w.run.ID)
			}
			e.mu.Unlock()
		}
	}
}
