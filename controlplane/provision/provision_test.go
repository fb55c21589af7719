package provision_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/internal/targets"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// cloud stands in for the provider, the DNS, the broker and the targets
// bucket, and plays the agent: a launched machine enrolls and reports its
// stack healthy at whatever target version is set.
type cloud struct {
	tracker *fleet.Tracker

	mu          sync.Mutex
	machines    map[string]bool // provider id → running
	dns         map[string]string
	targets     map[string]protocol.Target
	revoked     []string
	launchFails int // transient failures before a launch works
	launches    int
	// commandKeys is the command key each launch was told to pin, by instance id.
	commandKeys map[string]string
	// resizes counts Resize calls: each moves a machine to a new address.
	resizes int
	// holdEnrollment keeps launched agents from enrolling until the test
	// enrolls them; stackFails makes every target version fail to apply.
	holdEnrollment, stackFails bool
	// snapshotter makes the provider a provision.Snapshotter, which
	// records the machine it snapshots under each token in snapshotted.
	snapshotter bool
	snapshotted map[string]string
}

func (c *cloud) Name() string { return "test" }

func (c *cloud) Launch(_ context.Context, spec provision.LaunchSpec) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.launches++
	if c.launchFails > 0 {
		c.launchFails--
		return "", errors.New("InsufficientInstanceCapacity")
	}
	c.machines["m-"+spec.InstanceID] = true
	c.commandKeys[spec.InstanceID] = spec.CommandKey
	if !c.holdEnrollment {
		c.tracker.Enrolled(spec.InstanceID, time.Now())
	}
	return "m-" + spec.InstanceID, nil
}

func (c *cloud) WaitRunning(_ context.Context, pid string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("10.0.0.%d", 7+c.resizes), nil
}

func (c *cloud) Resize(context.Context, string, string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resizes++
	return nil
}

func (c *cloud) Terminate(_ context.Context, _, pid string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.machines, pid)
	return nil
}

// snapshotter is the cloud's provider when it keeps snapshots.
type snapshotter struct{ *cloud }

func (s snapshotter) Snapshot(_ context.Context, pid, token string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.snapshotted[token]; ok {
		return []string{"snap-" + s.snapshotted[token]}, nil
	}
	if !s.machines[pid] {
		return nil, errors.New("no machine " + pid + " to snapshot")
	}
	if s.snapshotted == nil {
		s.snapshotted = map[string]string{}
	}
	s.snapshotted[token] = pid
	return []string{"snap-" + pid}, nil
}

func (c *cloud) Upsert(_ context.Context, name, addr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dns[name] = addr
	return nil
}

func (c *cloud) Delete(_ context.Context, name, _ string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.dns, name)
	return nil
}

func (c *cloud) Revoke(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.revoked = append(c.revoked, id)
}

func (c *cloud) Command(_ context.Context, id string, req protocol.CommandRequest) (protocol.CommandReply, error) {
	return protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: id, OK: true}, nil
}

// targetsOf is the cloud's targets bucket, seen through provision.Targets.
type targetsOf struct{ c *cloud }

func (t targetsOf) Get(_ context.Context, id string) (protocol.Target, error) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	tgt, ok := t.c.targets[id]
	if !ok {
		return tgt, targets.ErrNotFound
	}
	return tgt, nil
}

func (t targetsOf) Set(_ context.Context, id string, spec targets.Spec) (protocol.Target, error) {
	t.c.mu.Lock()
	tgt := protocol.Target{InstanceID: id, Version: t.c.targets[id].Version + 1, Compose: spec.Compose}
	t.c.targets[id] = tgt
	fails := t.c.stackFails
	t.c.mu.Unlock()
	// The agent applies it, or reports why it could not.
	st := &protocol.StackStatus{AppliedVersion: tgt.Version,
		Services: []protocol.ServiceState{{Service: "crm", State: "running", Health: "healthy"}}}
	if fails {
		st = &protocol.StackStatus{FailedVersion: tgt.Version, FailedReason: "compose up: no such image"}
	}
	t.c.tracker.Heartbeat(protocol.Heartbeat{InstanceID: id, Stack: st}, time.Now())
	return tgt, nil
}

