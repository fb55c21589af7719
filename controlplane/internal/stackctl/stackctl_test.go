package stackctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dashboardapi "github.com/stackpro/stackpro/dashboard-api"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Tokens the fake token store knows. An API token carries no user id, as
// in the control plane, so /me answers its name and role.
const (
	tokenOperator = "sp_op_secret_4f1c"     // an operator's API token
	tokenAdmin    = "sp_admin_user_session" // an admin user's access token
	tokenCustomer = "sp_customer_session"   // a customer user's access token
	tokenBroken   = "sp_broken"             // the token store fails: a 500
)

type fakeTokens struct{}

func (fakeTokens) Principal(token string) (dashboardapi.Principal, error) {
	switch token {
	case tokenOperator:
		return dashboardapi.Principal{Name: "oscar", Role: dashboardapi.RoleOperator}, nil
	case tokenAdmin:
		return dashboardapi.Principal{Name: "ada@ops.example", Role: dashboardapi.RoleAdmin, UserID: "u-ada"}, nil
	case tokenCustomer:
		return dashboardapi.Principal{Name: "ann@a.example", Role: dashboardapi.RoleCustomer, UserID: "u-ann", CustomerID: "cus_a"}, nil
	case tokenBroken:
		return dashboardapi.Principal{}, errors.New("token store: bucket missing")
	}
	return dashboardapi.Principal{}, fault.ErrUnauthorized
}

// fakeAuth answers /me for a user as the control plane does; stackctl
// calls nothing else of Auth (the embedded interface would panic).
type fakeAuth struct{ dashboardapi.Auth }

func (fakeAuth) Me(_ context.Context, p dashboardapi.Principal) (dashboardapi.Profile, error) {
	return dashboardapi.Profile{ID: p.UserID, Email: p.Name, Role: p.Role, EmailVerified: true}, nil
}

// noMetrics: no instance has sent metrics.
type noMetrics struct{}

func (noMetrics) LatestMetrics(string) (protocol.Metrics, bool) { return protocol.Metrics{}, false }
func (noMetrics) MetricsHistory(id string, from, to time.Time) (fleet.MetricsHistory, error) {
	return fleet.MetricsHistory{InstanceID: id, From: from, To: to}, nil
}

// trackerTags sets tags on the tracker, as the control plane does (less
// the store).
type trackerTags struct{ tr *fleet.Tracker }

func (t trackerTags) SetTags(_ context.Context, id string, tags map[string]string) (fleet.Instance, error) {
	if _, ok := t.tr.Update(id, func(inst *fleet.Instance) { inst.Tags = tags }); !ok {
		return fleet.Instance{}, fault.New(fault.NotFound, "instance not found")
	}
	return t.tr.Get(id, time.Now())
}

// fakeRuns is a small rollout engine: each read of a run finishes its
// next target (in instance order) with the outcome outcomes gives it, with
// the next Concurrency ones running; once more targets have failed or
// timed out than the budget allows, the rest are skipped and the run
// stops.
type fakeRuns struct {
	tr       *fleet.Tracker
	outcomes map[string]rollout.TargetState // by instance; succeeded if absent

	mu      sync.Mutex
	runs    map[string]*fakeRun
	order   []string // ids, oldest first
	onPoll  func(id string, polls int)
	cancels int
}

type fakeRun struct {
	run     rollout.Run
	targets []rollout.Target
	polls   int
}

func (f *fakeRuns) Start(_ context.Context, spec rollout.RunSpec, by string) (rollout.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var targets []rollout.Target
	for _, inst := range f.tr.List(time.Now()) {
		if spec.Select.Match(inst, inst.Status) {
			targets = append(targets, rollout.Target{Instance: inst.ID, State: rollout.TargetPending})
		}
	}
	if len(targets) == 0 {
		return rollout.Run{}, fault.New(fault.Invalid, "invalid run: the selection %s matches no instance", spec.Select)
	}
	n := len(targets)
	conc := spec.MaxConcurrency.Of(n)
	if conc == 0 {
		conc = n
	}
	id := fmt.Sprintf("r-%d", len(f.order)+1)
	r := &fakeRun{targets: targets, run: rollout.Run{ID: id, Spec: spec, CreatedBy: by, CreatedAt: time.Now(),
		State: rollout.RunRunning, Total: n, Concurrency: conc, ErrorBudget: spec.MaxErrors.Of(n)}}
	f.recount(r)
	f.runs[id] = r
	f.order = append(f.order, id)
	return r.run, nil
}

