package dashboardapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"

	"github.com/stackpro/stackpro/controlplane/fault"
)

const goodToken = "sp_good"

// fakeTokens knows goodToken; "sp_broken" makes the token store fail.
type fakeTokens struct{}

func (fakeTokens) Principal(token string) (Principal, error) {
	switch token {
	case goodToken:
		return Principal{Name: "alice", Role: "admin"}, nil
	case tokenCustomerA:
		return Principal{Name: "ann@a.example", Role: RoleCustomer, UserID: "u-a", CustomerID: "cus_a"}, nil
	case tokenCustomerB:
		return Principal{Name: "bob@b.example", Role: RoleCustomer, UserID: "u-b", CustomerID: "cus_b"}, nil
	case tokenOperator:
		return Principal{Name: "oscar", Role: RoleOperator}, nil
	case "sp_broken":
		return Principal{}, errors.New("token store: bucket missing")
	}
	return Principal{}, fault.ErrUnauthorized
}

type fakeMetrics map[string]protocol.Metrics

func (m fakeMetrics) LatestMetrics(id string) (protocol.Metrics, bool) {
	s, ok := m[id]
	return s, ok
}

// MetricsHistory answers the latest sample as the one point of any window.
func (m fakeMetrics) MetricsHistory(id string, from, to time.Time) (fleet.MetricsHistory, error) {
	h := fleet.MetricsHistory{InstanceID: id, From: from, To: to, Resolution: fleet.ResolutionRaw, Points: []fleet.MetricsPoint{}}
	if s, ok := m[id]; ok {
		h.Points = append(h.Points, fleet.PointFrom(nil, s))
	}
	return h, nil
}

// fakeEvents has one event of i-a.
type fakeEvents struct{}

var fakeEvent = protocol.Event{V: 1, ID: "ev-1", InstanceID: "i-a", At: created.Add(time.Minute), Type: protocol.EventAgentStarted,
	Severity: protocol.SeverityInfo, Message: "agent started"}

func (fakeEvents) InstanceEvents(id string, limit int) ([]protocol.Event, error) {
	if id != "i-a" {
		return nil, nil
	}
	return []protocol.Event{fakeEvent}, nil
}

// fakeJobs records the jobs it was asked to start, as "kind:id" followed by
// any params, and fails with err.
type fakeJobs struct {
	mu  sync.Mutex
	ids []string
	err error
}

func (f *fakeJobs) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, call)
}

func (f *fakeJobs) Provision(customer, plan, subdomain string) (fleet.Instance, provision.Job, error) {
	f.record("provision:" + customer + "/" + plan + "/" + subdomain)
	if f.err != nil {
		return fleet.Instance{}, provision.Job{}, f.err
	}
	return fleet.Instance{ID: "i-new", Customer: customer, Plan: plan, Subdomain: subdomain},
		provision.Job{ID: "job-1", Kind: "provision", InstanceID: "i-new"}, nil
}

func (f *fakeJobs) Start(kind, id string, params map[string]string) (provision.Job, error) {
	call := kind + ":" + id
	for _, k := range slices.Sorted(maps.Keys(params)) {
		call += " " + k + "=" + params[k]
	}
	f.record(call)
	return provision.Job{ID: "job-2", Kind: kind, InstanceID: id}, f.err
}

// fakeJob is the one job fakeJobs knows.
var fakeJob = provision.Job{ID: "job-2", Kind: "terminate", InstanceID: "i-a", State: provision.JobRunning,
	Steps: []string{"stop", "delete"}, Done: 1, Log: []provision.JobLog{{At: created, Step: "stop", Outcome: "ok"}},
	CreatedAt: created, UpdatedAt: created}

func (f *fakeJobs) Job(id string) (provision.Job, error) {
	if f.err != nil {
		return provision.Job{}, f.err
	}
	if id != fakeJob.ID {
		return provision.Job{}, fault.New(fault.NotFound, "job not found")
	}
	return fakeJob, nil
}

func (f *fakeJobs) InstanceJobs(id string) ([]provision.Job, error) {
	if id != fakeJob.InstanceID {
		return nil, nil
	}
	return []provision.Job{fakeJob}, nil
}

func (f *fakeJobs) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ids)
}

// fakeRuns keeps runs in memory and answers as the rollout engine does:
// StartRun targets the known instances its selection names by id (all of
// them for all) and refuses a selection that matches none; runDone has
// finished, with a target of each outcome.
type fakeRuns struct {
	mu      sync.Mutex
	runs    map[string]rollout.Run
	targets map[string][]rollout.Target
	started []startedRun
}

// startedRun is one call of StartRun.
type startedRun struct {
	spec rollout.RunSpec
	by   string
}

