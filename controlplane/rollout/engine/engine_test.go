package engine_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/fleetsim"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/controlplane/rollout/engine"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// testFleet is a control plane's rollout machinery (a bbolt store, the
// embedded broker with its command key, the tracker) and simulated agents
// that enrolled over real NATS with tokens from that store.
type testFleet struct {
	st      *store.Store
	brk     *broker.Broker
	tracker *fleet.Tracker
	sim     *fleetsim.Sim
	key     ed25519.PrivateKey
	dir     string
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startFleet(t testing.TB, n int, fail float64) *testFleet {
	t.Helper()
	f := &testFleet{dir: t.TempDir()}
	var err error
	if f.st, err = store.Open(filepath.Join(f.dir, "stackpro.db"), time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.st.Close() })
	now := time.Now().UTC()
	insts := make([]fleet.Instance, n)
	creds := make([]fleetsim.Credential, n)
	for i := range n {
		insts[i] = fleet.Instance{ID: fmt.Sprintf("i-sim%05d", i), Provider: "sim", CreatedAt: now, Customer: fmt.Sprintf("cus_%05d", i),
			Plan: "starter", Region: "local", Lifecycle: fleet.LifecycleActive}
	}
	if err := f.st.PutInstances(insts...); err != nil {
		t.Fatal(err)
	}
	for i, inst := range insts {
		tok, err := f.st.MintToken(inst.ID, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		creds[i] = fleetsim.Credential{InstanceID: inst.ID, Token: tok}
	}
	f.tracker = fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Minute, OfflineAfter: time.Hour}, insts)
	if f.key, err = f.st.CommandKey(); err != nil {
		t.Fatal(err)
	}
	f.brk, err = broker.Start(context.Background(), broker.Options{Listen: "127.0.0.1:0", StoreDir: filepath.Join(f.dir, "js"),
		Credentials: map[string]string{}, Tokens: f.st, CommandKey: f.key, Presence: f.tracker, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.brk.Shutdown)
	f.brk.Open()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if f.sim, err = fleetsim.Start(ctx, fleetsim.Options{URL: f.brk.ClientURL(), Agents: creds, Fail: fail, Heartbeat: time.Minute}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.sim.Close)
	return f
}

