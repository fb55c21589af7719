package app_test

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
	for _, step := range provisionSteps {
		t.Run(step, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			httpAddr, natsAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
			t.Cleanup(func() { destroyInstances(t, data) })
			cp := startControlPlane(t, data, httpAddr, natsAddr, 0, "STACKPRO_FAULTS_CRASH_AFTER_STEP="+step)
			var started struct {
				Instance fleet.Instance
				Job      fleet.Job
			}
			if code := cp.send(http.MethodPost, "/api/v1/instances", `{"customer":"cus_crash","plan":"starter","subdomain":"crash"}`, &started); code != http.StatusAccepted {
				t.Fatalf("POST /api/v1/instances: %d", code)
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
			job := cp2.waitJob(started.Job.ID)
			if job.State != fleet.JobSucceeded {
				t.Fatalf("after a crash after %s the job ended %+v", step, job)
			}
			insts := cp2.instances()
			if len(insts) != 1 || insts[0].ID != started.Instance.ID || insts[0].Lifecycle != fleet.LifecycleActive {
				t.Fatalf("instances = %+v, want the one instance, active", insts)
			}
			cp2.stop()

			st, err := store.Open(filepath.Join(data, "stackpro.db"), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if recs, _ := st.DNSRecords(); len(recs) != 1 || recs[0].Name != "crash.stackpro.localhost" {
				t.Errorf("DNS records = %+v, want one for crash.stackpro.localhost", recs)
			}
			if _, creds, _ := st.Access(started.Instance.ID); creds != 1 {
				t.Errorf("%d credentials, want one", creds)
			}
			// One machine: one agent process of this data dir, one stack.
			agents, _ := exec.Command("pgrep", "-f", "stackpro-agent --config "+data).Output()
			if n := len(strings.Fields(string(agents))); n != 1 {
				t.Errorf("%d agent processes, want one", n)
			}
			containers, _ := exec.Command("docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+started.Instance.ID).Output()
			if n := len(strings.Fields(string(containers))); n != 2 {
				t.Errorf("%d containers, want the starter stack's two", n)
			}
		})
	}
}
