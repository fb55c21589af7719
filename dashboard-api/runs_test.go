package dashboardapi

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"
)

func TestStartRun(t *testing.T) {
	tests := []struct {
		name string
		body string
		want rollout.RunSpec
	}{
		{"defaults for absent limits", `{"command":"ping","select":{"all":true}}`,
			rollout.RunSpec{Command: "ping", Select: fleet.Selection{All: true}, MaxConcurrency: rollout.Limit{N: 50},
				MaxErrors: rollout.Limit{N: 0}, Timeout: rollout.Duration(time.Minute)}},
		{"zero is not absent", `{"command":"ping","select":{"all":true},"max_concurrency":"0","max_errors":"0%","timeout":"1s"}`,
			rollout.RunSpec{Command: "ping", Select: fleet.Selection{All: true}, MaxConcurrency: rollout.Limit{N: 0},
				MaxErrors: rollout.Limit{N: 0, Percent: true}, Timeout: rollout.Duration(time.Second)}},
		{"every field", `{"command":"stack.restart","args":{"service":"crm"},"select":{"ids":["i-a"],"tags":{"ring":"canary"}},` +
			`"max_concurrency":"10%","max_errors":"5","timeout":"2m30s"}`,
			rollout.RunSpec{Command: "stack.restart", Args: json.RawMessage(`{"service":"crm"}`),
				Select:         fleet.Selection{IDs: []string{"i-a"}, Tags: map[string]string{"ring": "canary"}},
				MaxConcurrency: rollout.Limit{N: 10, Percent: true}, MaxErrors: rollout.Limit{N: 5}, Timeout: rollout.Duration(150 * time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			res := ta.send(t, http.MethodPost, "/api/v1/runs", goodToken, tt.body)
			if res.code != http.StatusCreated {
				t.Fatalf("POST /api/v1/runs = %d, want 201 (body %s)", res.code, res.body)
			}
			var run rollout.Run
			decode(t, res, "application/json", &run)
			if got := res.header.Get("Location"); got != "/api/v1/runs/"+run.ID || run.ID == "" {
				t.Errorf("Location = %q for run %q, want /api/v1/runs/<its id>", got, run.ID)
			}
			if run.CreatedBy != "alice" || run.State != rollout.RunRunning || run.Spec.Command != tt.want.Command {
				t.Errorf("run = %+v, want a running %s by alice", run, tt.want.Command)
			}
			starts := ta.runs.starts()
			if len(starts) != 1 {
				t.Fatalf("StartRun calls = %+v, want one", starts)
			}
			if got := starts[0]; !sameSpec(got.spec, tt.want) || got.by != "alice" {
				t.Errorf("StartRun(%+v, %q), want (%+v, alice)", got.spec, got.by, tt.want)
			}
			wantLog(t, ta.log.String(), `msg="run started"`, "run="+run.ID, "command="+tt.want.Command, "by=alice",
				"request_id="+res.header.Get("X-Request-Id"))
		})
	}
}

// wantLog checks the log says each of wants.
func wantLog(t *testing.T, log string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(log, want) {
			t.Errorf("log = %q, want %s", log, want)
		}
	}
}

// sameSpec compares specs by their JSON, which is what the engine keeps.
func sameSpec(x, y rollout.RunSpec) bool {
	a, errA := json.Marshal(x)
	b, errB := json.Marshal(y)
	return errA == nil && errB == nil && string(a) == string(b)
}

