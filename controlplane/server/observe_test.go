package server_test

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/internal/testenv"
)

// testObservability checks, on a control plane whose n demo instances are
// online, what operators and the frontend read: the fleet overview, the
// customer status, metrics history, the timeline and /metrics (linted by
// promtool).
func testObservability(t *testing.T, cp *controlPlane, insts []fleet.Instance) {
	t.Helper()
	n := len(insts)
	var overview struct {
		Total    int            `json:"total"`
		ByStatus map[string]int `json:"by_status"`
		ByRegion map[string]int `json:"by_region"`
	}
	cp.api(http.MethodGet, "/api/v1/fleet", &overview)
	if overview.Total != n || overview.ByStatus["online"] != n || overview.ByRegion["local"] != n {
		t.Errorf("fleet overview %+v, want %d online in region local", overview, n)
	}

	var status struct {
		Status   fleet.Status      `json:"status"`
		Services map[string]string `json:"services"`
		Metrics  *struct {
			Uptime      uint64 `json:"uptime"`
			StorageUsed uint64 `json:"storage_used"`
		} `json:"metrics"`
	}
	proctest.Until(t, "the demo customer's status with metrics", func() bool {
		return cp.api(http.MethodGet, "/api/v1/customers/demo/status", &status) == http.StatusOK && status.Metrics != nil
	})
	if status.Status != fleet.StatusOnline || len(status.Services) != 2 || status.Metrics.StorageUsed == 0 {
		t.Errorf("customer status %+v, want online with 2 services and storage used", status)
	}

	var history fleet.MetricsHistory
	proctest.Until(t, "two points of metrics history", func() bool {
		cp.api(http.MethodGet, "/api/v1/instances/"+insts[0].ID+"/metrics?window=1h", &history)
		return len(history.Points) >= 2
	})
	if p := history.Points[len(history.Points)-1]; history.Resolution != fleet.ResolutionRaw || p.MemoryTotal == 0 || p.DiskTotal == 0 {
		t.Errorf("history %s, last point %+v", history.Resolution, p)
	}

	// The jobs activate their instances a moment after they turn online.
	wants := []string{
		`stackpro_agents_connected ` + strconv.Itoa(n),
		`stackpro_instances{lifecycle="active",status="online"} ` + strconv.Itoa(n),
		`stackpro_jobs{kind="provision",state="succeeded"} ` + strconv.Itoa(n),
		`stackpro_agent_heartbeats_received_total `,
		`stackpro_http_request_duration_seconds_bucket{code="200",method="GET",route="/api/v1/fleet",`,
	}
	var body string
	proctest.Until(t, "every series in /metrics", func() bool {
		body = cp.get("/metrics")
		for _, want := range wants {
			if !strings.Contains(body, want) {
				t.Logf("/metrics lacks %q so far", want)
				return false
			}
		}
		return true
	})
	// The provision jobs have succeeded (checked above): their logs are whole.
	var timeline struct {
		Entries []struct {
			Kind, Step string
		} `json:"entries"`
	}
	cp.api(http.MethodGet, "/api/v1/instances/"+insts[0].ID+"/timeline?limit=500", &timeline)
	steps := map[string]bool{}
	for _, e := range timeline.Entries {
		steps[e.Kind+":"+e.Step] = true
	}
	if !steps["job:launch"] || !steps["job:wait_healthy"] {
		t.Errorf("timeline has no provisioning steps: %+v", timeline.Entries)
	}

	if m := regexp.MustCompile(`stackpro_agent_heartbeats_received_total (\d+)`).FindStringSubmatch(body); m == nil || m[1] == "0" {
		t.Errorf("no heartbeats counted: %v", m)
	}
	// A subtest, so that without promtool only the lint is skipped.
	t.Run("promtool check metrics", func(t *testing.T) { promtoolCheck(t, body) })
}

// promtoolCheck lints a /metrics answer with Prometheus's own promtool.
func promtoolCheck(t *testing.T, exposition string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		testenv.Missing(t, "no promtool here to lint /metrics with (apt-get install prometheus)")
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// get reads path with the admin token.
func (cp *controlPlane) get(path string) string {
	cp.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+cp.httpAddr+path, nil)
	req.Header.Set("Authorization", "Bearer "+cp.token())
	client := http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		cp.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		cp.t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return buf.String()
}
