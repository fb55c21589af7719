package provision

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
)

// Job kinds.
const (
	KindProvision = "provision"
	KindTerminate = "terminate"
	KindSuspend   = "suspend"
	KindResume    = "resume"
	KindResize    = "resize"
)

// step is one idempotent step of a job. undo, when set, takes back what do
// did; it runs when a later step fails for good.
type step struct {
	name string
	do   func(ctx context.Context, r *run) error
	undo func(ctx context.Context, r *run) error
	// wait marks a step that only waits for the world (a machine, an
	// enrollment, a healthy stack): it holds no worker slot, so a hundred
	// jobs can wait while others launch.
	wait bool
}

// run is one job being worked on.
type run struct {
	job Job
	// touched are the instance records the current step changed; they are
	// saved with the job.
	touched []fleet.Instance
	// detail is what the current step has to say in the log.
	detail string
}

// update changes the job's instance in the tracker and marks it to be
// saved with the job.
func (s *Service) update(r *run, fn func(*fleet.Instance)) {
	if inst, ok := s.o.Tracker.Update(r.job.InstanceID, fn); ok {
		r.touched = append(r.touched, inst)
	}
}

// errPermanent marks an error no retry can fix.
type errPermanent struct{ error }

func (e errPermanent) Unwrap() error { return e.error }

func permanent(err error) error { return errPermanent{err} }

// jobSet remembers which jobs a worker holds, so no job runs twice at once.
type jobSet struct {
	mu      sync.Mutex
	running map[string]bool
	wg      sync.WaitGroup
}

// Run resumes every unfinished job and keeps working until ctx ends; then
// it waits for the jobs in hand to reach a step boundary.
func (s *Service) Run(ctx context.Context) error {
	jobs, err := s.o.Store.Jobs()
	if err != nil {
		return err
	}
	for _, job := range jobs {
		s.counts.saw(job)
		if !job.State.Finished() {
			s.log.Info("resuming job", "job", job.ID, "kind", job.Kind, "instance", job.InstanceID,
				"state", job.State, "done", job.Done)
			s.start(ctx, job.ID)
		}
	}
	for {
		select {
		case <-ctx.Done():
			s.jobs.wg.Wait()
			return nil
		case id := <-s.submitted:
			s.start(ctx, id)
		}
	}
}

// start works on job id in its own goroutine; each step waits for a
// worker slot.
func (s *Service) start(ctx context.Context, id string) {
	s.jobs.mu.Lock()
	defer s.jobs.mu.Unlock()
	if s.jobs.running[id] {
		return
	}
	s.jobs.running[id] = true
	s.jobs.wg.Go(func() {
		defer func() {
			s.jobs.mu.Lock()
			delete(s.jobs.running, id)
			s.jobs.mu.Unlock()
		}()
		if err := s.work(ctx, id); err != nil && ctx.Err() == nil {
			s.log.Error("job stopped", "job", id, "err", err)
		}
	})
}

// save persists the job with what its step touched, and logs the step.
func (s *Service) save(r *run, stepName, outcome string) error {
	now := time.Now().UTC()
	r.job.UpdatedAt = now
	r.job.Log = append(r.job.Log, JobLog{At: now, Step: stepName, Outcome: outcome, Detail: r.detail})
	err := s.record(r.job, r.touched...)
	s.log.Info("job step", "job", r.job.ID, "kind", r.job.Kind, "instance", r.job.InstanceID,
		"step", stepName, "outcome", outcome, "detail", r.detail)
	r.touched, r.detail = nil, ""
	return err
}

// work runs job id forward until it succeeds, or until a step fails for
// good; then it compensates the steps done, in reverse, and fails the job.
// Every step is saved before the next begins, so a crash resumes here.
func (s *Service) work(ctx context.Context, id string) error {
	job, err := s.o.Store.Job(id)
	if err != nil {
		return err
	}
	steps, err := s.plan(job)
	if err != nil {
		return err
	}
	r := &run{job: job}
	if r.job.State == JobPending {
		r.job.State = JobRunning
	}
	for r.job.State == JobRunning {
		if r.job.Done == len(steps) {
			r.job.State = JobSucceeded
			return s.save(r, "job", "succeeded")
		}
		st := steps[r.job.Done]
		err := s.do(ctx, st, r)
		if ctx.Err() != nil {
			return ctx.Err() // stopping: the step runs again on the next start
		}
		switch {
		case err == nil:
			r.job.Done, r.job.Attempt = r.job.Done+1, 0
			if err := s.save(r, st.name, "ok"); err != nil {
				return err
			}
			if st.name == s.o.Faults.CrashAfter {
				s.log.Warn("fault injection: killing the control plane", "after", st.name)
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		case errors.As(err, new(errPermanent)) || r.job.Attempt+1 >= s.o.Attempts:
			r.job.State, r.job.Error, r.detail = JobCompensating, st.name+": "+err.Error(), err.Error()
			if err := s.save(r, st.name, "failed"); err != nil {
				return err
			}
		default:
			r.job.Attempt++
			r.detail = err.Error()
			if err := s.save(r, st.name, "retry"); err != nil {
				return err
			}
			if !sleep(ctx, s.backoff(r.job.Attempt)) {
				return ctx.Err()
			}
		}
	}
	for r.job.State == JobCompensating {
		if r.job.Done == 0 {
			r.job.State = JobFailed
			return s.save(r, "job", "failed")
		}
		st := steps[r.job.Done-1]
		if st.undo != nil {
			if err := s.inSlot(ctx, st, func() error { return st.undo(ctx, r) }); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				// Undo must happen or something leaks: keep trying.
				r.job.Attempt++
				r.detail = err.Error()
				if err := s.save(r, st.name, "undo retry"); err != nil {
					return err
				}
				if !sleep(ctx, s.backoff(r.job.Attempt)) {
					return ctx.Err()
				}
				continue
			}
		}
		r.job.Done, r.job.Attempt = r.job.Done-1, 0
		if err := s.save(r, st.name, "undone"); err != nil {
			return err
		}
	}
	return nil
}