// recount sets the run's counts from its targets.
func (f *fakeRuns) recount(r *fakeRun) {
	r.run.Counts = map[rollout.TargetState]int{}
	for _, t := range r.targets {
		r.run.Counts[t.State]++
	}
}

// advance finishes the next target and starts those the concurrency allows.
func (f *fakeRuns) advance(r *fakeRun) {
	if r.run.Done() {
		return
	}
	now := time.Now()
	i := slices.IndexFunc(r.targets, func(t rollout.Target) bool { return !t.State.Final() })
	if i >= 0 && r.targets[i].State == rollout.TargetRunning {
		t := &r.targets[i]
		t.State, t.FinishedAt = rollout.TargetSucceeded, now
		if st, ok := f.outcomes[t.Instance]; ok {
			t.State = st
		}
		switch t.State {
		case rollout.TargetFailed:
			t.Error, t.Refused = "signature does not verify", string(protocol.RefusedForged)
		case rollout.TargetTimedOut:
			t.Error = "no answer in " + time.Duration(r.run.Spec.Timeout).String()
		case rollout.TargetUndeliverable:
			t.Error, t.SentAt = "no agent connected", time.Time{}
		}
		f.recount(r)
		if r.run.Errors() > r.run.ErrorBudget {
			f.finish(r, rollout.RunStopped, fmt.Sprintf("%d errors, more than the %d allowed", r.run.Errors(), r.run.ErrorBudget))
			return
		}
	}
	running := 0
	for j := range r.targets {
		t := &r.targets[j]
		if t.State == rollout.TargetPending && running < r.run.Concurrency {
			t.State, t.SentAt, t.Nonce = rollout.TargetRunning, now, protocol.NewNonce()
		}
		if t.State == rollout.TargetRunning {
			running++
		}
	}
	f.recount(r)
	if running == 0 {
		f.finish(r, rollout.RunCompleted, "")
	}
}

// finish ends r in state, skipping every target not yet final.
func (f *fakeRuns) finish(r *fakeRun, state rollout.RunState, reason string) {
	for j := range r.targets {
		if !r.targets[j].State.Final() {
			r.targets[j].State = rollout.TargetSkipped
		}
	}
	r.run.State, r.run.Reason, r.run.FinishedAt = state, reason, time.Now()
	f.recount(r)
}

func (f *fakeRuns) Get(id string) (rollout.Run, error) {
	f.mu.Lock()
	r, ok := f.runs[id]
	if !ok {
		f.mu.Unlock()
		return rollout.Run{}, fault.New(fault.NotFound, "run not found")
	}
	r.polls++
	f.advance(r)
	run, polls, onPoll := r.run, r.polls, f.onPoll
	f.mu.Unlock()
	if onPoll != nil {
		onPoll(id, polls)
	}
	return run, nil
}

func (f *fakeRuns) List() ([]rollout.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var runs []rollout.Run
	for _, id := range slices.Backward(f.order) {
		runs = append(runs, f.runs[id].run)
	}
	return runs, nil
}

func (f *fakeRuns) Targets(id string) ([]rollout.Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.runs[id]
	if !ok {
		return nil, fault.New(fault.NotFound, "run not found")
	}
	return slices.Clone(r.targets), nil
}

func (f *fakeRuns) Cancel(id, by string) (rollout.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.runs[id]
	switch {
	case !ok:
		return rollout.Run{}, fault.New(fault.NotFound, "run not found")
	case r.run.Done():
		return rollout.Run{}, fault.New(fault.Conflict, "run already finished")
	}
	f.cancels++
	f.finish(r, rollout.RunCancelled, "cancelled by "+by)
	return r.run, nil
}

// setOnPoll has fn called after each read of a run, with how many reads
// it had.
func (f *fakeRuns) setOnPoll(fn func(id string, polls int)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onPoll = fn
}

// started is how many runs were started.
func (f *fakeRuns) started() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.order)
}

func (f *fakeRuns) cancelled() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cancels
}