// runDone is the finished run newFakeRuns holds.
var runDone = rollout.Run{ID: "run-000", CreatedBy: "oscar", CreatedAt: created, State: rollout.RunStopped,
	Reason: "error budget spent: 1 failed of 0 allowed", FinishedAt: created.Add(time.Minute),
	Spec: rollout.RunSpec{Command: protocol.CommandStackStatus, Select: fleet.Selection{All: true}, MaxConcurrency: rollout.Limit{N: 10, Percent: true},
		Timeout: rollout.Duration(time.Minute)},
	Total: 2, Concurrency: 0, ErrorBudget: 0, Sent: 2, Counts: map[rollout.TargetState]int{rollout.TargetSucceeded: 1, rollout.TargetFailed: 1}}

func newFakeRuns() *fakeRuns {
	f := &fakeRuns{runs: map[string]rollout.Run{}, targets: map[string][]rollout.Target{}}
	f.add(runDone, []rollout.Target{
		{Instance: "i-a", State: rollout.TargetSucceeded, Nonce: "n-a", SentAt: created, FinishedAt: created.Add(time.Second),
			Result: json.RawMessage(`{"applied_version":1}`)},
		{Instance: "i-b", State: rollout.TargetFailed, Nonce: "n-b", SentAt: created, FinishedAt: created.Add(time.Second),
			Error: "the command expired before it arrived", Refused: string(protocol.RefusedExpired)},
	})
	return f
}

// add keeps run with its targets.
func (f *fakeRuns) add(run rollout.Run, targets []rollout.Target) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs[run.ID], f.targets[run.ID] = run, targets
}

func (f *fakeRuns) Start(_ context.Context, spec rollout.RunSpec, by string) (rollout.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = append(f.started, startedRun{spec, by})
	known := []string{"i-a", "i-b"}
	ids := known
	if !spec.Select.All {
		ids = slices.DeleteFunc(slices.Clone(spec.Select.IDs), func(id string) bool { return !slices.Contains(known, id) })
	}
	if len(ids) == 0 {
		return rollout.Run{}, fault.New(fault.Invalid, "rollout: the selection matches no instance")
	}
	n := len(f.runs)
	run := rollout.Run{ID: fmt.Sprintf("run-%03d", n), Spec: spec, CreatedBy: by, CreatedAt: created.Add(time.Duration(n) * time.Hour),
		State: rollout.RunRunning, Total: len(ids), Concurrency: spec.MaxConcurrency.Of(len(ids)), ErrorBudget: spec.MaxErrors.Of(len(ids)),
		Counts: map[rollout.TargetState]int{rollout.TargetPending: len(ids)}}
	f.runs[run.ID] = run
	for _, id := range ids {
		f.targets[run.ID] = append(f.targets[run.ID], rollout.Target{Instance: id, State: rollout.TargetPending})
	}
	return run, nil
}

func (f *fakeRuns) Get(id string) (rollout.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	run, ok := f.runs[id]
	if !ok {
		return run, fault.New(fault.NotFound, "run not found")
	}
	return run, nil
}

func (f *fakeRuns) List() ([]rollout.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.SortedFunc(maps.Values(f.runs), func(x, y rollout.Run) int { return y.CreatedAt.Compare(x.CreatedAt) }), nil
}

func (f *fakeRuns) Targets(id string) ([]rollout.Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	targets, ok := f.targets[id]
	if !ok {
		return nil, fault.New(fault.NotFound, "run not found")
	}
	return targets, nil
}

func (f *fakeRuns) Cancel(id, by string) (rollout.Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	run, ok := f.runs[id]
	switch {
	case !ok:
		return run, fault.New(fault.NotFound, "run not found")
	case run.Done():
		return run, fault.New(fault.Conflict, "rollout: run %s already %s", id, run.State)
	}
	run.State, run.Reason, run.FinishedAt = rollout.RunCancelled, "cancelled by "+by, created.Add(2*time.Hour)
	run.Counts = map[rollout.TargetState]int{rollout.TargetSkipped: run.Total}
	f.runs[id] = run
	return run, nil
}

func (f *fakeRuns) starts() []startedRun {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.started)
}

// trackerTags sets tags on the test's tracker, as the control plane sets
// them on its fleet.
type trackerTags struct{ tr *fleet.Tracker }

func (t trackerTags) SetTags(_ context.Context, id string, tags map[string]string) (fleet.Instance, error) {
	if _, ok := t.tr.Update(id, func(inst *fleet.Instance) { inst.Tags = maps.Clone(tags) }); !ok {
		return fleet.Instance{}, fault.New(fault.NotFound, "fleet: no instance %s", id)
	}
	return t.tr.Get(id, time.Now())
}

// syncBuffer is a log destination the server's goroutines may write to
// while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testAPI struct {
	tracker *fleet.Tracker
	feed    *fleet.Feed
	handler http.Handler
	srv     *httptest.Server
	term    *fakeJobs
	runs    *fakeRuns
	billing *fakeBilling
	log     *syncBuffer
}