// engine runs a rollout engine over f until the test ends or stop is called.
func (f *testFleet) engine(t testing.TB, sealer engine.Sealer) (e *engine.Engine, stop func()) {
	t.Helper()
	if sealer == nil {
		sealer = f.brk
	}
	e = engine.New(engine.Options{Store: f.st, Fleet: f.tracker, Conn: f.brk.Conn(), Sealer: sealer,
		CommandKey: f.key, Log: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("engine: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return e, stop
}

func spec(command string, sel fleet.Selection, concurrency, maxErrors string) rollout.RunSpec {
	c, err := rollout.ParseLimit(concurrency)
	if err != nil {
		panic(err)
	}
	m, err := rollout.ParseLimit(maxErrors)
	if err != nil {
		panic(err)
	}
	return rollout.RunSpec{Command: command, Select: sel, MaxConcurrency: c, MaxErrors: m, Timeout: rollout.Duration(5 * time.Second)}
}

// waitDone polls run id until it is final.
func waitDone(t testing.TB, e *engine.Engine, id string) rollout.Run {
	t.Helper()
	var run rollout.Run
	proctest.Within(t, 2*time.Minute, "run "+id+" to be done", func() bool {
		var err error
		if run, err = e.Get(id); err != nil {
			t.Fatal(err)
		}
		return run.Done()
	})
	return run
}

func sum(c map[rollout.TargetState]int) int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// TestErrorBudgetStopsRun: of 1,000 agents 10% fail; with max errors 5%
// the run stops once a 51st target has failed, having sent no more than
// what was in flight then.
func TestErrorBudgetStopsRun(t *testing.T) {
	f := startFleet(t, 1000, 0.10)
	e, _ := f.engine(t, nil)
	run, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{All: true}, "10", "5%"), "ops@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if run.Total != 1000 || run.ErrorBudget != 50 || run.Concurrency != 10 {
		t.Fatalf("run = %+v, want 1000 targets, budget 50, concurrency 10", run)
	}
	run = waitDone(t, e, run.ID)
	if run.State != rollout.RunStopped || !strings.Contains(run.Reason, "error budget") {
		t.Errorf("run ended %s (%q), want stopped by the error budget", run.State, run.Reason)
	}
	if errs := run.Errors(); errs < 51 || errs > 51+run.Concurrency {
		t.Errorf("%d errors, want 51 (the one past the budget) to %d (plus what was in flight)", errs, 51+run.Concurrency)
	}
	if run.Counts[rollout.TargetSkipped] == 0 || sum(run.Counts) != 1000 {
		t.Errorf("counts %v: want skipped targets, and 1000 in all", run.Counts)
	}
	// What the engine reports is what the store holds once written, and
	// the agents saw exactly the targets sent.
	proctest.Within(t, time.Minute, "the finished run to be written", func() bool {
		r, err := f.st.Run(run.ID)
		return err == nil && r.Done()
	})
	stored, err := f.st.RunTargets(run.ID)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[rollout.TargetState]int{}
	for _, tg := range stored {
		counts[tg.State]++
		if tg.State == rollout.TargetFailed && tg.Error != "simulated failure" {
			t.Errorf("%s failed with %q, want the simulated failure", tg.Instance, tg.Error)
		}
	}
	for s, n := range run.Counts {
		if counts[s] != n {
			t.Errorf("store has %d %s, run says %d", counts[s], s, n)
		}
	}
	if sent := 1000 - run.Counts[rollout.TargetSkipped]; int(f.sim.Stats().Ran) != sent || run.Sent != sent {
		t.Errorf("agents ran %d, run sent %d, want %d each", f.sim.Stats().Ran, run.Sent, sent)
	}
	for state, want := range map[rollout.TargetState]int{rollout.TargetSucceeded: run.Counts[rollout.TargetSucceeded],
		rollout.TargetFailed: run.Counts[rollout.TargetFailed], rollout.TargetSkipped: run.Counts[rollout.TargetSkipped]} {
		if got := counted(t, e, "stackpro_run_targets_total", string(state)); got != float64(want) {
			t.Errorf("stackpro_run_targets_total{state=%q} = %v, want %d", state, got, want)
		}
	}
	if got := counted(t, e, "stackpro_runs_finished_total", "stopped"); got != 1 {
		t.Errorf("stackpro_runs_finished_total{state=stopped} = %v, want 1", got)
	}
	audit, err := f.st.AuditLog(5000)
	if err != nil {
		t.Fatal(err)
	}
	events := map[string]int{}
	for _, rec := range audit {
		events[rec.Event]++
		if rec.Actor != "ops@example.com" {
			t.Errorf("audit record %+v: want the operator as actor", rec)
		}
	}
	if events["run.started"] != 1 || events["run.finished"] != 1 || events["run.target"] != 1000-run.Counts[rollout.TargetSkipped] {
		t.Errorf("audit events %v: want one start, one finish and one record per target sent", events)
	}
}

// TestOfflineUndeliverable: agents not connected come out undeliverable
// and do not spend the error budget.
func TestOfflineUndeliverable(t *testing.T) {
	f := startFleet(t, 100, 0)
	if _, err := f.sim.Set(fleetsim.Offline, 0.2); err != nil {
		t.Fatal(err)
	}
	offline := f.sim.IDs(fleetsim.Offline)
	e, _ := f.engine(t, nil)
	run, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{All: true}, "100%", "0"), "ops")
	if err != nil {
		t.Fatal(err)
	}
	run = waitDone(t, e, run.ID)
	if run.State != rollout.RunCompleted || run.Counts[rollout.TargetUndeliverable] != len(offline) || run.Counts[rollout.TargetSucceeded] != 100-len(offline) {
		t.Fatalf("run %s %v, want completed with %d undeliverable and the rest succeeded", run.State, run.Counts, len(offline))
	}
	targets, err := e.Targets(run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		if (tg.State == rollout.TargetUndeliverable) != contains(offline, tg.Instance) {
			t.Errorf("%s is %s; offline: %v", tg.Instance, tg.State, contains(offline, tg.Instance))
		}
	}
}

