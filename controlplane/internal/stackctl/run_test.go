package stackctl

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"
)

func TestRunExitCodes(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		name  string
		args  []string
		code  int
		state rollout.RunState
		// out must be in stdout (the summary), errOut in stderr.
		out, errOut []string
	}{
		{name: "every target succeeds", args: []string{"ping", "--select", "plan=pro"}, code: ExitOK,
			state: rollout.RunCompleted, out: []string{"succeeded 2", "total 2"}},
		{name: "some targets fail", args: []string{"stack.pull", "--select", "all", "--max-errors", "50%"},
			code: ExitTargetsFailed, state: rollout.RunCompleted,
			out:    []string{"failed     1", "timed_out  1", "i-c", "refused (forged) signature does not verify", "i-d", "no answer in 1m0s"},
			errOut: []string{"2 of 4 targets did not succeed"}},
		{name: "the error budget stops it", args: []string{"stack.restart", "--args", `{"service":"web"}`, "--select", "all"},
			code: ExitStopped, state: rollout.RunStopped,
			out: []string{"stopped: 1 errors, more than the 0 allowed", "skipped 1", "i-d skipped"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.stackctl(t, append([]string{"run"}, tt.args...)...)
			wantCode(t, res, tt.code, "run "+strings.Join(tt.args, " "))
			// Columns are compared with their spacing collapsed.
			squeeze := func(s string) string { return strings.Join(strings.Fields(s), " ") }
			for _, want := range append(tt.out, "State: "+string(tt.state)) {
				if !strings.Contains(squeeze(res.stdout), squeeze(want)) {
					t.Errorf("stdout lacks %q:\n%s", want, res.stdout)
				}
			}
			for _, want := range tt.errOut {
				if !strings.Contains(res.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, res.stderr)
				}
			}
		})
	}
}

func TestRunRefused(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		name string
		args []string
		code int
		// errOut must be in stderr.
		errOut string
	}{
		{"bad selector", []string{"run", "ping", "--select", "colour=red"}, ExitUsage, `unknown key "colour"`},
		{"no selector", []string{"run", "ping"}, ExitUsage, "--select is required"},
		{"unknown command", []string{"run", "rm", "--select", "all"}, ExitUsage, `unknown command "rm"`},
		{"command.result", []string{"run", "command.result", "--select", "all"}, ExitUsage, `unknown command "command.result"`},
		{"bad limit", []string{"run", "ping", "--select", "all", "--max-concurrency", "150%"}, ExitUsage, "--max-concurrency"},
		{"args not an object", []string{"run", "ping", "--select", "all", "--args", "[1]"}, ExitUsage, "--args: want a JSON object"},
		{"bad timeout", []string{"run", "ping", "--select", "all", "--timeout", "2h"}, ExitUsage, "--timeout"},
		{"selection of nothing (422)", []string{"run", "ping", "--select", "region=mars-1"}, ExitUsage, "422 Unprocessable Entity: invalid run: the selection region=mars-1 matches no instance (request id "},
		{"unknown run", []string{"runs", "show", "r-404"}, ExitNotFound, "404 Not Found: run not found"},
		{"unknown run to follow", []string{"runs", "show", "r-404", "--follow"}, ExitNotFound, "run not found"},
		{"unknown run to cancel", []string{"runs", "cancel", "r-404"}, ExitNotFound, "run not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.stackctl(t, tt.args...)
			wantCode(t, res, tt.code, strings.Join(tt.args, " "))
			if !strings.Contains(res.stderr, tt.errOut) {
				t.Errorf("stderr %q lacks %q", res.stderr, tt.errOut)
			}
		})
	}

	res := exec(context.Background(), "", "--url", e.url, "--token", "sp_nobody", "run", "ping", "--select", "all")
	wantCode(t, res, ExitAuth, "run with a refused token")
	res = exec(context.Background(), "", "--url", e.url, "--token", tokenCustomer, "runs", "ls")
	wantCode(t, res, ExitAuth, "runs ls with a customer's token (403)")
	if n := e.runs.started(); n != 0 {
		t.Errorf("refused runs started %d runs", n)
	}
}

func TestRunProgressWithoutTerminal(t *testing.T) {
	e := newTestEnv(t)
	res := e.stackctl(t, "run", "ping", "--select", "all", "--max-errors", "2", "--max-concurrency", "1")
	wantCode(t, res, ExitTargetsFailed, "run")
	if strings.ContainsAny(res.stderr, "\r\x1b") {
		t.Errorf("progress without a terminal redraws lines:\n%q", res.stderr)
	}
	line := regexp.MustCompile(`(?m)^run r-1: running, (\d)/4 done \(([a-z_ 0-9,]+)\), \d+s$`)
	got := line.FindAllStringSubmatch(res.stderr, -1)
	if len(got) == 0 {
		t.Fatalf("no progress line in stderr:\n%s", res.stderr)
	}
	if got[0][1] != "0" || got[0][2] != "pending 3, running 1" {
		t.Errorf("first progress line = %q, want 0/4 done with 1 running", got[0][0])
	}
	for i := 1; i < len(got); i++ {
		if got[i][0] == got[i-1][0] {
			t.Errorf("progress repeats a line that did not change: %q", got[i][0])
		}
	}
}