func (t targetsOf) Delete(_ context.Context, id string) error {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	delete(t.c.targets, id)
	return nil
}

type env struct {
	svc     *provision.Service
	st      *store.Store
	tracker *fleet.Tracker
	cloud   *cloud
	cancel  func()
}

// testCommandKey is the key the service's launches pin in each bootstrap.
var testCommandKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)

// openStore opens the store in dir and a tracker of its instances, as the
// control plane does at start.
func openStore(t *testing.T, dir string) (*store.Store, *fleet.Tracker) {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	insts, err := st.Instances()
	if err != nil {
		t.Fatal(err)
	}
	return st, fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Hour, OfflineAfter: 2 * time.Hour}, insts)
}

func start(t *testing.T, dir string, faults provision.Faults, c *cloud) *env {
	t.Helper()
	st, tracker := openStore(t, dir)
	if c == nil {
		c = &cloud{machines: map[string]bool{}, dns: map[string]string{}, targets: map[string]protocol.Target{}}
	}
	if c.commandKeys == nil {
		c.commandKeys = map[string]string{}
	}
	c.tracker = tracker
	var provider provision.Provider = c
	if c.snapshotter {
		provider = snapshotter{c}
	}
	svc := provision.New(provision.Options{Provider: provider, DNS: c, Store: st, Tracker: tracker, Publisher: fleet.NewFeed(64, 64), Broker: c, Targets: targetsOf{c},
		Zone: "example.test", NATSURL: "nats://127.0.0.1:4222", TokenKey: []byte("0123456789abcdef0123456789abcdef"),
		TokenTTL: time.Hour, CommandKey: testCommandKey, Plans: map[string]provision.Plan{"starter": {Stack: "starter", InstanceType: "t3.small"},
			"business": {Stack: "starter", InstanceType: "t3.medium"}},
		StackImage: "stackpro/demo:test", Workers: 4, Attempts: 3, RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond,
		WaitTimeout: 5 * time.Second, Faults: faults, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = svc.Run(ctx); close(done) }()
	e := &env{svc: svc, st: st, tracker: tracker, cloud: c}
	e.cancel = func() { cancel(); <-done; st.Close() }
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			e.cancel()
		}
	})
	return e
}

func (e *env) wait(t *testing.T, id string) provision.Job {
	t.Helper()
	var job provision.Job
	proctest.Within(t, 30*time.Second, "job "+id+" to finish", func() bool {
		var err error
		if job, err = e.st.Job(id); err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		return job.State.Finished()
	})
	return job
}

// job reads job id from the store.
func (e *env) job(t *testing.T, id string) provision.Job {
	t.Helper()
	job, err := e.st.Job(id)
	if err != nil {
		t.Fatalf("job %s: %v", id, err)
	}
	return job
}

// instance is instance id as the tracker has it.
func (e *env) instance(t *testing.T, id string) fleet.Instance {
	t.Helper()
	inst, err := e.tracker.Get(id, time.Now())
	if err != nil {
		t.Fatalf("instance %s: %v", id, err)
	}
	return inst
}

// left fails t if the store still holds an instance, instance id's tokens
// or credentials, or an owner of subdomain acme: what a terminated or
// compensated instance must not leave behind.
func (e *env) left(t *testing.T, id string) {
	t.Helper()
	insts, err := e.st.Instances()
	if err != nil {
		t.Fatal(err)
	}
	if len(insts) != 0 {
		t.Errorf("instances left: %+v", insts)
	}
	tokens, creds, err := e.st.Access(id)
	if err != nil {
		t.Fatal(err)
	}
	if tokens+creds != 0 {
		t.Errorf("%d tokens and %d credentials left", tokens, creds)
	}
	if owner := e.subdomainOwner(t, "acme"); owner != "" {
		t.Errorf("subdomain still held by %s", owner)
	}
}

