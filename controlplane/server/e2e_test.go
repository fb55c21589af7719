package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/provision/local"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/internal/dockertest"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// The end-to-end tests build the real binaries once and run them as
// processes: a control plane on free ports, and agents it launches through
// the local provider. Each has its own data dir, ports and instances, so
// they run in parallel: most of their time is spent waiting on processes
// and the Docker engine.

func TestMain(m *testing.M) {
	code := m.Run()
	proctest.Cleanup()
	dockertest.RemoveImage()
	os.Exit(code)
}

// controlPlane is one run of stackpro-controlplane.
type controlPlane struct {
	t        testing.TB
	cmd      *exec.Cmd
	out      *proctest.Output
	data     string
	httpAddr string
	natsAddr string
	exited   chan error
}

// fastFleet makes agents report often and statuses turn quickly.
var fastFleet = []string{
	"STACKPRO_FLEET_HEARTBEAT_INTERVAL=300ms",
	"STACKPRO_FLEET_METRICS_INTERVAL=1s",
	"STACKPRO_FLEET_STALE_AFTER=2s",
	"STACKPRO_FLEET_OFFLINE_AFTER=6s",
}

// startControlPlane runs the control plane in dev mode with env added to
// the environment; entries of env that start with -- are flags instead.
func startControlPlane(t testing.TB, data, httpAddr, natsAddr string, demo int, env ...string) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, out: &proctest.Output{}, data: data, httpAddr: httpAddr, natsAddr: natsAddr, exited: make(chan error, 1)}
	args := []string{"dev", "--data", data, "--http", httpAddr, "--nats", natsAddr, "--demo-instances", strconv.Itoa(demo)}
	vars := slices.DeleteFunc(slices.Clone(env), func(e string) bool { return strings.HasPrefix(e, "--") })
	for _, e := range env {
		if strings.HasPrefix(e, "--") {
			args = append(args, e)
		}
	}
	cp.cmd = exec.Command(filepath.Join(proctest.Binaries(t), "stackpro-controlplane"), args...)
	cp.cmd.Env = append(append(append(os.Environ(), fastFleet...), "STACKPRO_STACKS_IMAGE="+dockertest.DemoImage(t)), vars...)
	cp.cmd.Stdout, cp.cmd.Stderr = cp.out, cp.out
	if err := cp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cp.exited <- cp.cmd.Wait() }()
	t.Cleanup(func() {
		_ = cp.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("control plane output:\n%s", cp.out)
		}
	})
	cp.waitReady()
	return cp
}