func TestStartRunRefused(t *testing.T) {
	catalog := "want one of ping, agent.version, facts, stack.status, stack.restart, stack.up, stack.down, stack.pull, stack.logs"
	tests := []struct {
		name       string
		body       string
		wantCode   int
		wantDetail []string // each a part of the detail
		wantStart  bool     // the engine was asked
	}{
		{"every problem at once", `{"command":"nope","select":{"all":true,"ids":["i-a"],"status":"sleeping","tags":{"Bad Key":"x"}},` +
			`"max_concurrency":"ten","max_errors":"150%","timeout":"soon"}`, http.StatusUnprocessableEntity, []string{
			`command "nope": ` + catalog,
			`max_concurrency: limit "ten": want a number or a percentage (0-100%)`,
			`max_errors: limit "150%": want a number or a percentage (0-100%)`,
			`timeout "soon": want a duration like 60s or 2m`,
			"select: set all, or at least one of ids, plan, region, version, status, tags (not both)",
			`select: unknown status "sleeping"`,
			`select: tag key "Bad Key"`,
		}, false},
		{"unknown command", `{"command":"sh","select":{"all":true}}`, http.StatusUnprocessableEntity,
			[]string{`command "sh": ` + catalog}, false},
		{"the control plane's own command", `{"command":"command.result","args":{"nonce":"n"},"select":{"all":true}}`,
			http.StatusUnprocessableEntity, []string{`command "command.result": ` + catalog}, false},
		{"the old names", `{"command":"stack.stop","select":{"all":true}}`, http.StatusUnprocessableEntity,
			[]string{`command "stack.stop": ` + catalog}, false},
		{"no command", `{"select":{"all":true}}`, http.StatusUnprocessableEntity, []string{"command is required"}, false},
		{"empty selection", `{"command":"ping","select":{}}`, http.StatusUnprocessableEntity,
			[]string{"select: set all, or at least one of"}, false},
		{"no selection", `{"command":"ping"}`, http.StatusUnprocessableEntity, []string{"select: set all, or at least one of"}, false},
		{"timeout out of range", `{"command":"ping","select":{"all":true},"timeout":"1h"}`, http.StatusUnprocessableEntity,
			[]string{"timeout: want 1s to 30m0s"}, false},
		{"negative limit", `{"command":"ping","select":{"all":true},"max_errors":"-1"}`, http.StatusUnprocessableEntity,
			[]string{`max_errors: limit "-1"`}, false},
		{"malformed", `{"command":"ping","select":{"all":true},"args":[1,`, http.StatusBadRequest,
			[]string{"malformed body"}, false},
		{"limit as a number", `{"command":"ping","select":{"all":true},"max_concurrency":50}`, http.StatusBadRequest,
			[]string{"malformed body: json: cannot unmarshal number"}, false},
		{"unknown field", `{"command":"ping","select":{"all":true},"batch":5}`, http.StatusBadRequest,
			[]string{`malformed body: json: unknown field "batch"`}, false},
		{"unknown selector", `{"command":"ping","select":{"zone":"a"}}`, http.StatusBadRequest,
			[]string{`malformed body: json: unknown field "zone"`}, false},
		{"too large", `{"command":"ping","select":{"ids":["` + strings.Repeat("i", maxRunBody) + `"]}}`,
			http.StatusRequestEntityTooLarge, []string{fmt.Sprintf("body larger than %d bytes", maxRunBody)}, false},
		{"the engine refuses it", `{"command":"ping","select":{"plan":"gold"}}`, http.StatusUnprocessableEntity,
			[]string{"rollout: the selection matches no instance"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			res := ta.send(t, http.MethodPost, "/api/v1/runs", goodToken, tt.body)
			var p problem
			decode(t, res, "application/problem+json", &p)
			if res.code != tt.wantCode {
				t.Errorf("status = %d, want %d (detail %q)", res.code, tt.wantCode, p.Detail)
			}
			for _, want := range tt.wantDetail {
				if !strings.Contains(p.Detail, want) {
					t.Errorf("detail = %q, want it to say %q", p.Detail, want)
				}
			}
			if strings.Contains(p.Detail, "\n") {
				t.Errorf("detail = %q, want one line", p.Detail)
			}
			if started := len(ta.runs.starts()) > 0; started != tt.wantStart {
				t.Errorf("StartRun called = %v, want %v", started, tt.wantStart)
			}
			if res.header.Get("Location") != "" || strings.Contains(ta.log.String(), "run started") {
				t.Errorf("a refused run has a Location (%q) or an audit line", res.header.Get("Location"))
			}
		})
	}
}

