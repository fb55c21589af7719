package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/fleetsim"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/internal/proctest"
)

// The whole path with real processes: the control plane binary, the
// simulator (stackpro-sim, its agents split over processes, each a real
// NATS connection with its own key) and stackctl as an operator runs it.

func TestMain(m *testing.M) {
	code := m.Run()
	proctest.Cleanup()
	os.Exit(code)
}

// seed writes n instances with enrollment tokens into a new data dir, as
// provisioning would have left them for agents about to enroll, and the
// simulator's credentials file.
func seed(t testing.TB, data string, n int) (agentsFile string) {
	t.Helper()
	st, err := store.Open(filepath.Join(data, "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	insts := make([]fleet.Instance, n)
	for i := range n {
		insts[i] = fleet.Instance{ID: fmt.Sprintf("i-sim%05d", i), Provider: "sim", CreatedAt: now,
			Customer: fmt.Sprintf("cus_%05d", i), Plan: "starter", Region: "local", Lifecycle: fleet.LifecycleActive}
	}
	if err := st.PutInstances(insts...); err != nil {
		t.Fatal(err)
	}
	creds := make([]fleetsim.Credential, n)
	for i, inst := range insts {
		tok, err := st.MintToken(inst.ID, 24*time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		creds[i] = fleetsim.Credential{InstanceID: inst.ID, Token: tok}
	}
	var buf bytes.Buffer
	if err := fleetsim.WriteCredentials(&buf, creds); err != nil {
		t.Fatal(err)
	}
	agentsFile = filepath.Join(data, "agents.jsonl")
	if err := os.WriteFile(agentsFile, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return agentsFile
}

// process is a child process whose output the test reads as it grows.
type process struct {
	cmd    *exec.Cmd
	out    *proctest.Output
	exited chan error
}

func start(t testing.TB, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(filepath.Join(proctest.Binaries(t), name), args...), out: &proctest.Output{}, exited: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out)
		}
	})
	return p
}

