package server_test

import (
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/internal/proctest"
)

// provisionSteps are the steps of a provision job, in order.
var provisionSteps = []string{"record", "reserve_subdomain", "mint_token", "launch", "wait_running", "dns_record",
	"wait_enrollment", "write_target", "wait_healthy", "activate"}

// TestProvisionSurvivesCrashes kills the control plane (SIGKILL, by fault
// injection) right after each step of a provision job, restarts it, and
// checks the job ends active with exactly one machine, one DNS record and
// one set of credentials.
func TestProvisionSurvivesCrashes(t *testing.T) {
	t.Parallel()
	for _, step := range provisionSteps {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			data := filepath.Join(t.TempDir(), "data")
			httpAddr, natsAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
			t.Cleanup(func() { destroyInstances(t, data) })
			cp := startControlPlane(t, data, httpAddr, natsAddr, 0, "STACKPRO_FAULTS_CRASH_AFTER_STEP="+step)
			// The job runs beside the request: after its first step the
			// control plane may be killed before its answer is out, so the
			// answer is not needed; the job is found again after the restart.
			req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/api/v1/instances",
				strings.NewReader(`{"customer":"cus_crash","plan":"starter","subdomain":"crash"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+cp.token())
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("POST /api/v1/instances: %d", resp.StatusCode)
				}
			}
			select {
			case err := <-cp.exited:
				var status syscall.WaitStatus
				if ws, ok := cp.cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
					status = ws
				}
				if !status.Signaled() || status.Signal() != syscall.SIGKILL {
					t.Fatalf("control plane exited with %v, want killed after %s", err, step)
				}
			case <-time.After(90 * time.Second):
				t.Fatalf("the control plane was not killed after %s", step)
			}

			cp2 := startControlPlane(t, data, httpAddr, natsAddr, 0)
			insts := cp2.instances()
			if len(insts) != 1 {
				t.Fatalf("instances = %+v, want the one", insts)
			}
			started := insts[0]
			var jobs struct{ Jobs []provision.Job }
			if code := cp2.api(http.MethodGet, "/api/v1/instances/"+started.ID+"/jobs", &jobs); code != http.StatusOK || len(jobs.Jobs) != 1 {
				t.Fatalf("jobs of %s: %d %+v, want the provision job", started.ID, code, jobs.Jobs)
			}
			job := cp2.waitJob(jobs.Jobs[0].ID)
			if job.State != provision.JobSucceeded {
				t.Fatalf("after a crash after %s the job ended %+v", step, job)
			}
			insts = cp2.instances()
			if len(insts) != 1 || insts[0].ID != started.ID || insts[0].Lifecycle != fleet.LifecycleActive {
				t.Fatalf("instances = %+v, want the one instance, active", insts)
			}
			cp2.stop()

			st, err := store.Open(filepath.Join(data, "stackpro.db"), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if recs, err := st.DNSRecords(); err != nil || len(recs) != 1 || recs[0].Name != "crash.stackpro.localhost" {
				t.Errorf("DNS records = %+v (%v), want one for crash.stackpro.localhost", recs, err)
			}
			if _, creds, err := st.Access(started.ID); err != nil || creds != 1 {
				t.Errorf("%d credentials (%v), want one", creds, err)
			}
			// One machine: one agent process of this data dir, one stack.
			agents, _ := exec.Command("pgrep", "-f", "stackpro-agent --config "+data).Output()
			if n := len(strings.Fields(string(agents))); n != 1 {
				t.Errorf("%d agent processes, want one", n)
			}
			containers, err := exec.Command("docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+started.ID).Output()
			if n := len(strings.Fields(string(containers))); err != nil || n != 2 {
				t.Errorf("%d containers (%v), want the starter stack's two", n, err)
			}
		})
	}
}