var created = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newTestAPI serves an API over a real tracker holding i-a (heartbeating now,
// with metrics) and i-b (never enrolled). Options may be adjusted by opt.
func newTestAPI(t *testing.T, opt func(*Options)) *testAPI {
	t.Helper()
	tr := fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Hour, OfflineAfter: 2 * time.Hour}, []fleet.Instance{
		{ID: "i-a", Provider: "local", CreatedAt: created, Customer: "cus_a"},
		{ID: "i-b", Provider: "local", CreatedAt: created, Customer: "cus_b"},
	})
	now := time.Now()
	tr.Enrolled("i-a", now)
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-a", AgentVersion: "1.0.0", Health: protocol.HealthOK}, now)

	ta := &testAPI{tracker: tr, feed: fleet.NewFeed(256, 64), term: &fakeJobs{}, runs: newFakeRuns(), billing: &fakeBilling{}, log: &syncBuffer{}}
	o := Options{
		Fleet: tr,
		Feed:  ta.feed,
		Metrics: fakeMetrics{"i-a": {V: 1, InstanceID: "i-a", At: created, CPUPercent: 12.5, UptimeSeconds: 3600,
			Memory:  protocol.Memory{TotalBytes: 4 << 30, UsedBytes: 1 << 30},
			Disks:   []protocol.Disk{{Mount: "/", TotalBytes: 40 << 30, UsedBytes: 10 << 30}},
			Network: protocol.Network{RxBytes: 1000, TxBytes: 500}}},
		Events:     fakeEvents{},
		Jobs:       ta.term,
		Runs:       ta.runs,
		Tags:       trackerTags{tr},
		Tokens:     fakeTokens{},
		Auth:       &fakeAuth{},
		Limits:     AuthLimits{PerIP: Limit{1000, time.Minute}, PerAccount: Limit{1000, time.Minute}},
		Billing:    ta.billing,
		Prometheus: fakePrometheus,
		Ready:      map[string]Check{"broker": func() error { return nil }, "store": func() error { return nil }},
		Log:        slog.New(slog.NewTextHandler(ta.log, nil)),
	}
	if opt != nil {
		opt(&o)
	}
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ta.handler = a.Handler()
	ta.srv = httptest.NewServer(ta.handler)
	t.Cleanup(ta.srv.Close)
	return ta
}

type response struct {
	code   int
	header http.Header
	body   []byte
}

// do sends a request with token (none if empty) and checks that the answer
// carries a request id, as every answer must.
func (ta *testAPI) do(t *testing.T, method, path, token string) response {
	t.Helper()
	return ta.send(t, method, path, token, "")
}

// send is do with a JSON body (none if empty).
func (ta *testAPI) send(t *testing.T, method, path, token, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, ta.srv.URL+path, rd)
	if err != nil {
		t.Fatalf("http.NewRequest: %v", err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return ta.roundTrip(t, req)
}

// roundTrip sends req and reads the answer, which must carry a request id.
func (ta *testAPI) roundTrip(t *testing.T, req *http.Request) response {
	t.Helper()
	res, err := ta.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL.Path, err)
	}
	if res.Header.Get("X-Request-Id") == "" {
		t.Errorf("%s %s: no X-Request-Id header", req.Method, req.URL.Path)
	}
	return response{code: res.StatusCode, header: res.Header, body: data}
}

// decode checks the content type and decodes the body into v.
func decode(t *testing.T, res response, contentType string, v any) {
	t.Helper()
	if mt, _, _ := mime.ParseMediaType(res.header.Get("Content-Type")); mt != contentType {
		t.Errorf("Content-Type = %q, want %q", res.header.Get("Content-Type"), contentType)
	}
	if err := json.Unmarshal(res.body, v); err != nil {
		t.Fatalf("decoding %s: %v", res.body, err)
	}
}

// wantProblem checks res is a problem document with code and detail, whose
// request_id matches the header.
func wantProblem(t *testing.T, res response, code int, detail string) {
	t.Helper()
	if res.code != code {
		t.Errorf("status = %d, want %d (body %s)", res.code, code, res.body)
	}
	var p problem
	decode(t, res, "application/problem+json", &p)
	want := problem{Type: "about:blank", Title: http.StatusText(code), Status: code, Detail: detail,
		RequestID: res.header.Get("X-Request-Id")}
	if p != want {
		t.Errorf("problem = %+v, want %+v", p, want)
	}
}

func TestHealthz(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.do(t, http.MethodGet, "/healthz", "")
	if res.code != http.StatusOK {
		t.Fatalf("GET /healthz = %d, want 200", res.code)
	}
	var got map[string]string
	decode(t, res, "application/json", &got)
	if got["status"] != "ok" {
		t.Errorf("GET /healthz body = %v, want status ok", got)
	}
}