// pageAll reads every page of path with limit, decoding each into a page
// of T under field, and returns the items in order.
func pageAll[T any](t *testing.T, ta *testAPI, path, field string, limit int) (items []T, pages int) {
	t.Helper()
	cursor := ""
	for {
		q := url.Values{"limit": {fmt.Sprint(limit)}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		res := ta.do(t, http.MethodGet, path+sep+q.Encode(), goodToken)
		if res.code != http.StatusOK {
			t.Fatalf("GET %s = %d (body %s)", path, res.code, res.body)
		}
		var pg map[string]json.RawMessage
		decode(t, res, "application/json", &pg)
		var got []T
		if err := json.Unmarshal(pg[field], &got); err != nil || got == nil {
			t.Fatalf("page %d: %s is %s (%v), want a list", pages+1, field, pg[field], err)
		}
		items, pages = append(items, got...), pages+1
		if pg["next_cursor"] == nil {
			return items, pages
		}
		if err := json.Unmarshal(pg["next_cursor"], &cursor); err != nil || pages > 100 {
			t.Fatalf("next_cursor %s (%v) after %d pages", pg["next_cursor"], err, pages)
		}
	}
}

// bigRun adds a run of 250 targets, i-000 to i-249 handed out in reverse
// order, every third failed, and returns their ids in order.
func bigRun(ta *testAPI) []string {
	var ids []string
	var targets []rollout.Target
	for i := range 250 {
		id := fmt.Sprintf("i-%03d", i)
		ids = append(ids, id)
		state := rollout.TargetSucceeded
		if i%3 == 0 {
			state = rollout.TargetFailed
		}
		targets = append(targets, rollout.Target{Instance: id, State: state})
	}
	slices.Reverse(targets)
	ta.runs.add(rollout.Run{ID: "run-big", CreatedAt: created.Add(-time.Hour), State: rollout.RunCompleted, Total: 250}, targets)
	return ids
}

func TestRunTargetsPaging(t *testing.T) {
	ta := newTestAPI(t, nil)
	ids := bigRun(ta)
	targets, pages := pageAll[rollout.Target](t, ta, "/api/v1/runs/run-big/targets", "targets", 100)
	var got []string
	for _, tg := range targets {
		got = append(got, tg.Instance)
	}
	if !slices.Equal(got, ids) || pages != 3 {
		t.Errorf("%d pages of %d targets %v..., want 3 pages of the 250 in order, each once", pages, len(got), got[:min(len(got), 5)])
	}

	failed, _ := pageAll[rollout.Target](t, ta, "/api/v1/runs/run-big/targets?state=failed", "targets", 30)
	var wantFailed []string
	for i, id := range ids {
		if i%3 == 0 {
			wantFailed = append(wantFailed, id)
		}
	}
	got = got[:0]
	for _, tg := range failed {
		if tg.State != rollout.TargetFailed {
			t.Errorf("?state=failed gave %+v", tg)
		}
		got = append(got, tg.Instance)
	}
	if !slices.Equal(got, wantFailed) {
		t.Errorf("?state=failed gave %d targets, want the %d failed ones in order", len(got), len(wantFailed))
	}

	none, pages := pageAll[rollout.Target](t, ta, "/api/v1/runs/run-big/targets?state=timed_out", "targets", 100)
	if len(none) != 0 || pages != 1 {
		t.Errorf("?state=timed_out gave %d targets over %d pages, want one empty page", len(none), pages)
	}
}

func TestRunTargetsErrors(t *testing.T) {
	states := "pending, delivered, running, succeeded, failed, timed_out, undeliverable, skipped"
	tests := []struct {
		name, path, token string
		wantCode          int
		wantDetail        string
	}{
		{"unknown state", "/api/v1/runs/run-000/targets?state=done", goodToken, http.StatusBadRequest, "state: want one of " + states},
		{"a run state", "/api/v1/runs/run-000/targets?state=completed", goodToken, http.StatusBadRequest, "state: want one of " + states},
		{"bad limit", "/api/v1/runs/run-000/targets?limit=0", goodToken, http.StatusBadRequest, "limit: want a number from 1 to 500"},
		{"unknown run", "/api/v1/runs/run-nope/targets", goodToken, http.StatusNotFound, "run not found"},
		{"as a customer", "/api/v1/runs/run-000/targets", tokenCustomerA, http.StatusForbidden, "this needs the operator or admin role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			wantProblem(t, ta.do(t, http.MethodGet, tt.path, tt.token), tt.wantCode, tt.wantDetail)
		})
	}
}