// testEnv is dashboard-api's real router over a real tracker holding
// i-a, i-b (plan pro, eu-west-1, env=prod), i-c (plan basic, env=prod)
// and i-d (plan basic, us-east-1), all heartbeating, and extra; runs fail
// on i-c and time out on i-d.
type testEnv struct {
	url     string
	tracker *fleet.Tracker
	runs    *fakeRuns
	config  string // $STACKPRO_CONFIG
}

func newTestEnv(t *testing.T, extra ...fleet.Instance) *testEnv {
	t.Helper()
	created := time.Now().Add(-48 * time.Hour)
	tr := fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Hour, OfflineAfter: 2 * time.Hour}, append([]fleet.Instance{
		{ID: "i-a", Provider: "local", CreatedAt: created, Customer: "cus_a", Plan: "pro", Region: "eu-west-1", Tags: map[string]string{"env": "prod"}},
		{ID: "i-b", Provider: "local", CreatedAt: created, Customer: "cus_b", Plan: "pro", Region: "eu-west-1", Tags: map[string]string{"env": "prod", "tier": "gold"}},
		{ID: "i-c", Provider: "local", CreatedAt: created, Customer: "cus_c", Plan: "basic", Region: "eu-west-1", Tags: map[string]string{"env": "prod"}},
		{ID: "i-d", Provider: "local", CreatedAt: created, Customer: "cus_d", Plan: "basic", Region: "us-east-1"},
	}, extra...))
	now := time.Now()
	for _, id := range []string{"i-a", "i-b", "i-c", "i-d"} {
		tr.Enrolled(id, now)
		hb := protocol.Heartbeat{InstanceID: id, AgentVersion: "1.4.0", Health: protocol.HealthOK}
		if id == "i-a" {
			hb.Stack = &protocol.StackStatus{AppliedVersion: 3, ComposeTool: "docker compose", Services: []protocol.ServiceState{
				{Service: "web", State: "running", Health: "healthy", RestartCount: 1, StartedAt: now.Add(-time.Hour)},
				{Service: "db", State: "running"},
			}}
		}
		tr.Heartbeat(hb, now)
	}
	runs := &fakeRuns{tr: tr, runs: map[string]*fakeRun{},
		outcomes: map[string]rollout.TargetState{"i-c": rollout.TargetFailed, "i-d": rollout.TargetTimedOut}}
	api, err := dashboardapi.New(dashboardapi.Options{
		Fleet:   tr,
		Metrics: noMetrics{},
		Tokens:  fakeTokens{},
		Auth:    fakeAuth{},
		Runs:    runs,
		Tags:    trackerTags{tr},
		Limits: dashboardapi.AuthLimits{PerIP: dashboardapi.Limit{Attempts: 100, Window: time.Minute},
			PerAccount: dashboardapi.Limit{Attempts: 100, Window: time.Minute}},
		Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("dashboardapi.New: %v", err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	env := &testEnv{url: srv.URL, tracker: tr, runs: runs, config: t.TempDir() + "/stackctl.json"}
	t.Setenv(envConfig, env.config)
	t.Setenv(envURL, "")
	t.Setenv(envToken, "")
	return env
}

// result is what one stackctl invocation did.
type result struct {
	code           int
	stdout, stderr string
}

// exec runs stackctl's Main with args and stdin, under ctx.
func exec(ctx context.Context, stdin string, args ...string) result {
	var stdout, stderr bytes.Buffer
	code := Main(ctx, args, strings.NewReader(stdin), &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// stackctl runs stackctl as the operator, with --url and --token.
func (e *testEnv) stackctl(t *testing.T, args ...string) result {
	t.Helper()
	return e.stackctlCtx(t, context.Background(), args...)
}

func (e *testEnv) stackctlCtx(t *testing.T, ctx context.Context, args ...string) result {
	t.Helper()
	res := exec(ctx, "", append([]string{"--url", e.url, "--token", tokenOperator}, args...)...)
	if strings.Contains(res.stdout+res.stderr, tokenOperator) {
		t.Errorf("stackctl %v printed the token", args)
	}
	return res
}

// wantCode fails the test unless res ended with code.
func wantCode(t *testing.T, res result, code int, what string) {
	t.Helper()
	if res.code != code {
		t.Fatalf("%s: exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", what, res.code, code, res.stdout, res.stderr)
	}
}