func TestReadyz(t *testing.T) {
	tests := []struct {
		name       string
		store      error
		wantCode   int
		wantReady  bool
		wantChecks map[string]string
	}{
		{"all ready", nil, http.StatusOK, true, map[string]string{"broker": "ok", "store": "ok"}},
		{"store failing", errors.New("store closed"), http.StatusServiceUnavailable, false,
			map[string]string{"broker": "ok", "store": "store closed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, func(o *Options) {
				o.Ready["store"] = func() error { return tt.store }
			})
			res := ta.do(t, http.MethodGet, "/readyz", "")
			if res.code != tt.wantCode {
				t.Errorf("GET /readyz = %d, want %d", res.code, tt.wantCode)
			}
			var got struct {
				Ready  bool              `json:"ready"`
				Checks map[string]string `json:"checks"`
			}
			decode(t, res, "application/json", &got)
			if got.Ready != tt.wantReady || !maps.Equal(got.Checks, tt.wantChecks) {
				t.Errorf("GET /readyz body = %+v, want ready %v, checks %v", got, tt.wantReady, tt.wantChecks)
			}
		})
	}
}

func TestAuthentication(t *testing.T) {
	tests := []struct {
		name       string
		token      string
		wantCode   int
		wantDetail string
		wantAuth   string // WWW-Authenticate
	}{
		{"no token", "", http.StatusUnauthorized, "missing bearer token", `Bearer realm="stackpro"`},
		{"wrong token", "sp_wrong", http.StatusUnauthorized, "invalid bearer token", `Bearer realm="stackpro", error="invalid_token"`},
		{"token store failing", "sp_broken", http.StatusInternalServerError, "internal error", `Bearer realm="stackpro", error="invalid_token"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			res := ta.do(t, http.MethodGet, "/api/v1/instances", tt.token)
			wantProblem(t, res, tt.wantCode, tt.wantDetail)
			if got := res.header.Get("WWW-Authenticate"); got != tt.wantAuth {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tt.wantAuth)
			}
			if bytes.Contains(res.body, []byte("i-a")) {
				t.Errorf("body %s leaks an instance", res.body)
			}
		})
	}
}

func TestAuthenticationMalformedHeader(t *testing.T) {
	ta := newTestAPI(t, nil)
	req, err := http.NewRequest(http.MethodGet, ta.srv.URL+"/api/v1/instances", nil)
	if err != nil {
		t.Fatalf("http.NewRequest: %v", err)
	}
	req.Header.Set("Authorization", "Basic "+goodToken)
	res, err := ta.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET with a Basic authorization = %d, want 401", res.StatusCode)
	}
}

func TestListInstances(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.do(t, http.MethodGet, "/api/v1/instances", goodToken)
	if res.code != http.StatusOK {
		t.Fatalf("GET /api/v1/instances = %d, want 200 (body %s)", res.code, res.body)
	}
	var got struct {
		Instances []fleet.Instance `json:"instances"`
	}
	decode(t, res, "application/json", &got)
	type row struct {
		id     string
		status fleet.Status
	}
	var rows []row
	for _, inst := range got.Instances {
		rows = append(rows, row{inst.ID, inst.Status})
	}
	want := []row{{"i-a", fleet.StatusOnline}, {"i-b", fleet.StatusProvisioning}}
	if !slices.Equal(rows, want) {
		t.Errorf("instances = %+v, want %+v", rows, want)
	}
}

func TestGetInstance(t *testing.T) {
	ta := newTestAPI(t, nil)
	tests := []struct {
		id          string
		wantStatus  fleet.Status
		wantMetrics bool
	}{
		{"i-a", fleet.StatusOnline, true},
		{"i-b", fleet.StatusProvisioning, false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			res := ta.do(t, http.MethodGet, "/api/v1/instances/"+tt.id, goodToken)
			if res.code != http.StatusOK {
				t.Fatalf("GET = %d, want 200 (body %s)", res.code, res.body)
			}
			var got struct {
				fleet.Instance
				Metrics *protocol.Metrics `json:"metrics"`
			}
			decode(t, res, "application/json", &got)
			if got.ID != tt.id || got.Status != tt.wantStatus {
				t.Errorf("got id %q status %q, want %q %q", got.ID, got.Status, tt.id, tt.wantStatus)
			}
			if hasMetrics := got.Metrics != nil; hasMetrics != tt.wantMetrics {
				t.Fatalf("metrics present = %v, want %v (body %s)", hasMetrics, tt.wantMetrics, res.body)
			}
			if tt.wantMetrics && (got.Metrics.CPUPercent != 12.5 || got.Metrics.UptimeSeconds != 3600) {
				t.Errorf("metrics = %+v, want cpu 12.5 and uptime 3600", got.Metrics)
			}
		})
	}
}

func TestGetUnknownInstance(t *testing.T) {
	ta := newTestAPI(t, nil)
	wantProblem(t, ta.do(t, http.MethodGet, "/api/v1/instances/i-nope", goodToken), http.StatusNotFound, "instance not found")
}

func TestTerminate(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.do(t, http.MethodDelete, "/api/v1/instances/i-a", goodToken)
	if res.code != http.StatusAccepted || res.header.Get("Location") != "/api/v1/jobs/job-2" {
		t.Errorf("DELETE = %d (Location %q), want 202 and the job's location", res.code, res.header.Get("Location"))
	}
	if got := ta.term.calls(); !slices.Equal(got, []string{"terminate:i-a"}) {
		t.Errorf("job calls = %v, want [terminate:i-a]", got)
	}
	if log := ta.log.String(); !strings.Contains(log, "instance=i-a") || !strings.Contains(log, "by=alice") {
		t.Errorf("log = %q, want who terminated i-a", log)
	}
}

func TestTerminateUnknownInstance(t *testing.T) {
	ta := newTestAPI(t, nil)
	wantProblem(t, ta.do(t, http.MethodDelete, "/api/v1/instances/i-nope", goodToken), http.StatusNotFound, "instance not found")
	if got := ta.term.calls(); len(got) != 0 {
		t.Errorf("Terminate calls = %v, want none", got)
	}
}

func TestTerminateRequiresToken(t *testing.T) {
	ta := newTestAPI(t, nil)
	wantProblem(t, ta.do(t, http.MethodDelete, "/api/v1/instances/i-a", ""), http.StatusUnauthorized, "missing bearer token")
	if got := ta.term.calls(); len(got) != 0 {
		t.Errorf("Terminate calls = %v, want none", got)
	}
}

func TestTerminateErrorIsNotShown(t *testing.T) {
	const secret = "ec2: AccessDenied for arn:aws:iam::123456789012:role/secret"
	ta := newTestAPI(t, func(o *Options) {
		o.Jobs = &fakeJobs{err: errors.New(secret)}
	})
	res := ta.do(t, http.MethodDelete, "/api/v1/instances/i-a", goodToken)
	wantProblem(t, res, http.StatusInternalServerError, "internal error")
	if bytes.Contains(res.body, []byte("AccessDenied")) {
		t.Errorf("body %s shows the error", res.body)
	}
	log := ta.log.String()
	if !strings.Contains(log, secret) {
		t.Errorf("log = %q, want the error %q", log, secret)
	}
	if id := res.header.Get("X-Request-Id"); !strings.Contains(log, id) {
		t.Errorf("log = %q, want the request id %q", log, id)
	}
}

func TestUnknownRoutes(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		path       string
		token      string
		wantCode   int
		wantDetail string
	}{
		{"unknown path", http.MethodGet, "/nope", "", http.StatusNotFound, "no such route"},
		{"unknown api path", http.MethodGet, "/api/v1/nope", goodToken, http.StatusNotFound, "no such route"},
		{"unknown api path without a token", http.MethodGet, "/api/v1/nope", "", http.StatusNotFound, "no such route"},
		{"wrong method", http.MethodPost, "/healthz", "", http.StatusMethodNotAllowed, "method not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			wantProblem(t, ta.do(t, tt.method, tt.path, tt.token), tt.wantCode, tt.wantDetail)
		})
	}
}

// wantAudit checks the log says who started a job, on which instance, in
// which request.
func wantAudit(t *testing.T, log, msg, instance, job string, res response) {
	t.Helper()
	for _, want := range []string{`msg="` + msg + `"`, "instance=" + instance, "job=" + job, "by=alice",
		"request_id=" + res.header.Get("X-Request-Id")} {
		if !strings.Contains(log, want) {
			t.Errorf("log = %q, want %s", log, want)
		}
	}
}

// Errors as the wired Jobs returns them: a dashboard-api sentinel wrapping
// provisioning's own error.
var (
	errUnknownPlan = fault.New(fault.Invalid, `provision: bad request: provision: unknown plan "gold"`)
	errNoPlan      = fault.New(fault.Invalid, `provision: bad request: provision: unknown plan ""`)
	errBusy        = fault.New(fault.Conflict, "provision: another job is working on this instance: terminate job job-9")
	errGone        = fault.New(fault.NotFound, "instance not found")
	errStore       = errors.New("store: writing job: disk full")
)

func TestProvision(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.send(t, http.MethodPost, "/api/v1/instances", goodToken,
		`{"customer": "acme", "plan": "starter", "subdomain": "shop"}`)
	if res.code != http.StatusAccepted {
		t.Fatalf("POST /api/v1/instances = %d, want 202 (body %s)", res.code, res.body)
	}
	if got := res.header.Get("Location"); got != "/api/v1/jobs/job-1" {
		t.Errorf("Location = %q, want /api/v1/jobs/job-1", got)
	}
	var got struct {
		Instance fleet.Instance `json:"instance"`
		Job      provision.Job  `json:"job"`
	}
	decode(t, res, "application/json", &got)
	if i := got.Instance; i.ID != "i-new" || i.Customer != "acme" || i.Plan != "starter" || i.Subdomain != "shop" {
		t.Errorf("instance = %+v, want i-new for acme on starter at shop", i)
	}
	if j := got.Job; j.ID != "job-1" || j.Kind != "provision" || j.InstanceID != "i-new" {
		t.Errorf("job = %+v, want provision job job-1 of i-new", j)
	}
	if calls := ta.term.calls(); !slices.Equal(calls, []string{"provision:acme/starter/shop"}) {
		t.Errorf("job calls = %v, want [provision:acme/starter/shop]", calls)
	}
	wantAudit(t, ta.log.String(), "provision job started", "i-new", "job-1", res)
}

func TestProvisionErrors(t *testing.T) {
	const good = `{"customer": "acme", "plan": "starter"}`
	tests := []struct {
		name       string
		token      string
		body       string
		jobsErr    error
		wantCode   int
		wantDetail string
		wantCalls  []string
	}{
		{"no token", "", good, nil, http.StatusUnauthorized, "missing bearer token", nil},
		{"no body", goodToken, "", nil, http.StatusUnsupportedMediaType, "Content-Type must be application/json", nil},
		{"bad JSON", goodToken, `{"customer": "acme",`, nil, http.StatusBadRequest, "malformed body: unexpected EOF", nil},
		{"unknown field", goodToken, `{"customer": "acme", "plan": "starter", "size": "xl"}`, nil,
			http.StatusBadRequest, `malformed body: json: unknown field "size"`, nil},
		{"two JSON values", goodToken, `{"customer": "acme", "plan": "starter"} {"plan": "enterprise"}`, nil,
			http.StatusBadRequest, "malformed body: want one JSON value", nil},
		{"duplicate key", goodToken, `{"customer": "acme", "plan": "starter", "plan": "enterprise"}`, nil,
			http.StatusBadRequest, `malformed body: duplicate key "plan"`, nil},
		{"unknown plan", goodToken, `{"customer": "acme", "plan": "gold"}`, errUnknownPlan,
			http.StatusUnprocessableEntity, `provision: bad request: provision: unknown plan "gold"`,
			[]string{"provision:acme/gold/"}},
		{"store failing", goodToken, good, errStore, http.StatusInternalServerError, "internal error",
			[]string{"provision:acme/starter/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			ta.term.err = tt.jobsErr
			res := ta.send(t, http.MethodPost, "/api/v1/instances", tt.token, tt.body)
			wantProblem(t, res, tt.wantCode, tt.wantDetail)
			if got := res.header.Get("Location"); got != "" {
				t.Errorf("Location = %q, want none", got)
			}
			if got := ta.term.calls(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("job calls = %v, want %v", got, tt.wantCalls)
			}
			if log := ta.log.String(); strings.Contains(log, "job started") {
				t.Errorf("log = %q, want no job started", log)
			}
			if bytes.Contains(res.body, []byte("disk full")) {
				t.Errorf("body %s shows the store's error", res.body)
			}
		})
	}
}

func TestStartJob(t *testing.T) {
	tests := []struct {
		kind     string
		body     string
		wantCall string
	}{
		{"suspend", "", "suspend:i-a"},
		{"resume", "", "resume:i-a"},
		{"resize", `{"plan": "pro"}`, "resize:i-a plan=pro"},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			res := ta.send(t, http.MethodPost, "/api/v1/instances/i-a/"+tt.kind, goodToken, tt.body)
			if res.code != http.StatusAccepted {
				t.Fatalf("POST %s = %d, want 202 (body %s)", tt.kind, res.code, res.body)
			}
			if got := res.header.Get("Location"); got != "/api/v1/jobs/job-2" {
				t.Errorf("Location = %q, want /api/v1/jobs/job-2", got)
			}
			var job provision.Job
			decode(t, res, "application/json", &job)
			if job.ID != "job-2" || job.Kind != tt.kind || job.InstanceID != "i-a" {
				t.Errorf("job = %+v, want %s job job-2 of i-a", job, tt.kind)
			}
			if got := ta.term.calls(); !slices.Equal(got, []string{tt.wantCall}) {
				t.Errorf("job calls = %v, want [%s]", got, tt.wantCall)
			}
			wantAudit(t, ta.log.String(), tt.kind+" job started", "i-a", "job-2", res)
		})
	}
}

func TestStartJobErrors(t *testing.T) {
	busy := "provision: another job is working on this instance: terminate job job-9"
	tests := []struct {
		name       string
		token      string
		path       string
		body       string
		jobsErr    error
		wantCode   int
		wantDetail string
		wantCalls  []string
	}{
		{"suspend without token", "", "/i-a/suspend", "", nil, http.StatusUnauthorized, "missing bearer token", nil},
		{"resume without token", "", "/i-a/resume", "", nil, http.StatusUnauthorized, "missing bearer token", nil},
		{"resize without token", "", "/i-a/resize", `{"plan": "pro"}`, nil, http.StatusUnauthorized, "missing bearer token", nil},

		{"suspend unknown instance", goodToken, "/i-nope/suspend", "", nil, http.StatusNotFound, "instance not found", nil},
		{"resume unknown instance", goodToken, "/i-nope/resume", "", nil, http.StatusNotFound, "instance not found", nil},
		{"resize unknown instance", goodToken, "/i-nope/resize", `{"plan": "pro"}`, nil, http.StatusNotFound, "instance not found", nil},
		{"instance gone before the job starts", goodToken, "/i-a/suspend", "", errGone, http.StatusNotFound,
			"instance not found", []string{"suspend:i-a"}},

		{"suspend busy", goodToken, "/i-a/suspend", "", errBusy, http.StatusConflict, busy, []string{"suspend:i-a"}},
		{"resume busy", goodToken, "/i-a/resume", "", errBusy, http.StatusConflict, busy, []string{"resume:i-a"}},
		{"resize busy", goodToken, "/i-a/resize", `{"plan": "pro"}`, errBusy, http.StatusConflict, busy,
			[]string{"resize:i-a plan=pro"}},

		{"resize without body", goodToken, "/i-a/resize", "", nil, http.StatusUnsupportedMediaType, "Content-Type must be application/json", nil},
		{"resize bad JSON", goodToken, "/i-a/resize", `{"plan":`, nil, http.StatusBadRequest, "malformed body: unexpected EOF", nil},
		{"resize unknown field", goodToken, "/i-a/resize", `{"plan": "pro", "disk": 100}`, nil, http.StatusBadRequest,
			`malformed body: json: unknown field "disk"`, nil},
		{"resize without plan", goodToken, "/i-a/resize", `{}`, errNoPlan, http.StatusUnprocessableEntity,
			`provision: bad request: provision: unknown plan ""`, []string{"resize:i-a plan="}},
		{"resize to unknown plan", goodToken, "/i-a/resize", `{"plan": "gold"}`, errUnknownPlan, http.StatusUnprocessableEntity,
			`provision: bad request: provision: unknown plan "gold"`, []string{"resize:i-a plan=gold"}},

		{"store failing", goodToken, "/i-a/suspend", "", errStore, http.StatusInternalServerError, "internal error",
			[]string{"suspend:i-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			ta.term.err = tt.jobsErr
			res := ta.send(t, http.MethodPost, "/api/v1/instances"+tt.path, tt.token, tt.body)
			wantProblem(t, res, tt.wantCode, tt.wantDetail)
			if got := res.header.Get("Location"); got != "" {
				t.Errorf("Location = %q, want none", got)
			}
			if got := ta.term.calls(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("job calls = %v, want %v", got, tt.wantCalls)
			}
			if log := ta.log.String(); strings.Contains(log, "job started") {
				t.Errorf("log = %q, want no job started", log)
			}
		})
	}
}

func TestGetJob(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.do(t, http.MethodGet, "/api/v1/jobs/job-2", goodToken)
	if res.code != http.StatusOK {
		t.Fatalf("GET /api/v1/jobs/job-2 = %d, want 200 (body %s)", res.code, res.body)
	}
	var got provision.Job
	decode(t, res, "application/json", &got)
	if !reflect.DeepEqual(got, fakeJob) {
		t.Errorf("job = %+v, want %+v", got, fakeJob)
	}
}

func TestGetJobErrors(t *testing.T) {
	tests := []struct {
		name       string
		token      string
		id         string
		jobsErr    error
		wantCode   int
		wantDetail string
	}{
		{"no token", "", "job-2", nil, http.StatusUnauthorized, "missing bearer token"},
		{"unknown job", goodToken, "job-nope", nil, http.StatusNotFound, "job not found"},
		{"store failing", goodToken, "job-2", errStore, http.StatusInternalServerError, "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			ta.term.err = tt.jobsErr
			res := ta.do(t, http.MethodGet, "/api/v1/jobs/"+tt.id, tt.token)
			wantProblem(t, res, tt.wantCode, tt.wantDetail)
			if bytes.Contains(res.body, []byte("disk full")) {
				t.Errorf("body %s shows the store's error", res.body)
			}
		})
	}
}

// Every route that takes a JSON body answers 415 unless the body is
// application/json (in UTF-8 if it names a charset), before it reads it.
// The successes are TestResponsesMatchOpenAPI's, sent with other types;
// every route that takes a POST, PUT or PATCH must be among them or take
// no JSON body.
func TestJSONBodyContentType(t *testing.T) {
	notJSON := map[string]string{
		"":                                  "Content-Type must be application/json",
		"text/plain":                        "Content-Type must be application/json",
		"application/x-www-form-urlencoded": "Content-Type must be application/json", // curl -d
		"multipart/form-data; boundary=x":   "Content-Type must be application/json",
		"application/jsonx":                 "Content-Type must be application/json",
		"application/json; charset":         "Content-Type must be application/json", // unparsable
		"application/json; charset=latin1":  "Content-Type must be application/json with no charset or charset=utf-8",
		"application/json; charset=utf-16":  "Content-Type must be application/json with no charset or charset=utf-8",
	}
	jsonTypes := []string{"application/json", "application/json; charset=utf-8", `Application/JSON;charset="UTF-8"`}
	notDecoded := map[string]bool{ // no body, or one read raw
		"POST /webhooks/stripe":               true, // Stripe's bytes, as signed: TestStripeWebhook
		"POST /api/v1/instances/{id}/suspend": true,
		"POST /api/v1/instances/{id}/resume":  true,
		"POST /api/v1/runs/{id}/cancel":       true,
		"POST /api/v1/billing/portal":         true,
	}
	ta := newTestAPI(t, openapiFakes)
	mux, ok := ta.handler.(*chi.Mux)
	if !ok {
		t.Fatal("Handler is not a chi router")
	}
	covered := map[string]bool{}
	for _, c := range apiCalls {
		route := c.method + " " + mux.Find(chi.NewRouteContext(), c.method, strings.Split(c.path, "?")[0])
		if c.body == "" || c.want/100 != 2 || notDecoded[route] {
			continue
		}
		covered[route] = true
		t.Run(c.name, func(t *testing.T) {
			for ct, detail := range notJSON {
				res := ta.sendAs(t, c.method, c.path, c.token, ct, c.body)
				wantProblem(t, res, http.StatusUnsupportedMediaType, detail)
			}
			for _, ct := range jsonTypes {
				if res := ta.sendAs(t, c.method, c.path, c.token, ct, c.body); res.code != c.want {
					t.Errorf("%s %s as %s = %d, want %d (body %s)", c.method, c.path, ct, res.code, c.want, res.body)
				}
			}
		})
	}
	for route := range routesOf(t, ta.handler) {
		method, _, _ := strings.Cut(route, " ")
		if (method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch) && !covered[route] && !notDecoded[route] {
			t.Errorf("%s: no JSON body sent to it; add a success to apiCalls, or to notDecoded if it takes none", route)
		}
	}
}

// sendAs is send with the body's Content-Type (none if empty).
func (ta *testAPI) sendAs(t *testing.T, method, path, token, contentType, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, ta.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("http.NewRequest: %v", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return ta.roundTrip(t, req)
}

// decodeStrict takes one JSON value with known fields, each once, at
// every depth: encoding/json would keep the last of a duplicated key,
// where another reader of the same body may take the first.
func TestDecodeStrict(t *testing.T) {
	type item struct {
		A string `json:"a"`
	}
	type body struct {
		Plan  string            `json:"plan"`
		Tags  map[string]string `json:"tags"`
		Items []item            `json:"items"`
		Args  json.RawMessage   `json:"args"`
	}
	tests := []struct{ name, body, want string }{
		{"fields", `{"plan":"a","tags":{"plan":"b"},"items":[{"a":"1"},{"a":"2"}],"args":{"plan":"c"}}`, ""},
		{"a key that differs in case", `{"tags":{"Ring":"a","ring":"b"}}`, ""},
		{"a duplicated field", `{"plan":"a","plan":"b"}`, `malformed body: duplicate key "plan"`},
		{"a duplicate spelled with an escape", `{"plan":"a","\u0070lan":"b"}`, `malformed body: duplicate key "plan"`},
		{"a duplicated map key", `{"tags":{"ring":"a","ring":"b"}}`, `malformed body: duplicate key "ring" in /tags`},
		{"a duplicate in an array's object", `{"items":[{"a":"1"},{"a":"1","a":"2"}]}`, `malformed body: duplicate key "a" in /items/1`},
		{"a duplicate in raw JSON", `{"args":{"x":{"y":1,"y":2}}}`, `malformed body: duplicate key "y" in /args/x`},
		{"a duplicate after invalid UTF-8", "{\"tags\":{\"\xff\":\"\"},\"plan\":\"a\",\"plan\":\"b\"}", `malformed body: duplicate key "plan"`},
		{"a duplicated unknown field", `{"size":1,"size":2}`, `malformed body: duplicate key "size"`},
		{"an unknown field", `{"plan":"a","size":1}`, `malformed body: json: unknown field "size"`},
		{"two values", `{"plan":"a"} {"plan":"b"}`, "malformed body: want one JSON value"},
		{"malformed", `{"plan":`, "malformed body: unexpected EOF"},
		{"nothing", ``, "malformed body: EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v body
			err := decodeStrict([]byte(tt.body), &v)
			var he httpError
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("decodeStrict(%s) = %v, want nil", tt.body, err)
			case tt.want != "" && (!errors.As(err, &he) || he.Code != http.StatusBadRequest || he.Msg != tt.want):
				t.Errorf("decodeStrict(%s) = %v, want 400 %q", tt.body, err, tt.want)
			}
		})
	}
}