func TestListRuns(t *testing.T) {
	ta := newTestAPI(t, nil)
	bigRun(ta) // the oldest
	for range 3 {
		if res := ta.send(t, http.MethodPost, "/api/v1/runs", goodToken, `{"command":"facts","select":{"all":true}}`); res.code != http.StatusCreated {
			t.Fatalf("POST /api/v1/runs = %d (body %s)", res.code, res.body)
		}
	}
	runs, pages := pageAll[rollout.Run](t, ta, "/api/v1/runs", "runs", 2)
	var got []string
	for _, run := range runs {
		got = append(got, run.ID)
	}
	if want := []string{"run-004", "run-003", "run-002", "run-000", "run-big"}; !slices.Equal(got, want) || pages != 3 {
		t.Errorf("%d pages of runs %v, want 3 pages of %v (newest first)", pages, got, want)
	}

	res := ta.do(t, http.MethodGet, "/api/v1/runs/run-000", goodToken)
	var run rollout.Run
	decode(t, res, "application/json", &run)
	if res.code != http.StatusOK || run.ID != runDone.ID || run.State != runDone.State || !maps.Equal(run.Counts, runDone.Counts) {
		t.Errorf("GET /api/v1/runs/run-000 = %d %+v, want %+v", res.code, run, runDone)
	}
	wantProblem(t, ta.do(t, http.MethodGet, "/api/v1/runs/run-nope", goodToken), http.StatusNotFound, "run not found")
}

func TestCancelRun(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.send(t, http.MethodPost, "/api/v1/runs", tokenOperator, `{"command":"stack.pull","select":{"ids":["i-a","i-b"]}}`)
	var started rollout.Run
	decode(t, res, "application/json", &started)

	res = ta.do(t, http.MethodPost, "/api/v1/runs/"+started.ID+"/cancel", goodToken)
	var run rollout.Run
	decode(t, res, "application/json", &run)
	if res.code != http.StatusOK || run.State != rollout.RunCancelled || run.Reason != "cancelled by alice" {
		t.Errorf("cancel = %d %+v, want 200 and the run cancelled by alice", res.code, run)
	}
	wantLog(t, ta.log.String(), `msg="run cancelled"`, "run="+started.ID, "by=alice", "request_id="+res.header.Get("X-Request-Id"))

	wantProblem(t, ta.do(t, http.MethodPost, "/api/v1/runs/"+started.ID+"/cancel", goodToken), http.StatusConflict,
		"rollout: run "+started.ID+" already cancelled")
	wantProblem(t, ta.do(t, http.MethodPost, "/api/v1/runs/run-000/cancel", goodToken), http.StatusConflict,
		"rollout: run run-000 already stopped")
	wantProblem(t, ta.do(t, http.MethodPost, "/api/v1/runs/run-nope/cancel", goodToken), http.StatusNotFound, "run not found")
	wantProblem(t, ta.do(t, http.MethodPost, "/api/v1/runs/run-000/cancel", tokenCustomerA), http.StatusForbidden,
		"this needs the operator or admin role")
}

func TestSetTags(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.send(t, http.MethodPut, "/api/v1/instances/i-a/tags", tokenOperator, `{"tags":{"ring":"canary","team":"eu-1"}}`)
	var inst fleet.Instance
	decode(t, res, "application/json", &inst)
	want := map[string]string{"ring": "canary", "team": "eu-1"}
	if res.code != http.StatusOK || inst.ID != "i-a" || !maps.Equal(inst.Tags, want) {
		t.Errorf("PUT tags = %d %+v, want 200 and i-a with %v", res.code, inst, want)
	}
	decode(t, ta.do(t, http.MethodGet, "/api/v1/instances/i-a", tokenCustomerA), "application/json", &inst)
	if !maps.Equal(inst.Tags, want) {
		t.Errorf("GET i-a: tags %v, want %v", inst.Tags, want)
	}
	wantLog(t, ta.log.String(), `msg="tags set"`, "instance=i-a", "ring:canary", "by=oscar")

	res = ta.send(t, http.MethodPut, "/api/v1/instances/i-a/tags", tokenOperator, `{"tags":{}}`)
	inst = fleet.Instance{}
	decode(t, res, "application/json", &inst)
	if res.code != http.StatusOK || len(inst.Tags) != 0 {
		t.Errorf("PUT {} = %d with tags %v, want 200 and none", res.code, inst.Tags)
	}
}