// plan is the steps of job, looked up by the names saved with it: a job
// saved by an earlier version of the control plane carries on with its own
// list of steps, not the current one.
func (s *Service) plan(job Job) ([]step, error) {
	defs, ok := s.defs[job.Kind]
	if !ok {
		return nil, fmt.Errorf("provision: job %s has unknown kind %q", job.ID, job.Kind)
	}
	steps := make([]step, len(job.Steps))
	for i, name := range job.Steps {
		j := slices.IndexFunc(defs, func(st step) bool { return st.name == name })
		if j < 0 {
			return nil, fmt.Errorf("provision: job %s has unknown step %q", job.ID, name)
		}
		steps[i] = defs[j]
	}
	return steps, nil
}

// inSlot runs fn in a worker slot, or at once when st only waits.
func (s *Service) inSlot(ctx context.Context, st step, fn func() error) error {
	if st.wait {
		return fn()
	}
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
		return fn()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// do runs st in a worker slot, failing it on purpose when a fault is
// injected there.
func (s *Service) do(ctx context.Context, st step, r *run) error {
	return s.inSlot(ctx, st, func() error {
		if f := s.o.Faults; st.name == f.Fail && strings.HasPrefix(r.job.Params["customer"], f.FailFor) {
			return permanent(errors.New("fault injection: step fails"))
		}
		return st.do(ctx, r)
	})
}

// backoff is the wait before retry number attempt: exponential from
// RetryBase to RetryMax, with jitter over its upper half.
func (s *Service) backoff(attempt int) time.Duration {
	d := s.o.RetryMax
	if attempt < 20 {
		d = min(s.o.RetryBase<<(attempt-1), s.o.RetryMax)
	}
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// submit saves a new job of kind for instance id and hands it to Run. A
// provision job's instance does not exist yet (its first step records it);
// any other job's instance must exist and have no unfinished job. A job
// with a key is submitted once: asked for again, it is the same job.
func (s *Service) submit(kind, id, key string, params map[string]string) (Job, error) {
	s.submitMu.Lock()
	defer s.submitMu.Unlock()
	if key != "" {
		job, err := s.o.Store.JobByKey(key)
		if err == nil || !errors.Is(err, fault.ErrNotFound) {
			return job, err
		}
	}
	if kind != KindProvision {
		cur, err := s.o.Tracker.Get(id, time.Now())
		if errors.Is(err, fleet.ErrNotFound) {
			return Job{}, ErrNotFound
		}
		if cur.Job != "" {
			if j, err := s.o.Store.Job(cur.Job); err == nil && !j.State.Finished() {
				return Job{}, fmt.Errorf("%w: %s job %s", ErrBusy, j.Kind, j.ID)
			}
		}
	}
	now := time.Now().UTC()
	job := Job{ID: newID("job-"), Kind: kind, InstanceID: id, Key: key, State: JobPending,
		Params: params, CreatedAt: now, UpdatedAt: now}
	for _, st := range s.defs[kind] {
		job.Steps = append(job.Steps, st.name)
	}
	job.Log = []JobLog{{At: now, Step: "job", Outcome: "submitted"}}
	var touched []fleet.Instance
	if kind != KindProvision {
		inst, _ := s.o.Tracker.Update(id, func(i *fleet.Instance) { i.Job = job.ID })
		touched = append(touched, inst)
	}
	if err := s.record(job, touched...); err != nil {
		return Job{}, err
	}
	s.submitted <- job.ID
	return job, nil
}

// Job returns job id as stored.
func (s *Service) Job(id string) (Job, error) {
	job, err := s.o.Store.Job(id)
	if errors.Is(err, fault.ErrNotFound) {
		return job, errJobNotFound
	}
	return job, err
}

var errJobNotFound = fault.New(fault.NotFound, "job not found")