func contains(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// tamper seals requests the way an attacker or a broken clock would.
type tamper struct {
	key ed25519.PrivateKey
	fn  func(id string, req *protocol.CommandRequest, key *ed25519.PrivateKey) []byte
}

func (s tamper) Seal(req protocol.CommandRequest) ([]byte, error) {
	key := s.key
	if data := s.fn(req.Target, &req, &key); data != nil {
		return data, nil
	}
	return protocol.Seal(key, req)
}

// TestRefusalsAudited: requests signed by another key, expired, replayed
// from an earlier run or meant for another instance are refused by the
// agents, recorded as failed with the reason, and audited.
func TestRefusalsAudited(t *testing.T) {
	f := startFleet(t, 8, 0)
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = fmt.Sprintf("i-sim%05d", i)
	}
	// A first run whose sealed requests an attacker keeps.
	kept := map[string][]byte{}
	var mu sync.Mutex
	recorder := tamper{key: f.key, fn: func(id string, req *protocol.CommandRequest, key *ed25519.PrivateKey) []byte {
		data, err := protocol.Seal(*key, *req)
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		kept[id] = data
		mu.Unlock()
		return data
	}}
	e, stop := f.engine(t, recorder)
	first, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{All: true}, "100%", "100%"), "ops")
	if err != nil {
		t.Fatal(err)
	}
	if run := waitDone(t, e, first.ID); run.Counts[rollout.TargetSucceeded] != 8 {
		t.Fatalf("first run: %v", run.Counts)
	}
	stop()

	_, other, _ := ed25519.GenerateKey(nil)
	want := map[string]protocol.Refusal{ids[0]: protocol.RefusedForged, ids[1]: protocol.RefusedExpired,
		ids[2]: protocol.RefusedReplayed, ids[3]: protocol.RefusedMistargeted}
	attacker := tamper{key: f.key, fn: func(id string, req *protocol.CommandRequest, key *ed25519.PrivateKey) []byte {
		switch want[id] {
		case protocol.RefusedForged:
			*key = other
		case protocol.RefusedExpired:
			req.IssuedAt, req.Expires = req.IssuedAt.Add(-2*time.Hour), req.Expires.Add(-2*time.Hour)
		case protocol.RefusedReplayed:
			mu.Lock()
			defer mu.Unlock()
			return kept[id]
		case protocol.RefusedMistargeted:
			req.Target = ids[7]
		}
		return nil
	}}
	e, _ = f.engine(t, attacker)
	run, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{IDs: ids[:5]}, "100%", "100%"), "mallory")
	if err != nil {
		t.Fatal(err)
	}
	run = waitDone(t, e, run.ID)
	targets, err := e.Targets(run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		reason, refused := want[tg.Instance]
		switch {
		case refused && (tg.State != rollout.TargetFailed || tg.Refused != string(reason)):
			t.Errorf("%s: %s refused=%q, want failed, refused %q", tg.Instance, tg.State, tg.Refused, reason)
		case !refused && tg.State != rollout.TargetSucceeded:
			t.Errorf("%s: %s (%s), want succeeded", tg.Instance, tg.State, tg.Error)
		}
	}
	if got := f.sim.Stats().Refused; len(got) != 4 {
		t.Errorf("agents refused %v, want one of each reason", got)
	}
	audit, err := f.st.AuditLog(100)
	if err != nil {
		t.Fatal(err)
	}
	var refusals []string
	for _, rec := range audit {
		if rec.Event == "command.refused" && rec.Actor == "mallory" {
			refusals = append(refusals, rec.Detail)
		}
	}
	if len(refusals) != 4 {
		t.Errorf("audited refusals %q, want 4", refusals)
	}
}