func TestSetTagsErrors(t *testing.T) {
	tests := []struct {
		name, path, token, body string
		wantCode                int
		wantDetail              []string
	}{
		{"every problem at once", "/api/v1/instances/i-a/tags", goodToken,
			`{"tags":{"Ring":"x","-a":"y","ok":"` + strings.Repeat("v", 256) + `"}}`, http.StatusUnprocessableEntity,
			[]string{`tag key "Ring"`, `tag key "-a"`, `tag "ok": value longer than 255 bytes`}},
		{"too many", "/api/v1/instances/i-a/tags", goodToken, manyTags(51), http.StatusUnprocessableEntity, []string{"at most 50 tags"}},
		{"no tags", "/api/v1/instances/i-a/tags", goodToken, `{}`, http.StatusBadRequest, []string{`want a JSON body {"tags": {...}}`}},
		{"null tags", "/api/v1/instances/i-a/tags", goodToken, `{"tags":null}`, http.StatusBadRequest, []string{`{"tags": {}} clears them`}},
		{"not strings", "/api/v1/instances/i-a/tags", goodToken, `{"tags":{"n":1}}`, http.StatusBadRequest, []string{"malformed body"}},
		{"unknown field", "/api/v1/instances/i-a/tags", goodToken, `{"tags":{},"labels":{}}`, http.StatusBadRequest,
			[]string{`unknown field "labels"`}},
		{"unknown instance", "/api/v1/instances/i-nope/tags", goodToken, `{"tags":{}}`, http.StatusNotFound, []string{"instance not found"}},
		{"as a customer", "/api/v1/instances/i-a/tags", tokenCustomerA, `{"tags":{}}`, http.StatusForbidden,
			[]string{"this needs the operator or admin role"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			res := ta.send(t, http.MethodPut, tt.path, tt.token, tt.body)
			var p problem
			decode(t, res, "application/problem+json", &p)
			if res.code != tt.wantCode {
				t.Errorf("status = %d, want %d (detail %q)", res.code, tt.wantCode, p.Detail)
			}
			for _, want := range tt.wantDetail {
				if !strings.Contains(p.Detail, want) {
					t.Errorf("detail = %q, want it to say %q", p.Detail, want)
				}
			}
			inst, err := ta.tracker.Get("i-a", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(inst.Tags) != 0 {
				t.Errorf("i-a's tags = %v after a refusal, want none", inst.Tags)
			}
		})
	}
}

// manyTags is a body with n valid tags.
func manyTags(n int) string {
	tags := map[string]string{}
	for i := range n {
		tags[fmt.Sprintf("k%d", i)] = "v"
	}
	body, _ := json.Marshal(tagsRequest{Tags: tags})
	return string(body)
}

// countingCommander counts the commands it sends, answering each ok.
type countingCommander struct{ sent atomic.Int64 }

func (c *countingCommander) Command(_ context.Context, id string, req protocol.CommandRequest) (protocol.CommandReply, error) {
	c.sent.Add(1)
	return protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: id, OK: true}, nil
}

// The single command route sends only the operators' part of the catalog.
func TestCommandCatalog(t *testing.T) {
	cmd := &countingCommander{}
	ta := newTestAPI(t, func(o *Options) { o.Commander = cmd })
	for _, name := range []string{"stack.start", "stack.stop", "command.result", "sh -c reboot"} {
		res := ta.send(t, http.MethodPost, "/api/v1/instances/i-a/commands", goodToken, fmt.Sprintf(`{"name":%q}`, name))
		wantProblem(t, res, http.StatusUnprocessableEntity, fmt.Sprintf("command %q: want one of %s", name,
			"ping, agent.version, facts, stack.status, stack.restart, stack.up, stack.down, stack.pull, stack.logs"))
	}
	if n := cmd.sent.Load(); n != 0 {
		t.Errorf("%d refused commands were sent", n)
	}
	if log := ta.log.String(); strings.Contains(log, "command sent") {
		t.Errorf("log = %q, want no command sent", log)
	}
	for _, name := range []string{"stack.up", "stack.down", "facts"} {
		if res := ta.send(t, http.MethodPost, "/api/v1/instances/i-a/commands", goodToken, fmt.Sprintf(`{"name":%q}`, name)); res.code != http.StatusOK {
			t.Errorf("%s: %d, want 200 (body %s)", name, res.code, res.body)
		}
	}
	if n := cmd.sent.Load(); n != 3 {
		t.Errorf("%d commands sent, want 3", n)
	}
}