// controlPlane runs the binary on data until killed.
func controlPlane(t testing.TB, data, httpAddr, natsAddr string) *process {
	t.Helper()
	cp := start(t, "stackpro-controlplane", "dev", "--data", data, "--http", httpAddr, "--nats", natsAddr, "--demo-instances", "0")
	proctest.Within(t, 2*time.Minute, "the control plane to be ready", func() bool {
		select {
		case err := <-cp.exited:
			t.Fatalf("control plane exited: %v\n%s", err, cp.out)
		default:
		}
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return cp
}

// stackctl runs one stackctl command and returns its stdout and exit code.
func stackctl(t testing.TB, url, token string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(proctest.Binaries(t), "stackctl"), args...)
	cmd.Env = append(os.Environ(), "STACKPRO_URL="+url, "STACKPRO_TOKEN="+token, "STACKPRO_CONFIG="+filepath.Join(t.TempDir(), "none.json"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if t.Failed() || code != 0 {
		t.Logf("stackctl %s → %d\nstderr: %s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String(), code
}

func post(t testing.TB, url, token, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

func getJSON(t testing.TB, url, token string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// TestFleetCommandsEndToEnd runs the proofs against real processes:
// 1,000 simulated agents in two simulator processes, the control plane
// binary, and stackctl. A run with max errors 5% over a fleet 10% failing
// stops near its budget; offline agents come out undeliverable; a control
// plane killed (SIGKILL) mid-run and started again finishes the run, and
// no agent ran the command twice.
func TestFleetCommandsEndToEnd(t *testing.T) {
	const n = 1000
	data := t.TempDir()
	agentsFile := seed(t, data, n)
	httpAddr, natsAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
	cp := controlPlane(t, data, httpAddr, natsAddr)
	raw, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	token, url := strings.TrimSpace(string(raw)), "http://"+httpAddr
	simLog := &proctest.Output{}
	sim, err := fleetsim.StartProcesses(context.Background(), filepath.Join(proctest.Binaries(t), "stackpro-sim"), []string{
		"--nats", "nats://" + natsAddr, "--agents", agentsFile, "--per-process", "500", "--fail", "10%", "--heartbeat", "5s"}, simLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sim.Stop()
		if t.Failed() {
			t.Logf("simulator output:\n%s", simLog)
		}
	})
	proctest.Within(t, 3*time.Minute, "1,000 simulated agents to connect", func() bool {
		st := sim.Stats()
		return st.Processes == 2 && st.Connected == n
	})

	type report struct {
		Run     rollout.Run      `json:"run"`
		Targets []rollout.Target `json:"targets"`
	}
	t.Run("error budget", func(t *testing.T) {
		var report report
		out, code := stackctl(t, url, token, "run", "ping", "--select", "all", "--max-concurrency", "20", "--max-errors", "5%", "--json")
		if err := json.Unmarshal([]byte(out), &report); err != nil {
			t.Fatalf("stackctl run --json: %v\n%s", err, out)
		}
		run := report.Run
		if code != 6 || run.State != rollout.RunStopped {
			t.Errorf("exit %d, run %s: want 6 and stopped", code, run.State)
		}
		if errs := run.Errors(); errs < 51 || errs > 51+20 {
			t.Errorf("%d errors, want 51 to 71 (the budget of 50, one more, and what was in flight)", errs)
		}
		if run.Counts[rollout.TargetSkipped] == 0 || run.Total != n {
			t.Errorf("counts %v of %d: want skipped targets", run.Counts, run.Total)
		}
	})
	t.Run("offline agents", func(t *testing.T) {
		if err := sim.Send("offline 5%"); err != nil {
			t.Fatal(err)
		}
		proctest.Within(t, time.Minute, "50 agents to go offline", func() bool { return sim.Stats().Connected == n-50 })
		var report report
		out, code := stackctl(t, url, token, "run", "agent.version", "--select", "all", "--max-concurrency", "100%", "--max-errors", "100%",
			"--timeout", "5s", "--json")
		if err := json.Unmarshal([]byte(out), &report); err != nil {
			t.Fatalf("stackctl run --json: %v\n%s", err, out)
		}
		c := report.Run.Counts
		if code != 5 || c[rollout.TargetUndeliverable] != 50 || c[rollout.TargetSucceeded]+c[rollout.TargetFailed] != n-50 {
			t.Errorf("exit %d, counts %v: want 5, with 50 undeliverable and the rest answered", code, c)
		}
		if err := sim.Send("normal"); err != nil {
			t.Fatal(err)
		}
		proctest.Within(t, time.Minute, "every agent back online", func() bool { return sim.Stats().Connected == n })
	})
	t.Run("control plane killed mid-run", func(t *testing.T) {
		before := sim.Stats().Ran
		out, code := stackctl(t, url, token, "run", "facts", "--select", "all", "--max-concurrency", "2", "--max-errors", "100%", "--detach")
		id := strings.TrimSpace(out)
		if code != 0 || !strings.HasPrefix(id, "r-") {
			t.Fatalf("stackctl run --detach: %d %q", code, out)
		}
		var run rollout.Run
		proctest.Within(t, time.Minute, "the run to be under way", func() bool {
			getJSON(t, url+"/api/v1/runs/"+id, token, &run)
			return run.Sent >= 100
		})
		if run.Done() {
			t.Fatalf("run finished before the kill: %+v", run)
		}
		if err := cp.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-cp.exited
		cp = controlPlane(t, data, httpAddr, natsAddr)
		var report report
		out, code = stackctl(t, url, token, "runs", "show", id, "--follow", "--json")
		if err := json.Unmarshal([]byte(out), &report); err != nil {
			t.Fatalf("stackctl runs show --json: %v\n%s", err, out)
		}
		c := report.Run.Counts
		if code != 0 || report.Run.State != rollout.RunCompleted || c[rollout.TargetSucceeded] != n {
			t.Errorf("exit %d, resumed run %s %v: want 0, completed, every target succeeded", code, report.Run.State, c)
		}
		// Every agent ran this run's command once: none ran it twice. A
		// second run, of ping to every agent, is the marker: an agent takes
		// the control plane's commands in the order sent, so once all have
		// answered the ping, any second copy of facts ran before it. The
		// simulator's counts once it has stopped are final.
		out, code = stackctl(t, url, token, "run", "ping", "--select", "all", "--max-concurrency", "100%", "--max-errors", "100%", "--json")
		if err := json.Unmarshal([]byte(out), &report); err != nil {
			t.Fatalf("stackctl run --json: %v\n%s", err, out)
		}
		if c := report.Run.Counts; code != 0 || c[rollout.TargetSucceeded] != n {
			t.Fatalf("marker run: exit %d, counts %v; want every agent to answer", code, c)
		}
		if err := sim.Stop(); err != nil {
			t.Errorf("stopping the simulator: %v", err)
		}
		if ran := sim.Stats().Ran - before; ran != 2*n {
			t.Errorf("the agents ran %d commands (facts, then ping), want %d: each once", ran, 2*n)
		}
	})
}