// TestResumeWithoutDuplicates: a control plane stopped mid-run (its engine
// gone, nothing flushed on the way out but what was written as it went)
// and started again on the same store finishes the run, and no agent runs
// the command twice.
func TestResumeWithoutDuplicates(t *testing.T) {
	f := startFleet(t, 300, 0)
	e, stop := f.engine(t, nil)
	run, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{All: true}, "3", "0"), "ops")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := e.Get(run.ID)
		if err != nil {
			t.Fatal(err)
		}
		if r.Sent >= 60 {
			break
		}
		if r.Done() || time.Now().After(deadline) {
			t.Fatalf("run %+v: wanted to stop it midway", r)
		}
		time.Sleep(time.Millisecond)
	}
	stop()
	stored, err := f.st.Run(run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Done() || stored.Sent == 0 || stored.Sent == 300 {
		t.Fatalf("stored run %+v: want one stopped midway", stored)
	}
	e, _ = f.engine(t, nil)
	run = waitDone(t, e, run.ID)
	if run.State != rollout.RunCompleted || run.Counts[rollout.TargetSucceeded] != 300 {
		t.Fatalf("resumed run %s %v, want all 300 succeeded", run.State, run.Counts)
	}
	// A second run to every agent is the marker: an agent takes the
	// commands in the order sent, so once each has answered it, any second
	// copy of the first run's was run or refused before.
	marker, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{All: true}, "30", "0"), "ops")
	if err != nil {
		t.Fatal(err)
	}
	if m := waitDone(t, e, marker.ID); m.State != rollout.RunCompleted || m.Counts[rollout.TargetSucceeded] != 300 {
		t.Fatalf("marker run %s %v, want all 300 succeeded", m.State, m.Counts)
	}
	st := f.sim.Stats()
	if st.Ran != 600 || st.Refused[protocol.RefusedReplayed] != 0 {
		t.Errorf("agents ran %d commands (want 600: each run's once) and refused %d replays",
			st.Ran, st.Refused[protocol.RefusedReplayed])
	}
}

// TestCancel: a cancelled run sends nothing more, targets waiting for
// their agent to connect are skipped, answers in flight are kept, and a
// finished run cannot be cancelled.
func TestCancel(t *testing.T) {
	f := startFleet(t, 50, 0)
	if _, err := f.sim.Set(fleetsim.Offline, 0.2); err != nil {
		t.Fatal(err)
	}
	e, _ := f.engine(t, nil)
	run, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{All: true}, "100%", "100%"), "ops")
	if err != nil {
		t.Fatal(err)
	}
	proctest.Within(t, time.Minute, "the online agents to answer and the offline ones to wait", func() bool {
		r, err := e.Get(run.ID)
		return err == nil && r.Counts[rollout.TargetSucceeded] == 40 && r.Counts[rollout.TargetPending] == 10
	})
	if _, err := e.Cancel(run.ID, "ops2"); err != nil {
		t.Fatal(err)
	}
	run = waitDone(t, e, run.ID)
	if run.State != rollout.RunCancelled || run.Counts[rollout.TargetSkipped] != 10 || run.Counts[rollout.TargetSucceeded] != 40 || run.Reason != "cancelled by ops2" {
		t.Errorf("cancelled run %s %v %q: want cancelled, 40 succeeded, 10 skipped", run.State, run.Counts, run.Reason)
	}
	if _, err := e.Cancel(run.ID, "ops"); !errors.Is(err, engine.ErrFinished) {
		t.Errorf("cancelling a finished run: %v, want ErrFinished", err)
	}
	if _, err := e.Cancel("r-nope", "ops"); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("cancelling an unknown run: %v, want ErrNotFound", err)
	}
	if _, err := e.Start(context.Background(), spec("shell", fleet.Selection{All: true}, "1", "0"), "ops"); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("a command outside the catalog: %v, want ErrInvalid", err)
	}
	if _, err := e.Start(context.Background(), spec(protocol.CommandPing, fleet.Selection{Plan: "nope"}, "1", "0"), "ops"); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("a selection matching nothing: %v, want ErrInvalid", err)
	}
}

// counted is the value of the series of name whose state label is state.
func counted(t *testing.T, c prometheus.Collector, name, state string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" && l.GetValue() == state {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