// subdomainOwner is the instance holding subdomain name, "" for none.
func (e *env) subdomainOwner(t *testing.T, name string) string {
	t.Helper()
	owner, err := e.st.SubdomainOwner(name)
	if err != nil {
		t.Fatal(err)
	}
	return owner
}

// jobs reads every job from the store.
func (e *env) jobs(t *testing.T) []provision.Job {
	t.Helper()
	jobs, err := e.st.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	return jobs
}

func TestProvision(t *testing.T) {
	e := start(t, t.TempDir(), provision.Faults{}, nil)
	inst, job, err := e.svc.Provision("acme", "starter", "acme")
	if err != nil {
		t.Fatal(err)
	}
	job = e.wait(t, job.ID)
	if job.State != provision.JobSucceeded || job.Done != len(job.Steps) {
		t.Fatalf("job = %+v", job)
	}
	got := e.instance(t, inst.ID)
	if got.Lifecycle != fleet.LifecycleActive || got.Job != "" || got.ProviderID != "m-"+inst.ID || got.Address != "10.0.0.7" {
		t.Errorf("instance = %+v", got)
	}
	stored, err := e.st.Instances()
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 || stored[0].Lifecycle != fleet.LifecycleActive {
		t.Errorf("stored = %+v, want the active instance", stored)
	}
	if e.cloud.dns["acme.example.test"] != "10.0.0.7" {
		t.Errorf("dns = %v", e.cloud.dns)
	}
	if got, want := e.cloud.commandKeys[inst.ID], protocol.FormatCommandKey(testCommandKey); got != want {
		t.Errorf("launch pinned command key %q, want %q", got, want)
	}
	if owner := e.subdomainOwner(t, "acme"); owner != inst.ID {
		t.Errorf("subdomain owner = %q", owner)
	}
	steps := map[string]bool{}
	for _, l := range job.Log {
		if l.Outcome == "ok" {
			steps[l.Step] = true
		}
	}
	for _, s := range job.Steps {
		if !steps[s] {
			t.Errorf("no log line for step %s: %+v", s, job.Log)
		}
	}

	// The subdomain is taken now: a second instance cannot have it.
	_, job2, err := e.svc.Provision("other", "starter", "acme")
	if err != nil {
		t.Fatal(err)
	}
	if job2 = e.wait(t, job2.ID); job2.State != provision.JobFailed {
		t.Errorf("second provision of acme: %+v, want failed", job2)
	}
	if owner := e.subdomainOwner(t, "acme"); owner != inst.ID {
		t.Errorf("compensation released the first instance's subdomain: owner %q", owner)
	}
}

func TestProvisionOnce(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, provision.Faults{}, nil)
	first, err := e.svc.ProvisionOnce("checkout:cs_1", "acme", "starter")
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.svc.ProvisionOnce("checkout:cs_1", "acme", "starter")
	if err != nil || again.ID != first.ID || again.InstanceID != first.InstanceID {
		t.Fatalf("second ProvisionOnce = %+v, %v; want job %s", again, err, first.ID)
	}
	e.wait(t, first.ID)
	// The key outlives a restart.
	e.cancel()
	e = start(t, dir, provision.Faults{}, nil)
	if again, err = e.svc.ProvisionOnce("checkout:cs_1", "acme", "starter"); err != nil || again.ID != first.ID {
		t.Fatalf("after a restart: %+v, %v; want job %s", again, err, first.ID)
	}
	other, err := e.svc.ProvisionOnce("checkout:cs_2", "acme", "starter")
	if err != nil || other.ID == first.ID {
		t.Fatalf("another key: %+v, %v", other, err)
	}
	if jobs := e.jobs(t); len(jobs) != 2 {
		t.Errorf("%d jobs for two keys", len(jobs))
	}
}

