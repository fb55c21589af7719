package dashboardapi

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

func TestCustomerStatus(t *testing.T) {
	ta := newTestAPI(t, nil)
	ta.tracker.Update("i-a", func(inst *fleet.Instance) {
		inst.Subdomain, inst.Lifecycle, inst.Job = "acme", fleet.LifecycleActive, fakeJob.ID
	})
	ta.tracker.Heartbeat(protocol.Heartbeat{InstanceID: "i-a", AgentVersion: "1.0.0", Health: protocol.HealthOK,
		Stack: &protocol.StackStatus{AppliedVersion: 1, Services: []protocol.ServiceState{
			{Service: "crm", State: "running", Health: "healthy"},
			{Service: "files", State: "running"},
			{Service: "email", State: "exited"},
		}}}, time.Now())

	var got customerStatus
	decode(t, ta.do(t, http.MethodGet, "/api/v1/customers/cus_a/status", tokenCustomerA), "application/json", &got)
	want := map[string]string{"crm": "healthy", "files": "running", "email": "exited"}
	if got.InstanceID != "i-a" || got.Status != fleet.StatusOnline || got.Subdomain != "acme" || fmt.Sprint(got.Services) != fmt.Sprint(want) {
		t.Errorf("status = %+v, want i-a online acme with services %v", got, want)
	}
	if m := got.Metrics; m == nil || m.UptimeSeconds != 3600 || m.StorageUsed != 10<<30 || m.StorageTotal != 40<<30 || m.Bandwidth != 1500 {
		t.Errorf("metrics = %+v, want uptime 3600, storage 10/40 GiB, bandwidth 1500", got.Metrics)
	}
	if got.Job == nil || got.Job.ID != fakeJob.ID || got.Job.Step != "delete" {
		t.Errorf("job = %+v, want %s at its second step", got.Job, fakeJob.ID)
	}
	// Another customer's status, and a customer with no instance, are 404s.
	wantProblem(t, ta.do(t, http.MethodGet, "/api/v1/customers/cus_a/status", tokenCustomerB), http.StatusNotFound, "customer not found")
	wantProblem(t, ta.do(t, http.MethodGet, "/api/v1/customers/cus_none/status", tokenOperator), http.StatusNotFound,
		"the customer has no instance yet")
}

func TestFleetOverview(t *testing.T) {
	ta := newTestAPI(t, nil)
	var got fleetOverview
	decode(t, ta.do(t, http.MethodGet, "/api/v1/fleet", tokenOperator), "application/json", &got)
	if got.Total != 2 || got.Connected != 1 || got.ByStatus["online"] != 1 || got.ByStatus["provisioning"] != 1 ||
		got.ByAgentVersion["1.0.0"] != 1 || got.ByAgentVersion["unknown"] != 1 || got.ByRegion["unknown"] != 2 {
		t.Errorf("overview = %+v", got)
	}
}

func TestInstancesPaged(t *testing.T) {
	ta := newTestAPI(t, nil)
	for i := range 7 {
		ta.tracker.Put(fleet.Instance{ID: fmt.Sprintf("i-p%d", i), Customer: "cus_p", Plan: "starter"})
	}
	var ids []string
	cursor, pages := "", 0
	for {
		var got instanceList
		decode(t, ta.do(t, http.MethodGet, "/api/v1/instances?customer=cus_p&limit=3&cursor="+cursor, tokenOperator), "application/json", &got)
		pages++
		for _, inst := range got.Instances {
			ids = append(ids, inst.ID)
		}
		if got.NextCursor == "" {
			break
		}
		cursor = got.NextCursor
		if pages == 1 { // an instance that goes between pages changes nothing else
			ta.tracker.Remove("i-p5")
		}
	}
	if strings.Join(ids, " ") != "i-p0 i-p1 i-p2 i-p3 i-p4 i-p6" || pages != 2 {
		t.Errorf("paged through %v in %d pages", ids, pages)
	}
	for _, q := range []string{"limit=0", "limit=501", "limit=x", "cursor=!!!"} {
		if res := ta.do(t, http.MethodGet, "/api/v1/instances?"+q, tokenOperator); res.code != http.StatusBadRequest {
			t.Errorf("?%s: %d, want 400", q, res.code)
		}
	}
}

