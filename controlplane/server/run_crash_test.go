package server_test

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// TestRunSurvivesCrashWithRealAgents kills the control plane (SIGKILL) in
// the middle of a fleet run of stack.restart over real agents, when some
// targets are running the command and another waits its turn; lets the
// commands running finish while it is down, so that their answers are
// lost and only command.result can tell it what became of them; starts it
// again on the same data dir; and checks that the run completes with
// every target run exactly once.
//
// Each agent counts what it ran: facts' commands_run, which the agent
// raises in the transaction that records a command's outcome. That is
// product behaviour an operator reads too, rather than a mark a test hook
// would leave, and it counts runs, not requests: a target run again,
// under its nonce let through twice or under a new one, shows as two.
//
// stack.restart is the command because it is slow enough to be caught
// running (a compose restart takes seconds), does something real to every
// target, and leaves a mark the test can wait for while the control plane
// is down (the container's start time); the catalog has no command that
// only waits, and should not.
func TestRunSurvivesCrashWithRealAgents(t *testing.T) {
	t.Parallel()
	const n = 3
	data := filepath.Join(t.TempDir(), "data")
	httpAddr, natsAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
	t.Cleanup(func() { destroyInstances(t, data) })
	cp := startControlPlane(t, data, httpAddr, natsAddr, n)
	var ids []string
	proctest.Within(t, 3*time.Minute, "3 instances online, each running its starter stack", func() bool {
		ids = ids[:0]
		for _, inst := range cp.instances() {
			if inst.Status == fleet.StatusOnline && stackHealthy(inst, 1) {
				ids = append(ids, inst.ID)
			}
		}
		return len(ids) == n
	})
	before := restarts(t, cp, ids)
	started := map[string]string{}
	for _, id := range ids {
		started[id] = crmStarted(t, id)
	}

	// Two targets at a time: the third waits until one has finished.
	body := `{"command":"stack.restart","args":{"service":"crm"},"select":{"ids":["` + strings.Join(ids, `","`) +
		`"]},"max_concurrency":"2","max_errors":"0","timeout":"2m"}`
	var run rollout.Run
	if code := cp.send(http.MethodPost, "/api/v1/runs", body, &run); code != http.StatusCreated {
		t.Fatalf("POST /api/v1/runs: %d", code)
	}
	proctest.Until(t, "a target running and another waiting", func() bool {
		run = getRun(cp, run.ID)
		if run.Done() {
			t.Fatalf("the run finished before the kill: %+v", run)
		}
		return run.Counts[rollout.TargetRunning] > 0 && run.Counts[rollout.TargetPending] > 0
	})
	if err := cp.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-cp.exited

	unanswered, unsent := atCrash(t, data, run.ID)
	if len(unanswered) == 0 || unsent == 0 {
		t.Fatalf("at the kill the store held targets %v sent and unanswered and %d unsent, want some of each", unanswered, unsent)
	}
	proctest.Until(t, "the commands running at the kill to restart their service", func() bool {
		return !slices.ContainsFunc(unanswered, func(id string) bool { return crmStarted(t, id) == started[id] })
	})
	cp = startControlPlane(t, data, httpAddr, natsAddr, n)
	proctest.Within(t, 3*time.Minute, "the resumed run to finish", func() bool {
		run = getRun(cp, run.ID)
		return run.Done()
	})
	if run.State != rollout.RunCompleted || run.Counts[rollout.TargetSucceeded] != n {
		var targets struct{ Targets []rollout.Target }
		cp.api(http.MethodGet, "/api/v1/runs/"+run.ID+"/targets", &targets)
		t.Errorf("resumed run %s %v, want completed with every target succeeded; targets %+v", run.State, run.Counts, targets.Targets)
	}
	// The run is over, so every request it sent has been answered: a
	// second run would have been counted by now.
	after := restarts(t, cp, ids)
	for _, id := range ids {
		if after[id] != before[id]+1 {
			t.Errorf("%s ran stack.restart %d times in the run, want once", id, after[id]-before[id])
		}
	}
	cp.stop()
}

// getRun reads run id afresh: decoding into an earlier run would keep
// counts of states that have since emptied.
func getRun(cp *controlPlane, id string) rollout.Run {
	cp.t.Helper()
	var run rollout.Run
	if code := cp.api(http.MethodGet, "/api/v1/runs/"+id, &run); code != http.StatusOK {
		cp.t.Fatalf("GET run %s: %d", id, code)
	}
	return run
}

// restarts asks each agent of ids how many times it has run stack.restart.
func restarts(t *testing.T, cp *controlPlane, ids []string) map[string]uint64 {
	t.Helper()
	counts := map[string]uint64{}
	for _, id := range ids {
		var reply protocol.CommandReply
		var facts protocol.Facts
		code := cp.send(http.MethodPost, "/api/v1/instances/"+id+"/commands", `{"name":"facts"}`, &reply)
		if err := json.Unmarshal(reply.Result, &facts); code != http.StatusOK || !reply.OK || err != nil {
			t.Fatalf("facts of %s: %d %+v (%v)", id, code, reply, err)
		}
		counts[id] = facts.CommandsRun[protocol.CommandStackRestart]
	}
	return counts
}

// crmStarted asks the Docker engine when instance id's crm container last
// started.
func crmStarted(t *testing.T, id string) string {
	t.Helper()
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+id,
		"--filter", "label=com.docker.compose.service=crm").Output()
	if err != nil || len(strings.Fields(string(out))) != 1 {
		t.Fatalf("the crm container of %s: %q %v", id, out, err)
	}
	at, err := exec.Command("docker", "inspect", "-f", "{{.State.StartedAt}}", strings.TrimSpace(string(out))).Output()
	if err != nil {
		t.Fatalf("docker inspect: %v", err)
	}
	return strings.TrimSpace(string(at))
}

// atCrash reads run id as a killed control plane left it in the store of
// data: the targets it had sent without an answer recorded, which the
// restarted one must ask about, and how many it had not sent.
func atCrash(t *testing.T, data, id string) (unanswered []string, unsent int) {
	t.Helper()
	st, err := store.Open(filepath.Join(data, "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	run, err := st.Run(id)
	if err != nil {
		t.Fatal(err)
	}
	targets, err := st.RunTargets(id)
	if err != nil {
		t.Fatal(err)
	}
	// Targets come in instance id order, the order they are sent in;
	// run.Sent of them were.
	for _, tg := range targets[:run.Sent] {
		if !tg.State.Final() {
			unanswered = append(unanswered, tg.Instance)
		}
	}
	return unanswered, len(targets) - run.Sent
}