func TestProvisionRejectsBadRequests(t *testing.T) {
	e := start(t, t.TempDir(), provision.Faults{}, nil)
	for _, tt := range []struct{ customer, plan, sub string }{
		{"", "starter", ""}, {"acme", "platinum", ""}, {"acme", "starter", "Bad_Name"}, {"acme", "starter", "-x"},
	} {
		if _, _, err := e.svc.Provision(tt.customer, tt.plan, tt.sub); !errors.Is(err, provision.ErrBadRequest) {
			t.Errorf("Provision(%q, %q, %q) = %v, want ErrBadRequest", tt.customer, tt.plan, tt.sub, err)
		}
	}
	if jobs := e.jobs(t); len(jobs) != 0 {
		t.Errorf("bad requests made jobs: %+v", jobs)
	}
}

// A step that keeps failing makes the job undo every step done: nothing
// remains but the failed job and its log.
func TestFailureCompensates(t *testing.T) {
	steps := []string{"record", "reserve_subdomain", "mint_token", "launch", "wait_running", "dns_record",
		"wait_enrollment", "write_target", "wait_healthy", "activate"}
	for _, failing := range steps {
		t.Run(failing, func(t *testing.T) {
			e := start(t, t.TempDir(), provision.Faults{Fail: failing}, nil)
			inst, job, err := e.svc.Provision("acme", "starter", "acme")
			if err != nil {
				t.Fatal(err)
			}
			job = e.wait(t, job.ID)
			if job.State != provision.JobFailed || job.Done != 0 || job.Error == "" {
				t.Fatalf("job = %+v, want failed and fully undone", job)
			}
			e.left(t, inst.ID)
			if len(e.cloud.machines)+len(e.cloud.dns)+len(e.cloud.targets) != 0 {
				t.Errorf("left behind: machines %v, dns %v, targets %v", e.cloud.machines, e.cloud.dns, e.cloud.targets)
			}
		})
	}
}

func TestTransientFailureRetries(t *testing.T) {
	c := &cloud{machines: map[string]bool{}, dns: map[string]string{}, targets: map[string]protocol.Target{}, launchFails: 2}
	e := start(t, t.TempDir(), provision.Faults{}, c)
	_, job, err := e.svc.Provision("acme", "starter", "")
	if err != nil {
		t.Fatal(err)
	}
	job = e.wait(t, job.ID)
	retries := 0
	for _, l := range job.Log {
		if l.Step == "launch" && l.Outcome == "retry" {
			retries++
		}
	}
	if job.State != provision.JobSucceeded || retries != 2 || c.launches != 3 {
		t.Errorf("job %s after %d retries and %d launches, want succeeded after 2 retries", job.State, retries, c.launches)
	}
}

// A stack version the agent reports failed fails the job at once, with the
// agent's reason, rather than after the wait timeout.
func TestFailedStackFailsFast(t *testing.T) {
	c := &cloud{machines: map[string]bool{}, dns: map[string]string{}, targets: map[string]protocol.Target{}, stackFails: true}
	e := start(t, t.TempDir(), provision.Faults{}, c)
	_, job, err := e.svc.Provision("acme", "starter", "")
	if err != nil {
		t.Fatal(err)
	}
	job = e.wait(t, job.ID)
	if job.State != provision.JobFailed || !strings.Contains(job.Error, "no such image") {
		t.Fatalf("job %s (%s), want failed with the agent's reason", job.State, job.Error)
	}
	for _, l := range job.Log {
		if l.Step == "wait_healthy" && l.Outcome == "retry" {
			t.Errorf("wait_healthy was retried: %+v", l)
		}
	}
	if len(c.machines) != 0 {
		t.Errorf("machines left: %v", c.machines)
	}
}