func (cp *controlPlane) waitReady() {
	cp.t.Helper()
	proctest.Until(cp.t, "the control plane to be ready", func() bool {
		select {
		case err := <-cp.exited:
			cp.t.Fatalf("control plane exited: %v\n%s", err, cp.out)
		default:
		}
		resp, err := http.Get("http://" + cp.httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// stop sends SIGTERM and waits for a clean exit.
func (cp *controlPlane) stop() {
	cp.t.Helper()
	if err := cp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		cp.t.Fatal(err)
	}
	select {
	case err := <-cp.exited:
		if err != nil {
			cp.t.Fatalf("control plane exit: %v\n%s", err, cp.out)
		}
	case <-time.After(30 * time.Second):
		cp.t.Fatalf("control plane did not stop within 30s of SIGTERM\n%s", cp.out)
	}
}

func (cp *controlPlane) token() string {
	cp.t.Helper()
	raw, err := os.ReadFile(filepath.Join(cp.data, "admin.token"))
	if err != nil {
		cp.t.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}

// api calls the HTTP API with the admin token and decodes a JSON answer.
func (cp *controlPlane) api(method, path string, out any) int {
	cp.t.Helper()
	return cp.send(method, path, "", out)
}

// send is api with a request body.
func (cp *controlPlane) send(method, path, body string, out any) int {
	cp.t.Helper()
	req, _ := http.NewRequest(method, "http://"+cp.httpAddr+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+cp.token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cp.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if out != nil && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusAccepted) {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			cp.t.Fatalf("%s %s: decoding: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

func (cp *controlPlane) instances() []fleet.Instance {
	cp.t.Helper()
	var list struct{ Instances []fleet.Instance }
	if code := cp.api(http.MethodGet, "/api/v1/instances", &list); code != http.StatusOK {
		cp.t.Fatalf("GET /api/v1/instances: %d", code)
	}
	return list.Instances
}

// waitJob polls a job until it has finished.
func (cp *controlPlane) waitJob(id string) provision.Job {
	cp.t.Helper()
	var job provision.Job
	proctest.Until(cp.t, "job "+id+" to finish", func() bool {
		return cp.api(http.MethodGet, "/api/v1/jobs/"+id, &job) == http.StatusOK && job.State.Finished()
	})
	return job
}

func countStatus(insts []fleet.Instance, s fleet.Status) int {
	n := 0
	for _, inst := range insts {
		if inst.Status == s {
			n++
		}
	}
	return n
}

// agentPID reads the pid file the local provider keeps for an instance.
func agentPID(t testing.TB, data, id string) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(data, "instances", id, "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// destroyInstances terminates every instance a test launched, as the
// local provider does: agents and stacks would outlive the test otherwise.
func destroyInstances(t testing.TB, data string) {
	t.Helper()
	p, err := local.New(filepath.Join(data, "instances"), "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(data, "instances", "i-*"))
	for _, dir := range dirs {
		if err := p.Terminate(context.Background(), filepath.Base(dir), ""); err != nil {
			t.Errorf("cleaning up %s: %v", dir, err)
		}
	}
}

func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

func TestFleetEndToEnd(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	httpAddr, natsAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
	t.Cleanup(func() { destroyInstances(t, data) })
	cp := startControlPlane(t, data, httpAddr, natsAddr, 3)

	// Without a token the API answers 401.
	resp, err := http.Get("http://" + httpAddr + "/api/v1/instances")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no token: %d, want 401", resp.StatusCode)
	}

	var insts []fleet.Instance
	proctest.Until(t, "3 instances online, each running its starter stack", func() bool {
		insts = cp.instances()
		for _, inst := range insts {
			if !stackHealthy(inst, 1) {
				return false
			}
		}
		return len(insts) == 3 && countStatus(insts, fleet.StatusOnline) == 3
	})
	started := map[string]map[string]time.Time{} // instance → service → start time
	for _, inst := range insts {
		started[inst.ID] = serviceStarts(inst)
	}
	enrolledAt := map[string]time.Time{}
	for _, inst := range insts {
		enrolledAt[inst.ID] = inst.EnrolledAt
		if inst.LastSeen.IsZero() || inst.AgentVersion == "" {
			t.Errorf("instance %s lacks last_seen or agent_version: %+v", inst.ID, inst)
		}
	}
	var one struct {
		fleet.Instance
		Metrics *struct {
			Memory struct {
				TotalBytes uint64 `json:"total_bytes"`
			}
		}
	}
	proctest.Until(t, "metrics of an instance", func() bool {
		cp.api(http.MethodGet, "/api/v1/instances/"+insts[0].ID, &one)
		return one.Metrics != nil && one.Metrics.Memory.TotalBytes > 0
	})
	if code := cp.api(http.MethodGet, "/api/v1/instances/i-doesnotexist", nil); code != http.StatusNotFound {
		t.Errorf("unknown instance: %d, want 404", code)
	}
	testObservability(t, cp, insts)

	t.Run("a second control plane on the same data dir fails fast", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(proctest.Binaries(t), "stackpro-controlplane"), "dev", "--data", data,
			"--http", proctest.FreeAddr(t), "--nats", proctest.FreeAddr(t), "--demo-instances", "0")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "locked by another process") {
			t.Errorf("second control plane: err=%v, output:\n%s", err, out)
		}
	})

	// Kill one agent: it turns stale, then offline; nothing restarts it.
	killed := insts[0].ID
	if err := syscall.Kill(agentPID(t, data, killed), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	status := func(id string) fleet.Status {
		var inst fleet.Instance
		cp.api(http.MethodGet, "/api/v1/instances/"+id, &inst)
		return inst.Status
	}
	proctest.Until(t, killed+" stale", func() bool { return status(killed) == fleet.StatusStale })
	proctest.Until(t, killed+" offline", func() bool { return status(killed) == fleet.StatusOffline })

	// Restart the control plane: the same three instances, two online,
	// and no agent enrolls again.
	cp.stop()
	if !strings.Contains(cp.out.String(), "control plane stopped") {
		t.Errorf("no clean shutdown in the log")
	}
	cp2 := startControlPlane(t, data, httpAddr, natsAddr, 3)
	proctest.Until(t, "2 instances online after the restart, the killed one's stack still reported", func() bool {
		insts = cp2.instances()
		return countStatus(insts, fleet.StatusOnline) == 2
	})
	if len(insts) != 3 {
		t.Fatalf("after restart: %d instances, want the same 3: %+v", len(insts), insts)
	}
	for _, inst := range insts {
		// Neither the agent nor the control plane restarted a container.
		if got := serviceStarts(inst); len(got) != 2 || !maps.EqualFunc(got, started[inst.ID], time.Time.Equal) {
			t.Errorf("%s: service start times %v after the restart, were %v", inst.ID, got, started[inst.ID])
		}
		at, ok := enrolledAt[inst.ID]
		if !ok {
			t.Errorf("new instance %s after restart", inst.ID)
		}
		if !inst.EnrolledAt.Equal(at) {
			t.Errorf("%s enrolled again: %v, was %v", inst.ID, inst.EnrolledAt, at)
		}
	}
	if s := status(killed); s != fleet.StatusOffline {
		t.Errorf("killed instance after restart: %s, want offline", s)
	}
	if strings.Contains(cp2.out.String(), "agent enrolled") {
		t.Errorf("an agent enrolled again after the restart")
	}

	var online []string
	for _, inst := range insts {
		if inst.ID != killed {
			online = append(online, inst.ID)
		}
	}

	// Restart an agent: it comes back without enrolling and restarts nothing.
	restartAgent(t, data, online[0])
	proctest.Until(t, "the restarted agent online", func() bool {
		var inst fleet.Instance
		cp2.api(http.MethodGet, "/api/v1/instances/"+online[0], &inst)
		return inst.Status == fleet.StatusOnline && stackHealthy(inst, 1)
	})
	var inst fleet.Instance
	cp2.api(http.MethodGet, "/api/v1/instances/"+online[0], &inst)
	if got := serviceStarts(inst); !maps.EqualFunc(got, started[online[0]], time.Time.Equal) {
		t.Errorf("restarting the agent restarted containers: %v, were %v", got, started[online[0]])
	}

	t.Run("provision through the API", func(t *testing.T) { testProvision(t, cp2) })
	t.Run("targets", func(t *testing.T) { testTargets(t, cp2, data, online[0]) })
	t.Run("commands", func(t *testing.T) { testCommands(t, cp2, online[0], killed) })

	// Terminate an instance: its agent stops, its directory goes, and the API forgets it.
	victim := online[1]
	pid := agentPID(t, data, victim)
	var job provision.Job
	if code := cp2.api(http.MethodDelete, "/api/v1/instances/"+victim, &job); code != http.StatusAccepted {
		t.Fatalf("DELETE: %d, want 202", code)
	}
	if job = cp2.waitJob(job.ID); job.State != provision.JobSucceeded {
		t.Fatalf("terminate job: %+v", job)
	}
	if alive(pid) {
		t.Errorf("agent of terminated %s still runs", victim)
	}
	if out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+victim).Output(); err != nil || len(out) > 0 {
		t.Errorf("containers of terminated %s remain: %q %v", victim, out, err)
	}
	if _, err := os.Stat(filepath.Join(data, "instances", victim)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory of terminated %s still there: %v", victim, err)
	}
	if code := cp2.api(http.MethodGet, "/api/v1/instances/"+victim, nil); code != http.StatusNotFound {
		t.Errorf("terminated instance: %d, want 404", code)
	}
	cp2.stop()
}

// restartAgent stops instance id's agent and starts it again, as a
// restart of its agent would.
func restartAgent(t *testing.T, data, id string) {
	t.Helper()
	stopAgent(t, data, id)
	startAgent(t, data, id)
}

func stopAgent(t *testing.T, data, id string) {
	t.Helper()
	pid := agentPID(t, data, id)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	proctest.Until(t, "the agent to stop", func() bool { return !alive(pid) })
}

// startAgent starts instance id's agent the way the local provider does.
func startAgent(t *testing.T, data, id string) {
	t.Helper()
	dir := filepath.Join(data, "instances", id)
	logf, err := os.OpenFile(filepath.Join(dir, "agent.log"), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(proctest.Binaries(t), "stackpro-agent"), "--config", filepath.Join(dir, "bootstrap.yaml"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, "agent.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	bin := filepath.Join(proctest.Binaries(t), "stackpro-controlplane")
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name string
		args []string
		env  []string
		want []string
	}{
		{"malformed config", []string{"serve", "--config", write("bad.yaml", "http: [oops")}, nil,
			[]string{"bad.yaml"}},
		{"unknown key", []string{"serve", "--config", write("unknown.yaml", "data_dir: /tmp\nhttp:\n  adress: x\n")}, nil,
			[]string{"adress", "not found"}},
		{"missing data dir", []string{"serve", "--data", filepath.Join(dir, "nope")}, nil,
			[]string{"data dir", "does not exist"}},
		{"every problem at once", []string{"serve", "--http", "nohost", "--nats", "x:99999"},
			[]string{"STACKPRO_LOG_LEVEL=loud"}, []string{"http.addr", "nats.listen", "log.level"}},
		{"unknown environment variable", []string{"serve"}, []string{"STACKPRO_HTTP_ADRESS=x"},
			[]string{"STACKPRO_HTTP_ADRESS"}},
		{"unknown command", []string{"launch"}, nil, []string{"unknown command"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			cmd.Env = append(os.Environ(), tt.env...)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("err = %v, want exit code 1; output:\n%s", err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	// Not even an empty one: serve must not make the data dir it lacks.
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("serve made the data dir it was told does not exist: stat says %v", err)
	}
}

// testTargets reads and sets an instance's target through the API, backed
// by the real JetStream bucket, and sees the agent roll back a version that
// cannot run.
func testTargets(t *testing.T, cp *controlPlane, data, id string) {
	path := "/api/v1/instances/" + id + "/target"
	var got protocol.Target
	if code := cp.api(http.MethodGet, path, &got); code != http.StatusOK || got.Version != 1 || !strings.Contains(got.Compose, "crm:") {
		t.Fatalf("GET the initial target: %d %+v, want version 1 from the starter template", code, got)
	}
	starter, _ := json.Marshal(map[string]any{"compose": got.Compose, "env": map[string]string{"RELEASE": "3"}})
	// Version 2 names an image that does not exist: compose fails, and the
	// agent goes back to version 1.
	broken := `{"compose":"services:\n  web:\n    image: stackpro-test/missing:0\n","env":{"SUBDOMAIN":"acme"}}`
	if code := cp.send(http.MethodPut, path, broken, &got); code != http.StatusOK || got.Version != 2 {
		t.Fatalf("PUT target: %d %+v, want 200 and version 2", code, got)
	}
	if code := cp.api(http.MethodGet, path, &got); code != http.StatusOK || got.Version != 2 || got.Env["SUBDOMAIN"] != "acme" {
		t.Errorf("GET target: %d %+v", code, got)
	}
	proctest.Until(t, "the agent to roll version 2 back to 1", func() bool {
		var inst fleet.Instance
		cp.api(http.MethodGet, "/api/v1/instances/"+id, &inst)
		return inst.Stack != nil && inst.Stack.FailedVersion == 2 && stackHealthy(inst, 1)
	})
	for _, tt := range []struct {
		name, body string
		code       int
	}{
		{"malformed JSON", `{"compose":`, http.StatusBadRequest},
		{"unknown field", `{"compose":"services: {a: {}}","image":"x"}`, http.StatusBadRequest},
		{"invalid target", `{"compose":"","files":{"../x":""}}`, http.StatusUnprocessableEntity},
	} {
		if code := cp.send(http.MethodPut, path, tt.body, nil); code != tt.code {
			t.Errorf("PUT %s: %d, want %d", tt.name, code, tt.code)
		}
	}
	if code := cp.send(http.MethodPut, "/api/v1/instances/i-doesnotexist/target", broken, nil); code != http.StatusNotFound {
		t.Errorf("PUT target of an unknown instance: %d, want 404", code)
	}
	if code := cp.api(http.MethodGet, path, &got); code != http.StatusOK || got.Version != 2 {
		t.Errorf("bad PUTs changed the target: %d %+v", code, got)
	}
	instance := func() fleet.Instance {
		var inst fleet.Instance
		cp.api(http.MethodGet, "/api/v1/instances/"+id, &inst)
		return inst
	}

	// A good version 3 is applied.
	if code := cp.send(http.MethodPut, path, string(starter), &got); code != http.StatusOK || got.Version != 3 {
		t.Fatalf("PUT version 3: %d %+v", code, got)
	}
	proctest.Until(t, "version 3 applied", func() bool { return stackHealthy(instance(), 3) })

	// A target written while the agent is down is applied when it starts.
	stopAgent(t, data, id)
	if code := cp.send(http.MethodPut, path, string(starter), &got); code != http.StatusOK || got.Version != 4 {
		t.Fatalf("PUT version 4: %d %+v", code, got)
	}
	startAgent(t, data, id)
	proctest.Until(t, "version 4 applied after the agent's start", func() bool { return stackHealthy(instance(), 4) })
}

// testProvision provisions an instance through the API and follows its job
// to active, then suspends and resumes it.
func testProvision(t *testing.T, cp *controlPlane) {
	var started struct {
		Instance fleet.Instance
		Job      provision.Job
	}
	body := `{"customer":"cus_acme","plan":"business","subdomain":"acme"}`
	if code := cp.send(http.MethodPost, "/api/v1/instances", body, &started); code != http.StatusAccepted {
		t.Fatalf("POST /api/v1/instances: %d", code)
	}
	job := cp.waitJob(started.Job.ID)
	if job.State != provision.JobSucceeded {
		t.Fatalf("provision job: %+v", job)
	}
	var inst fleet.Instance
	cp.api(http.MethodGet, "/api/v1/instances/"+started.Instance.ID, &inst)
	if inst.Lifecycle != fleet.LifecycleActive || inst.Customer != "cus_acme" || inst.Plan != "business" ||
		inst.Subdomain != "acme" || !stackHealthy(inst, 1) {
		t.Errorf("provisioned instance: %+v", inst)
	}
	for _, tt := range []struct {
		body string
		code int
	}{
		{`{"customer":"cus_other","plan":"business","subdomain":"acme"}`, http.StatusAccepted}, // fails in its job
		{`{"customer":"cus_x","plan":"platinum"}`, http.StatusUnprocessableEntity},
		{`{"customer":"cus_x","plan":"starter","subdomain":"Not A Label"}`, http.StatusUnprocessableEntity},
		{`{"customer":"cus_x","plan":"starter","extra":1}`, http.StatusBadRequest},
	} {
		if code := cp.send(http.MethodPost, "/api/v1/instances", tt.body, &started); code != tt.code {
			t.Errorf("POST %s: %d, want %d", tt.body, code, tt.code)
		}
	}
	if job := cp.waitJob(started.Job.ID); job.State != provision.JobFailed || !strings.Contains(job.Error, "taken") {
		t.Errorf("provisioning a taken subdomain: %+v, want failed", job)
	}
	for _, action := range []struct {
		path string
		want fleet.Lifecycle
	}{{"suspend", fleet.LifecycleSuspended}, {"resume", fleet.LifecycleActive}} {
		if code := cp.send(http.MethodPost, "/api/v1/instances/"+inst.ID+"/"+action.path, "", &job); code != http.StatusAccepted {
			t.Fatalf("%s: %d", action.path, code)
		}
		if job = cp.waitJob(job.ID); job.State != provision.JobSucceeded {
			t.Fatalf("%s job: %+v", action.path, job)
		}
		cp.api(http.MethodGet, "/api/v1/instances/"+inst.ID, &inst)
		if inst.Lifecycle != action.want {
			t.Errorf("after %s: lifecycle %s", action.path, inst.Lifecycle)
		}
	}
	if code := cp.api(http.MethodGet, "/api/v1/jobs/job-nope", nil); code != http.StatusNotFound {
		t.Errorf("unknown job: %d, want 404", code)
	}
}

// testCommands sends stack commands through the API to a live agent over
// NATS and checks what they did to the real containers.
func testCommands(t *testing.T, cp *controlPlane, id, offline string) {
	path := "/api/v1/instances/" + id + "/commands"
	command := func(body string) protocol.CommandReply {
		t.Helper()
		var reply protocol.CommandReply
		if code := cp.send(http.MethodPost, path, body, &reply); code != http.StatusOK {
			t.Fatalf("POST %s: %d", body, code)
		}
		return reply
	}
	status := func() protocol.StackStatus {
		t.Helper()
		reply := command(`{"name":"stack.status"}`)
		var st protocol.StackStatus
		if err := json.Unmarshal(reply.Result, &st); err != nil || !reply.OK {
			t.Fatalf("stack.status: %+v %v", reply, err)
		}
		return st
	}
	if r := command(`{"name":"ping"}`); !r.OK || r.InstanceID != id {
		t.Errorf("ping: %+v", r)
	}
	st := status()
	before := serviceStarts(fleet.Instance{Stack: &st})
	if st.AppliedVersion != 4 || len(before) != 2 {
		t.Fatalf("stack.status: %+v", st)
	}
	if r := command(`{"name":"stack.restart","args":{"service":"crm"}}`); !r.OK {
		t.Fatalf("stack.restart crm: %+v", r)
	}
	st = status()
	after := serviceStarts(fleet.Instance{Stack: &st})
	if !after["crm"].After(before["crm"]) || !after["files"].Equal(before["files"]) {
		t.Errorf("restart crm: start times %v, were %v; want only crm restarted", after, before)
	}
	var logs struct{ Logs string }
	r := command(`{"name":"stack.logs","args":{"service":"crm","lines":20}}`)
	if err := json.Unmarshal(r.Result, &logs); err != nil || !r.OK || !strings.Contains(logs.Logs, "stackpro-demo crm listening") {
		t.Errorf("stack.logs crm: %+v %q", r, logs.Logs)
	}
	if r := command(`{"name":"stack.down"}`); !r.OK {
		t.Fatalf("stack.down: %+v", r)
	}
	for _, s := range status().Services {
		if s.State != "exited" {
			t.Errorf("after stack.down, %s is %s", s.Service, s.State)
		}
	}
	if r := command(`{"name":"stack.up"}`); !r.OK {
		t.Fatalf("stack.up: %+v", r)
	}
	for _, s := range status().Services {
		if s.State != "running" {
			t.Errorf("after stack.up, %s is %s", s.Service, s.State)
		}
	}
	for _, body := range []string{`{"name":"stack.restart","args":{"service":"--help"}}`, `{"name":"stack.logs","args":"crm"}`} {
		if r := command(body); r.OK || r.Error == "" {
			t.Errorf("%s: %+v, want refused with a reason", body, r)
		}
	}
	if code := cp.send(http.MethodPost, path, `{"name":"shell","args":{"cmd":"id"}}`, nil); code != http.StatusUnprocessableEntity {
		t.Errorf("a command outside the catalog: %d, want 422", code)
	}
	// A fleet run: one signed request per instance, acknowledged, then
	// answered, by the real agents.
	var run rollout.Run
	if code := cp.send(http.MethodPost, "/api/v1/runs", `{"command":"facts","select":{"ids":["`+id+`","`+offline+`"]},"max_concurrency":"100%","max_errors":"100%","timeout":"10s"}`, &run); code != http.StatusCreated {
		t.Fatalf("POST /api/v1/runs: %d", code)
	}
	proctest.Until(t, "the fleet run to finish", func() bool {
		cp.api(http.MethodGet, "/api/v1/runs/"+run.ID, &run)
		return run.Done()
	})
	var targets struct{ Targets []rollout.Target }
	cp.api(http.MethodGet, "/api/v1/runs/"+run.ID+"/targets", &targets)
	if run.State != rollout.RunCompleted || run.Counts[rollout.TargetSucceeded] != 1 || run.Counts[rollout.TargetUndeliverable] != 1 || len(targets.Targets) != 2 {
		t.Fatalf("run %+v targets %+v: want the online agent to answer and the offline one undeliverable", run, targets)
	}
	for _, tg := range targets.Targets {
		var facts protocol.Facts
		if tg.Instance == id && (json.Unmarshal(tg.Result, &facts) != nil || facts.InstanceID != id || facts.CPUs == 0) {
			t.Errorf("facts of %s: %s", id, tg.Result)
		}
	}
	if code := cp.send(http.MethodPost, "/api/v1/instances/"+offline+"/commands", `{"name":"ping"}`, nil); code != http.StatusServiceUnavailable {
		t.Errorf("command to an offline instance: %d, want 503", code)
	}
	if code := cp.send(http.MethodPost, path, `{"nam":"ping"}`, nil); code != http.StatusBadRequest {
		t.Errorf("malformed command: %d, want 400", code)
	}
}

// stackHealthy reports whether inst's agent runs target version with every
// service healthy.
func stackHealthy(inst fleet.Instance, version uint64) bool {
	st := inst.Stack
	if st == nil || st.AppliedVersion != version || len(st.Services) == 0 {
		return false
	}
	for _, s := range st.Services {
		if s.State != "running" || s.Health != "healthy" {
			return false
		}
	}
	return true
}

func serviceStarts(inst fleet.Instance) map[string]time.Time {
	out := map[string]time.Time{}
	if inst.Stack != nil {
		for _, s := range inst.Stack.Services {
			out[s.Service] = s.StartedAt
		}
	}
	return out
}