func TestRunJSON(t *testing.T) {
	e := newTestEnv(t)
	res := e.stackctl(t, "run", "facts", "--select", "all", "--max-errors", "5", "--json")
	wantCode(t, res, ExitTargetsFailed, "run --json")
	var rep runReport
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("--json output does not decode: %v\n%s", err, res.stdout)
	}
	if rep.Run.ID != "r-1" || rep.Run.State != rollout.RunCompleted || rep.Run.Total != 4 || rep.Run.Counts[rollout.TargetSucceeded] != 2 ||
		rep.Run.Spec.Command != "facts" || rep.Run.CreatedBy != "oscar" {
		t.Errorf("run = %+v", rep.Run)
	}
	var got []string
	for _, tg := range rep.Targets {
		got = append(got, tg.Instance+" "+string(tg.State))
	}
	if want := "i-c failed,i-d timed_out"; strings.Join(got, ",") != want {
		t.Errorf("targets = %v, want %s", got, want)
	}

	res = e.stackctl(t, "runs", "ls", "--json")
	wantCode(t, res, ExitOK, "runs ls --json")
	var runs []rollout.Run
	if err := json.Unmarshal([]byte(res.stdout), &runs); err != nil || len(runs) != 1 || runs[0].ID != "r-1" {
		t.Errorf("runs ls --json = %s (%v)", res.stdout, err)
	}
	res = e.stackctl(t, "runs", "ls")
	wantCode(t, res, ExitOK, "runs ls")
	if !regexp.MustCompile(`(?m)^r-1 +facts +all +completed +4/4 +2 +\d+s ago +oscar$`).MatchString(res.stdout) {
		t.Errorf("runs ls:\n%s", res.stdout)
	}

	res = e.stackctl(t, "runs", "show", "r-1", "--targets", "--json")
	wantCode(t, res, ExitOK, "runs show --targets --json")
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil || len(rep.Targets) != 4 {
		t.Errorf("runs show --targets --json = %s (%v)", res.stdout, err)
	}
	res = e.stackctl(t, "runs", "show", "r-1", "--state", "succeeded")
	wantCode(t, res, ExitOK, "runs show --state")
	if !strings.Contains(res.stdout, "i-a") || !strings.Contains(res.stdout, "i-b") || strings.Contains(res.stdout, "i-c") {
		t.Errorf("runs show --state succeeded:\n%s", res.stdout)
	}
}

func TestRunDetachCancelFollow(t *testing.T) {
	e := newTestEnv(t)
	res := e.stackctl(t, "run", "stack.status", "--select", "tag.env=prod", "--detach")
	wantCode(t, res, ExitOK, "run --detach")
	id := strings.TrimSpace(res.stdout)
	if id != "r-1" {
		t.Fatalf("run --detach printed %q, want the run id", res.stdout)
	}
	res = e.stackctl(t, "runs", "cancel", id)
	wantCode(t, res, ExitOK, "runs cancel")
	if !strings.Contains(res.stdout, "cancelled") {
		t.Errorf("runs cancel said %q", res.stdout)
	}
	res = e.stackctl(t, "runs", "show", id, "--follow")
	wantCode(t, res, ExitCancelled, "runs show --follow of a cancelled run")
	if !strings.Contains(res.stdout, "cancelled: cancelled by oscar") {
		t.Errorf("summary lacks the reason:\n%s", res.stdout)
	}
	res = e.stackctl(t, "runs", "cancel", id)
	wantCode(t, res, ExitFailure, "cancelling a finished run (409)")
	if !strings.Contains(res.stderr, "409 Conflict") {
		t.Errorf("stderr %q, want the conflict", res.stderr)
	}
}

func TestRunInterrupted(t *testing.T) {
	e := newTestEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.runs.setOnPoll(func(_ string, polls int) {
		if polls == 2 {
			cancel()
		}
	})
	res := e.stackctlCtx(t, ctx, "run", "ping", "--select", "all", "--max-errors", "5")
	wantCode(t, res, ExitInterrupted, "run interrupted")
	if want := "run r-1 continues; follow with `stackctl runs show r-1 --follow`, cancel with `stackctl runs cancel r-1`"; !strings.Contains(res.stderr, want) {
		t.Errorf("stderr %q lacks %q", res.stderr, want)
	}
	if n := e.runs.cancelled(); n != 0 {
		t.Errorf("interrupting cancelled the run (%d cancels)", n)
	}
	e.runs.setOnPoll(nil)
	res = e.stackctl(t, "runs", "show", "r-1", "--follow")
	wantCode(t, res, ExitTargetsFailed, "following the run again")
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		res := exec(context.Background(), "", "completion", shell)
		wantCode(t, res, ExitOK, "completion "+shell)
		if !strings.Contains(res.stdout, "stackctl") || len(res.stdout) < 1000 {
			t.Errorf("completion %s: %d bytes, not a script", shell, len(res.stdout))
		}
	}
	for _, tt := range []struct {
		prefix string
		want   []string
	}{
		{"", protocol.OperatorCommands},
		{"stack.p", []string{"stack.pull"}},
		{"command.", nil},
	} {
		res := exec(context.Background(), "", "__complete", "run", tt.prefix)
		wantCode(t, res, ExitOK, "completing run's command")
		// The last line is cobra's directive (":4").
		lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
		if got := lines[:len(lines)-1]; !slices.Equal(got, tt.want) {
			t.Errorf("completions of %q = %v, want %v", tt.prefix, got, tt.want)
		}
	}
}