// Steps that only wait hold no worker: more jobs than workers all reach
// wait_enrollment, then all finish.
func TestWaitsHoldNoWorker(t *testing.T) {
	c := &cloud{machines: map[string]bool{}, dns: map[string]string{}, targets: map[string]protocol.Target{}, holdEnrollment: true}
	e := start(t, t.TempDir(), provision.Faults{}, c)
	const n = 10 // start gives the service 4 workers
	var jobs []provision.Job
	for range n {
		_, job, err := e.svc.Provision("acme", "starter", "")
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, job)
	}
	waitEnrollment := slices.Index(jobs[0].Steps, "wait_enrollment")
	for i, job := range jobs {
		proctest.Within(t, 30*time.Second, fmt.Sprintf("job %d of %d to wait for enrollment", i+1, n), func() bool {
			return e.job(t, job.ID).Done == waitEnrollment
		})
	}
	// Had the waits held the 4 workers, the other jobs would have reached
	// wait_enrollment only when the first timed out and backed off.
	for _, job := range jobs {
		job = e.job(t, job.ID)
		for _, l := range job.Log {
			if l.Outcome == "retry" {
				t.Errorf("job %s: %s was retried (%s) before every job got to wait", job.ID, l.Step, l.Detail)
			}
		}
		e.tracker.Enrolled(job.InstanceID, time.Now())
	}
	for _, job := range jobs {
		if job = e.wait(t, job.ID); job.State != provision.JobSucceeded {
			t.Errorf("job %s: %s (%s)", job.ID, job.State, job.Error)
		}
	}
}

// A job saved mid-way is resumed from its last completed step by the next
// control plane, which does not redo the steps already done.
func TestResumeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, provision.Faults{}, nil)
	_, job, err := e.svc.Provision("acme", "starter", "acme")
	if err != nil {
		t.Fatal(err)
	}
	e.wait(t, job.ID)
	e.cancel()

	// Rewind the finished job to "launch done", as saved by a version of
	// the control plane whose provision job had no dns_record step, and
	// start a new service on it: the job carries on with its own steps.
	st, err := store.Open(filepath.Join(dir, "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if job, err = st.Job(job.ID); err != nil {
		t.Fatal(err)
	}
	job.State, job.Done = provision.JobRunning, 4
	job.Steps = slices.DeleteFunc(job.Steps, func(name string) bool { return name == "dns_record" })
	insts, err := st.Instances()
	if err != nil || len(insts) != 1 {
		t.Fatalf("instances %+v (%v), want the one", insts, err)
	}
	insts[0].Lifecycle, insts[0].Job = fleet.LifecycleProvisioning, job.ID
	if err := st.SaveJob(job, insts[0]); err != nil {
		t.Fatal(err)
	}
	st.Close()
	c := &cloud{machines: map[string]bool{"m-" + insts[0].ID: true}, dns: map[string]string{}, targets: map[string]protocol.Target{}}
	e2 := start(t, dir, provision.Faults{}, c)
	e2.tracker.Enrolled(insts[0].ID, time.Now())
	job = e2.wait(t, job.ID)
	if job.State != provision.JobSucceeded || c.launches != 0 {
		t.Errorf("resumed job %s with %d launches, want succeeded without launching again", job.State, c.launches)
	}
	if len(c.dns) != 0 {
		t.Errorf("DNS records %v: the resumed job ran a step it did not have", c.dns)
	}
}

