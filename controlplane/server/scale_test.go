package server_test

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/internal/proctest"
)

// failingCustomers is the prefix of the customers whose provisioning the
// scale run makes fail at wait_healthy, after a machine, a DNS record and
// credentials exist, so compensation has all of them to undo under load.
const failingCustomers = "cus_fail_"

// provisionMany signs up n customers at once through the API, failing of
// them as failingCustomers, waits for every job to finish and checks the
// outcome: the others active with a healthy stack, the failed ones gone
// without a trace. It returns the time from the first request to the last
// job finished.
func provisionMany(t testing.TB, n, failing int) time.Duration {
	data := filepath.Join(t.TempDir(), "data")
	t.Cleanup(func() { destroyInstances(t, data) })
	cp := startControlPlane(t, data, proctest.FreeAddr(t), proctest.FreeAddr(t), 0,
		"STACKPRO_FLEET_HEARTBEAT_INTERVAL=1s", "STACKPRO_FLEET_METRICS_INTERVAL=30s",
		"STACKPRO_FLEET_STALE_AFTER=5s", "STACKPRO_FLEET_OFFLINE_AFTER=15s",
		"STACKPRO_FAULTS_FAIL_STEP=wait_healthy", "STACKPRO_FAULTS_FAIL_FOR="+failingCustomers)

	jobs := make([]provision.Job, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			customer := fmt.Sprintf("cus_%03d", i)
			if i < failing {
				customer = fmt.Sprintf("%s%03d", failingCustomers, i)
			}
			var started struct{ Job provision.Job }
			body := fmt.Sprintf(`{"customer":%q,"plan":"starter","subdomain":"c%03d"}`, customer, i)
			if code := cp.send(http.MethodPost, "/api/v1/instances", body, &started); code != http.StatusAccepted {
				t.Errorf("POST /api/v1/instances %s: %d", body, code)
			}
			jobs[i] = started.Job
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var elapsed time.Duration
	proctest.Within(t, 10*time.Minute, fmt.Sprintf("%d provision jobs to finish", n), func() bool {
		for i, job := range jobs {
			if !job.State.Finished() && cp.api(http.MethodGet, "/api/v1/jobs/"+job.ID, &jobs[i]) != http.StatusOK {
				return false
			}
		}
		elapsed = time.Since(start)
		for _, job := range jobs {
			if !job.State.Finished() {
				return false
			}
		}
		return true
	})

	logStepTimes(t, jobs)
	active := map[string]bool{}
	for i, job := range jobs {
		want := provision.JobSucceeded
		if i < failing {
			want = provision.JobFailed
		}
		if job.State != want {
			t.Errorf("job %s of customer %d: %s (%s), want %s", job.ID, i, job.State, job.Error, want)
		}
		if want == provision.JobSucceeded {
			active[job.InstanceID] = true
		}
	}
	// A heartbeat's view of a stack is one docker call, which a loaded
	// engine may time out (the agent then reports the error): wait for
	// every stack to be seen healthy again rather than read one heartbeat.
	insts := cp.instances()
	unhealthy := func(inst fleet.Instance) bool { return !stackHealthy(inst, 1) }
	for deadline := time.Now().Add(2 * time.Minute); slices.ContainsFunc(insts, unhealthy) && time.Now().Before(deadline); {
		time.Sleep(time.Second)
		insts = cp.instances()
	}
	for _, inst := range insts {
		if !active[inst.ID] || inst.Lifecycle != fleet.LifecycleActive || !stackHealthy(inst, 1) {
			t.Errorf("instance %s of %s: lifecycle %s, stack %+v", inst.ID, inst.Customer, inst.Lifecycle, inst.Stack)
		}
		delete(active, inst.ID)
	}
	if len(active) > 0 {
		t.Errorf("%d provisioned instances are missing from the API", len(active))
	}
	cp.stop()

	// What the failed jobs compensated is gone: one agent, one stack, one
	// DNS record and one set of credentials per active instance, no more.
	st, err := store.Open(filepath.Join(data, "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if recs, err := st.DNSRecords(); err != nil || len(recs) != n-failing {
		t.Errorf("%d DNS records (%v), want %d", len(recs), err, n-failing)
	}
	for _, job := range jobs {
		tokens, creds, err := st.Access(job.InstanceID)
		if err != nil {
			t.Fatal(err)
		}
		if failed := job.State == provision.JobFailed; failed && tokens+creds != 0 || !failed && creds != 1 {
			t.Errorf("instance %s (%s): %d tokens and %d credentials", job.InstanceID, job.State, tokens, creds)
		}
	}
	agents, _ := exec.Command("pgrep", "-f", "stackpro-agent --config "+data).Output()
	if got := len(strings.Fields(string(agents))); got != n-failing {
		t.Errorf("%d agent processes, want %d", got, n-failing)
	}
	// Other packages' tests run stacks at the same time: count only ours.
	labels, err := exec.Command("docker", "ps", "-a", "--filter", "label=io.stackpro.instance",
		"--format", `{{.Label "io.stackpro.instance"}}`).Output()
	if err != nil {
		t.Fatalf("docker ps: %v", err)
	}
	containers := map[string]int{}
	for _, id := range strings.Fields(string(labels)) {
		containers[id]++
	}
	for _, job := range jobs {
		if want := map[bool]int{true: 2}[job.State == provision.JobSucceeded]; containers[job.InstanceID] != want {
			t.Errorf("instance %s (%s): %d containers, want %d", job.InstanceID, job.State, containers[job.InstanceID], want)
		}
	}
	return elapsed
}

// TestProvisionsAtOnce provisions 20 customers at once with the local
// provider, 2 of them failing late on purpose. All of them share this
// machine's one Docker engine, which cannot start a hundred stacks at once
// without their healthchecks timing out (see BENCHMARKS.md); the hundred
// are BenchmarkProvision's.
func TestProvisionsAtOnce(t *testing.T) {
	t.Parallel()
	t.Logf("20 provisions (2 failing) finished in %s", provisionMany(t, 20, 2).Round(time.Second))
}

// BenchmarkProvision measures signup to active for 1 and for 100
// customers at once, every one succeeding. Run it with -benchtime 1x.
func BenchmarkProvision(b *testing.B) {
	sizes := []int{1, 100}
	if testing.Short() { // make test's smoke run
		sizes = []int{1, 3}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				b.ReportMetric(provisionMany(b, n, 0).Seconds(), "s-signup-to-active")
			}
		})
	}
}

// logStepTimes logs the mean time the jobs spent in each step, from their
// logs, to show where the time goes.
func logStepTimes(t testing.TB, jobs []provision.Job) {
	total := make([]time.Duration, len(provisionSteps))
	for _, job := range jobs {
		prev := job.CreatedAt
		for _, l := range job.Log {
			if i := slices.Index(provisionSteps, l.Step); i >= 0 {
				total[i] += l.At.Sub(prev)
			}
			prev = l.At
		}
	}
	var b strings.Builder
	for i, name := range provisionSteps {
		fmt.Fprintf(&b, " %s %.1fs", name, (total[i] / time.Duration(len(jobs))).Seconds())
	}
	t.Logf("mean time in each step:%s", b.String())
}
