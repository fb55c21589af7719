package stackctl

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/rollout"
)

func TestAgo(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	tests := []struct {
		then time.Time
		want string
	}{
		{time.Time{}, "never"},
		{now.Add(4 * time.Second), "just now"},
		{now.Add(-4 * time.Second), "4s ago"},
		{now.Add(-3*time.Minute - 59*time.Second), "3m ago"},
		{now.Add(-47 * time.Hour), "47h ago"},
		{now.Add(-72 * time.Hour), "3d ago"},
	}
	for _, tt := range tests {
		if got := ago(tt.then, now); got != tt.want {
			t.Errorf("ago(%v) = %q, want %q", now.Sub(tt.then), got, tt.want)
		}
	}
}

func TestBar(t *testing.T) {
	tests := []struct {
		n, total int
		want     string
	}{
		{0, 4, "[>         ]"},
		{2, 4, "[=====>    ]"},
		{4, 4, "[==========]"},
		{0, 0, "[==========]"},
	}
	for _, tt := range tests {
		if got := bar(tt.n, tt.total, 10); got != tt.want {
			t.Errorf("bar(%d, %d) = %q, want %q", tt.n, tt.total, got, tt.want)
		}
	}
}

// clock is a time that only moves when told.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestProgressPlainLines(t *testing.T) {
	start := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	clk := &clock{start}
	var out bytes.Buffer
	p := &progress{w: &out, now: clk.now}
	run := rollout.Run{ID: "r-9", State: rollout.RunRunning, Total: 3, CreatedAt: start,
		Counts: map[rollout.TargetState]int{rollout.TargetRunning: 3}}
	p.show(run) // the first line
	p.show(run) // nothing changed
	run.Counts = map[rollout.TargetState]int{rollout.TargetRunning: 2, rollout.TargetSucceeded: 1}
	clk.t = start.Add(500 * time.Millisecond)
	p.show(run) // changed, but within the second
	clk.t = start.Add(1500 * time.Millisecond)
	p.show(run) // changed since the last line, a second later
	clk.t = start.Add(5 * time.Second)
	p.show(run) // nothing new
	p.end()
	want := "run r-9: running, 0/3 done (running 3), 0s\n" +
		"run r-9: running, 1/3 done (running 2, succeeded 1), 1s\n"
	if out.String() != want {
		t.Errorf("plain progress:\n%q\nwant\n%q", out.String(), want)
	}
}

func TestProgressTerminal(t *testing.T) {
	start := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	clk := &clock{start.Add(2 * time.Second)}
	var out bytes.Buffer
	p := &progress{w: &out, tty: true, now: clk.now}
	run := rollout.Run{ID: "r-9", State: rollout.RunRunning, Total: 3, CreatedAt: start,
		Counts: map[rollout.TargetState]int{rollout.TargetRunning: 2, rollout.TargetFailed: 1}}
	p.show(run)
	run.State, run.FinishedAt = rollout.RunStopped, start.Add(3*time.Second)
	run.Counts = map[rollout.TargetState]int{rollout.TargetFailed: 2, rollout.TargetSkipped: 1}
	p.show(run)
	p.end()
	want := "\r" + bar(1, 3, barWidth) + " 1/3  running 2, failed 1  2s\x1b[K" +
		"\r" + bar(3, 3, barWidth) + " 3/3  failed 2, skipped 1  3s\x1b[K\n"
	if out.String() != want {
		t.Errorf("terminal progress:\n%q\nwant\n%q", out.String(), want)
	}
}

func TestAPIErrorExitCodes(t *testing.T) {
	tests := []struct {
		status int
		want   int
	}{
		{http.StatusBadRequest, ExitUsage},
		{http.StatusUnprocessableEntity, ExitUsage},
		{http.StatusUnauthorized, ExitAuth},
		{http.StatusForbidden, ExitAuth},
		{http.StatusNotFound, ExitNotFound},
		{http.StatusConflict, ExitFailure},
		{http.StatusInternalServerError, ExitFailure},
		{http.StatusBadGateway, ExitFailure},
	}
	for _, tt := range tests {
		if got := (&apiError{Status: tt.status}).exitCode(); got != tt.want {
			t.Errorf("exit code of a %d = %d, want %d", tt.status, got, tt.want)
		}
	}
}

func TestAnswerErrorFromAProxy(t *testing.T) {
	req, _ := http.NewRequest(http.MethodGet, "https://ops.example/api/v1/runs", nil)
	res := &http.Response{StatusCode: http.StatusBadGateway, Header: http.Header{"Content-Type": {"text/html"}}}
	err := answerError(req, res, []byte("<html>upstream down</html>\n"))
	if got, want := err.Error(), "GET /api/v1/runs: 502 Bad Gateway: <html>upstream down</html>"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
}