func TestLifecycleJobs(t *testing.T) {
	e := start(t, t.TempDir(), provision.Faults{}, nil)
	inst, job, err := e.svc.Provision("acme", "starter", "acme")
	if err != nil {
		t.Fatal(err)
	}
	e.wait(t, job.ID)
	lifecycle := func() fleet.Lifecycle { return e.instance(t, inst.ID).Lifecycle }
	for _, tt := range []struct {
		start func() (provision.Job, error)
		want  fleet.Lifecycle
	}{
		{func() (provision.Job, error) { return e.svc.Suspend(inst.ID) }, fleet.LifecycleSuspended},
		{func() (provision.Job, error) { return e.svc.Resume(inst.ID) }, fleet.LifecycleActive},
		{func() (provision.Job, error) { return e.svc.Resize(inst.ID, "business") }, fleet.LifecycleActive},
	} {
		job, err := tt.start()
		if err != nil {
			t.Fatal(err)
		}
		if job = e.wait(t, job.ID); job.State != provision.JobSucceeded || lifecycle() != tt.want {
			t.Errorf("%s: job %s, lifecycle %s; want succeeded and %s", job.Kind, job.State, lifecycle(), tt.want)
		}
	}
	// The resize moved the machine to 10.0.0.8: the instance and its name follow.
	if got := e.instance(t, inst.ID); got.Plan != "business" || got.InstanceType != "t3.medium" ||
		got.Address != "10.0.0.8" || e.cloud.dns["acme.example.test"] != "10.0.0.8" {
		t.Errorf("after resize: plan %s, type %s, address %s, dns %v; want business, t3.medium, 10.0.0.8 in both",
			got.Plan, got.InstanceType, got.Address, e.cloud.dns)
	}
	if _, err := e.svc.Resize(inst.ID, "platinum"); !errors.Is(err, provision.ErrBadRequest) {
		t.Errorf("resize to an unknown plan: %v", err)
	}

	job, err = e.svc.Terminate(inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Suspend(inst.ID); !errors.Is(err, provision.ErrBusy) && !errors.Is(err, provision.ErrNotFound) {
		t.Errorf("a second job during terminate: %v, want ErrBusy", err)
	}
	if job = e.wait(t, job.ID); job.State != provision.JobSucceeded {
		t.Fatalf("terminate: %+v", job)
	}
	e.left(t, inst.ID)
	if len(e.cloud.machines)+len(e.cloud.dns)+len(e.cloud.targets) != 0 {
		t.Errorf("left behind: machines %v, dns %v, targets %v", e.cloud.machines, e.cloud.dns, e.cloud.targets)
	}
	if _, err := e.svc.Terminate(inst.ID); !errors.Is(err, provision.ErrNotFound) {
		t.Errorf("terminate of a gone instance: %v, want ErrNotFound", err)
	}
}

// The terminate job snapshots the machine's disks before it goes, when the
// provider keeps snapshots, and says it skipped that when not.
func TestTerminateTakesFinalSnapshot(t *testing.T) {
	for _, keeps := range []bool{true, false} {
		t.Run(fmt.Sprintf("snapshotter=%t", keeps), func(t *testing.T) {
			c := &cloud{machines: map[string]bool{}, dns: map[string]string{}, targets: map[string]protocol.Target{}, snapshotter: keeps}
			e := start(t, t.TempDir(), provision.Faults{}, c)
			inst, job, err := e.svc.Provision("acme", "starter", "acme")
			if err != nil {
				t.Fatal(err)
			}
			e.wait(t, job.ID)
			if job, err = e.svc.Terminate(inst.ID); err != nil {
				t.Fatal(err)
			}
			if job = e.wait(t, job.ID); job.State != provision.JobSucceeded {
				t.Fatalf("terminate: %+v", job)
			}
			if i := slices.Index(job.Steps, "final_snapshot"); i < 0 || job.Steps[i+1] != "terminate_instance" {
				t.Errorf("steps %q: want final_snapshot right before terminate_instance", job.Steps)
			}
			want, wantSnapshotted := "skipped: provider keeps no snapshots", map[string]string(nil)
			if keeps {
				want, wantSnapshotted = "snap-m-"+inst.ID, map[string]string{job.ID: "m-" + inst.ID}
			}
			i := slices.IndexFunc(job.Log, func(l provision.JobLog) bool { return l.Step == "final_snapshot" })
			if i < 0 || job.Log[i].Outcome != "ok" || job.Log[i].Detail != want {
				t.Errorf("final_snapshot in the log %+v: want ok %q", job.Log, want)
			}
			if !maps.Equal(c.snapshotted, wantSnapshotted) {
				t.Errorf("snapshotted %v, want %v (machine by token)", c.snapshotted, wantSnapshotted)
			}
		})
	}
}