func TestTimelineAndJobs(t *testing.T) {
	ta := newTestAPI(t, nil)
	var tl timelinePage
	decode(t, ta.do(t, http.MethodGet, "/api/v1/instances/i-a/timeline", tokenCustomerA), "application/json", &tl)
	if len(tl.Entries) != 2 || tl.Entries[0].Kind != "event" || tl.Entries[1].Kind != "job" || tl.Entries[1].Step != "stop" {
		t.Errorf("timeline = %+v, want the event then the job's step, newest first", tl.Entries)
	}
	var jobs jobList
	decode(t, ta.do(t, http.MethodGet, "/api/v1/instances/i-a/jobs", tokenCustomerA), "application/json", &jobs)
	if len(jobs.Jobs) != 1 || jobs.Jobs[0].ID != fakeJob.ID {
		t.Errorf("jobs = %+v", jobs)
	}
	wantProblem(t, ta.do(t, http.MethodGet, "/api/v1/instances/i-a/timeline", tokenCustomerB), http.StatusNotFound, "instance not found")
}

func TestMetricsHistoryWindow(t *testing.T) {
	ta := newTestAPI(t, nil)
	var h fleet.MetricsHistory
	decode(t, ta.do(t, http.MethodGet, "/api/v1/instances/i-a/metrics?window=24h", tokenCustomerA), "application/json", &h)
	if len(h.Points) != 1 || h.To.Sub(h.From) != 24*time.Hour {
		t.Errorf("history = %+v, want one point over 24h", h)
	}
	for q, detail := range map[string]string{
		"window=2h":      "window: want one of 1h, 6h, 24h, 7d, 30d",
		"from=yesterday": "from: want an RFC 3339 time",
		"from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z": "from must be before to",
	} {
		wantProblem(t, ta.do(t, http.MethodGet, "/api/v1/instances/i-a/metrics?"+q, tokenCustomerA), http.StatusBadRequest, detail)
	}
}

func TestCORS(t *testing.T) {
	ta := newTestAPI(t, func(o *Options) { o.CORSOrigins = []string{"https://app.example.com"} })
	req, _ := http.NewRequest(http.MethodOptions, ta.srv.URL+"/api/v1/instances", nil)
	req.Header.Set("Origin", "https://app.example.com")
	req.Header.Set("Access-Control-Request-Method", "GET")
	req.Header.Set("Access-Control-Request-Headers", "authorization")
	res := ta.roundTrip(t, req)
	if res.code/100 != 2 || res.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("preflight from the frontend: %d %v", res.code, res.header)
	}
	req.Header.Set("Origin", "https://evil.example.com")
	if res := ta.roundTrip(t, req); res.header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight from another origin allowed: %v", res.header)
	}
	get, _ := http.NewRequest(http.MethodGet, ta.srv.URL+"/api/v1/instances", nil)
	get.Header.Set("Origin", "https://app.example.com")
	get.Header.Set("Authorization", "Bearer "+goodToken)
	if res := ta.roundTrip(t, get); !strings.Contains(res.header.Get("Access-Control-Expose-Headers"), "X-Request-Id") {
		t.Errorf("X-Request-Id not exposed to the frontend: %v", res.header)
	}
}

func TestHTTPMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	ta := newTestAPI(t, func(o *Options) { o.Registry = reg })
	ta.do(t, http.MethodGet, "/api/v1/instances/i-a", goodToken)
	ta.do(t, http.MethodGet, "/api/v1/instances/i-zz", goodToken)
	ta.do(t, http.MethodGet, "/nowhere", "")
	want := map[string]int{
		`route="/api/v1/instances/{id}",method="GET",code="200"`: 1,
		`route="/api/v1/instances/{id}",method="GET",code="404"`: 1,
		`route="unmatched",method="GET",code="404"`:              1,
	}
	n, err := testutil.GatherAndCount(reg, "stackpro_http_request_duration_seconds")
	if err != nil || n != len(want) {
		t.Errorf("%d series (%v), want %d", n, err, len(want))
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestStepSeverity(t *testing.T) {
	for outcome, want := range map[string]protocol.Severity{
		"submitted": protocol.SeverityInfo, "ok": protocol.SeverityInfo, "succeeded": protocol.SeverityInfo,
		"retry": protocol.SeverityWarning, "undo retry": protocol.SeverityWarning, "undone": protocol.SeverityWarning,
		"failed": protocol.SeverityError,
	} {
		if got := stepSeverity(outcome); got != want {
			t.Errorf("stepSeverity(%q) = %s, want %s", outcome, got, want)
		}
	}
}
