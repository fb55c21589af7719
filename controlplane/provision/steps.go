package provision

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/targets"
	"github.com/stackpro/stackpro/deploy/stacks"
	"github.com/stackpro/stackpro/shared/protocol"
)

var subdomainPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Provision records a new instance for customer on plan and starts the job
// that brings it to active. An empty subdomain becomes the instance id.
func (s *Service) Provision(customer, plan, subdomain string) (fleet.Instance, Job, error) {
	return s.provision("", customer, plan, subdomain)
}

// ProvisionOnce is Provision for the one instance key stands for (a
// checkout, say): asked again with the same key, it returns the first job.
func (s *Service) ProvisionOnce(key, customer, plan string) (Job, error) {
	_, job, err := s.provision(key, customer, plan, "")
	return job, err
}

func (s *Service) provision(key, customer, plan, subdomain string) (fleet.Instance, Job, error) {
	p, ok := s.o.Plans[plan]
	var errs []error
	if !ok {
		errs = append(errs, fmt.Errorf("unknown plan %q", plan))
	}
	if customer == "" || len(customer) > 128 {
		errs = append(errs, errors.New("customer: want 1 to 128 characters"))
	}
	id := NewInstanceID()
	if subdomain == "" {
		subdomain = id
	}
	if !subdomainPattern.MatchString(subdomain) {
		errs = append(errs, fmt.Errorf("subdomain %q: want a DNS label of a-z, 0-9 and -", subdomain))
	}
	if err := errors.Join(errs...); err != nil {
		return fleet.Instance{}, Job{}, ErrBadRequest.With(err)
	}
	job, err := s.submit(KindProvision, id, key, map[string]string{"customer": customer, "plan": plan,
		"subdomain": subdomain, "instance_type": p.InstanceType, "region": s.o.Region})
	return newInstance(s.o.Provider.Name(), job), job, err
}

// newInstance is the record a provision job starts with.
func newInstance(provider string, job Job) fleet.Instance {
	p := job.Params
	return fleet.Instance{ID: job.InstanceID, Provider: provider, CreatedAt: job.CreatedAt, Customer: p["customer"],
		Plan: p["plan"], Subdomain: p["subdomain"], InstanceType: p["instance_type"], Region: p["region"],
		Lifecycle: fleet.LifecycleProvisioning, Job: job.ID, Status: fleet.StatusProvisioning}
}

// Terminate starts the job that takes instance id out for good.
func (s *Service) Terminate(id string) (Job, error) {
	return s.submit(KindTerminate, id, "", nil)
}

// Suspend starts the job that stops instance id's stack and keeps its data.
func (s *Service) Suspend(id string) (Job, error) { return s.submit(KindSuspend, id, "", nil) }

// Resume starts the job that brings a suspended instance back.
func (s *Service) Resume(id string) (Job, error) { return s.submit(KindResume, id, "", nil) }

// Start starts a job of kind (terminate, suspend, resume, resize, with
// params["plan"]) on instance id.
func (s *Service) Start(kind, id string, params map[string]string) (Job, error) {
	switch kind {
	case KindTerminate:
		return s.Terminate(id)
	case KindSuspend:
		return s.Suspend(id)
	case KindResume:
		return s.Resume(id)
	case KindResize:
		return s.Resize(id, params["plan"])
	}
	return Job{}, ErrBadRequest.With(fmt.Errorf("no job %q", kind))
}

// InstanceJobs is every job of instance id. It reads every job: jobs are
// few per instance, and the store keeps no index of them by instance.
func (s *Service) InstanceJobs(id string) ([]Job, error) {
	jobs, err := s.o.Store.Jobs()
	return slices.DeleteFunc(jobs, func(job Job) bool { return job.InstanceID != id }), err
}

// SetTags replaces instance id's tags, which the caller has checked, in
// the store and then in the tracker: provisioning keeps the instance
// records.
func (s *Service) SetTags(_ context.Context, id string, tags map[string]string) (fleet.Instance, error) {
	if _, err := s.o.Tracker.Get(id, time.Now()); err != nil {
		return fleet.Instance{}, err
	}
	if err := s.o.Store.SetTags(id, maps.Clone(tags)); err != nil {
		return fleet.Instance{}, err
	}
	s.o.Tracker.Update(id, func(i *fleet.Instance) { i.Tags = maps.Clone(tags) })
	return s.o.Tracker.Get(id, time.Now())
}

// Resize starts the job that moves instance id to plan's instance type.
func (s *Service) Resize(id, plan string) (Job, error) {
	if _, ok := s.o.Plans[plan]; !ok {
		return Job{}, ErrBadRequest.With(fmt.Errorf("unknown plan %q", plan))
	}
	return s.submit(KindResize, id, "", map[string]string{"plan": plan})
}

// instance is the job's instance as tracked now.
func (s *Service) instance(r *run) (fleet.Instance, error) {
	inst, err := s.o.Tracker.Get(r.job.InstanceID, time.Now())
	if err != nil {
		return inst, permanent(fmt.Errorf("instance %s: %w", r.job.InstanceID, err))
	}
	return inst, nil
}

func (s *Service) fqdn(inst fleet.Instance) string { return inst.Subdomain + "." + s.o.Zone }

// waitFor polls cond until it holds or WaitTimeout passes.
func (s *Service) waitFor(ctx context.Context, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, s.o.WaitTimeout)
	defer cancel()
	for !cond() {
		if !sleep(ctx, 250*time.Millisecond) {
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("no %s after %s", what, s.o.WaitTimeout)
			}
			return ctx.Err()
		}
	}
	return nil
}

// healthy reports whether inst runs target version (or later) with every
// service up and passing its healthcheck.
func healthy(inst fleet.Instance, version uint64) bool {
	st := inst.Stack
	if st == nil || st.AppliedVersion < version || len(st.Services) == 0 {
		return false
	}
	for _, svc := range st.Services {
		if svc.State != "running" || (svc.Health != "" && svc.Health != "healthy") {
			return false
		}
	}
	return true
}

func (s *Service) provisionSteps() []step {
	return []step{
		{name: "record",
			do: func(_ context.Context, r *run) error {
				if _, err := s.o.Tracker.Get(r.job.InstanceID, time.Now()); err == nil {
					return nil // recorded before a restart
				}
				inst := newInstance(s.o.Provider.Name(), r.job)
				s.o.Tracker.Put(inst)
				r.touched = append(r.touched, inst)
				return nil
			},
			undo: func(_ context.Context, r *run) error {
				s.o.Tracker.Remove(r.job.InstanceID)
				return s.o.Store.DeleteInstance(r.job.InstanceID)
			}},
		{name: "reserve_subdomain",
			do: func(_ context.Context, r *run) error {
				inst, err := s.instance(r)
				if err != nil {
					return err
				}
				if err := s.o.Store.ReserveSubdomain(inst.Subdomain, inst.ID); errors.Is(err, ErrSubdomainTaken) {
					return permanent(err)
				} else if err != nil {
					return err
				}
				r.detail = s.fqdn(inst)
				return nil
			},
			undo: func(_ context.Context, r *run) error {
				inst, err := s.instance(r)
				if err != nil {
					return err
				}
				return s.o.Store.ReleaseSubdomain(inst.Subdomain, inst.ID)
			}},
		{name: "mint_token",
			do: func(_ context.Context, r *run) error {
				return s.o.Store.RecordToken(r.job.InstanceID, s.enrollmentToken(r.job.InstanceID), s.o.TokenTTL, time.Now())
			},
			undo: s.revoke},
		{name: "launch",
			do: func(ctx context.Context, r *run) error {
				inst, err := s.instance(r)
				if err != nil {
					return err
				}
				pid, err := s.o.Provider.Launch(ctx, LaunchSpec{InstanceID: inst.ID, EnrollmentToken: s.enrollmentToken(inst.ID),
					NATSURL: s.o.NATSURL, Customer: inst.Customer, Plan: inst.Plan, InstanceType: inst.InstanceType,
					ClientToken: r.job.ID + "-launch", HeartbeatInterval: s.o.HeartbeatInterval, MetricsInterval: s.o.MetricsInterval,
					CommandKey: protocol.FormatCommandKey(s.o.CommandKey)})
				if err != nil {
					return err
				}
				s.update(r, func(i *fleet.Instance) { i.ProviderID = pid })
				r.detail = pid
				return nil
			},
			undo: func(ctx context.Context, r *run) error {
				inst, err := s.instance(r)
				if err != nil {
					return err
				}
				return s.o.Provider.Terminate(ctx, inst.ID, inst.ProviderID)
			}},
		{name: "wait_running", wait: true, do: s.waitRunning},
		{name: "dns_record", do: s.upsertDNS, undo: s.deleteDNS},
		{name: "wait_enrollment", wait: true,
			do: func(ctx context.Context, r *run) error {
				return s.waitFor(ctx, "enrollment", func() bool {
					inst, err := s.o.Tracker.Get(r.job.InstanceID, time.Now())
					return err == nil && !inst.EnrolledAt.IsZero()
				})
			},
			undo: s.revoke},
		{name: "write_target",
			do: func(ctx context.Context, r *run) error {
				if t, err := s.o.Targets.Get(ctx, r.job.InstanceID); err == nil {
					r.detail = fmt.Sprintf("version %d already set", t.Version)
					return nil
				} else if !errors.Is(err, targets.ErrNotFound) {
					return err
				}
				inst, err := s.instance(r)
				if err != nil {
					return err
				}
				compose, err := stacks.Render(s.o.Plans[inst.Plan].Stack, stacks.Params{InstanceID: inst.ID,
					Subdomain: inst.Subdomain, Image: s.o.StackImage})
				if err != nil {
					return permanent(err)
				}
				t, err := s.o.Targets.Set(ctx, inst.ID, targets.Spec{Compose: compose})
				r.detail = fmt.Sprintf("version %d", t.Version)
				return err
			},
			undo: func(ctx context.Context, r *run) error { return s.o.Targets.Delete(ctx, r.job.InstanceID) }},
		{name: "wait_healthy", wait: true, do: s.waitHealthy},
		{name: "activate", do: s.setLifecycle(fleet.LifecycleActive)},
	}
}

func (s *Service) terminateSteps() []step {
	return []step{
		{name: "stop_stack", do: func(ctx context.Context, r *run) error {
			s.update(r, func(i *fleet.Instance) { i.Lifecycle = fleet.LifecycleTerminating })
			// The machine goes next anyway: an agent that cannot answer
			// does not hold the termination up.
			if err := s.command(ctx, r, protocol.CommandStackDown); err != nil {
				r.detail = "skipped: " + err.Error()
			}
			return nil
		}},
		{name: "final_snapshot", do: func(ctx context.Context, r *run) error {
			snap, ok := s.o.Provider.(Snapshotter)
			if !ok {
				r.detail = "skipped: provider keeps no snapshots"
				return nil
			}
			inst, err := s.instance(r)
			if err != nil {
				return err
			}
			ids, err := snap.Snapshot(ctx, inst.ProviderID, r.job.ID)
			if err != nil {
				return err
			}
			r.detail = cmp.Or(strings.Join(ids, " "), "no disks")
			return nil
		}},
		{name: "terminate_instance", do: func(ctx context.Context, r *run) error {
			inst, err := s.instance(r)
			if err != nil {
				return err
			}
			return s.o.Provider.Terminate(ctx, inst.ID, inst.ProviderID)
		}},
		{name: "delete_dns", do: s.deleteDNS},
		{name: "revoke_credentials", do: func(ctx context.Context, r *run) error {
			if err := s.revoke(ctx, r); err != nil {
				return err
			}
			return s.o.Targets.Delete(ctx, r.job.InstanceID)
		}},
		{name: "release_subdomain", do: func(_ context.Context, r *run) error {
			inst, err := s.instance(r)
			if err != nil {
				return err
			}
			return s.o.Store.ReleaseSubdomain(inst.Subdomain, inst.ID)
		}},
		{name: "delete_record", do: func(_ context.Context, r *run) error {
			s.o.Tracker.Remove(r.job.InstanceID)
			return s.o.Store.DeleteInstance(r.job.InstanceID)
		}},
	}
}

func (s *Service) suspendSteps() []step {
	return []step{
		{name: "stop_stack", do: func(ctx context.Context, r *run) error { return s.command(ctx, r, protocol.CommandStackDown) }},
		{name: "suspend", do: s.setLifecycle(fleet.LifecycleSuspended)},
	}
}

func (s *Service) resumeSteps() []step {
	return []step{
		{name: "start_stack", do: func(ctx context.Context, r *run) error { return s.command(ctx, r, protocol.CommandStackUp) }},
		{name: "wait_healthy", wait: true, do: s.waitHealthy},
		{name: "activate", do: s.setLifecycle(fleet.LifecycleActive)},
	}
}

func (s *Service) resizeSteps() []step {
	return []step{
		{name: "stop_stack", do: func(ctx context.Context, r *run) error { return s.command(ctx, r, protocol.CommandStackDown) }},
		{name: "resize", do: func(ctx context.Context, r *run) error {
			inst, err := s.instance(r)
			if err != nil {
				return err
			}
			plan := r.job.Params["plan"]
			typ := s.o.Plans[plan].InstanceType
			if err := s.o.Provider.Resize(ctx, inst.ProviderID, typ); err != nil {
				return err
			}
			s.update(r, func(i *fleet.Instance) { i.Plan, i.InstanceType = plan, typ })
			r.detail = inst.InstanceType + " → " + typ
			return nil
		}},
		// A machine stopped and started again may have a new address.
		{name: "wait_running", wait: true, do: s.waitRunning},
		// No undo: the record names the machine where it is now, and
		// deleting it would take a resized instance off the net.
		{name: "dns_record", do: s.upsertDNS},
		{name: "start_stack", do: func(ctx context.Context, r *run) error { return s.command(ctx, r, protocol.CommandStackUp) }},
		{name: "wait_healthy", wait: true, do: s.waitHealthy},
		{name: "activate", do: s.setLifecycle(fleet.LifecycleActive)},
	}
}

// command sends a stack command to the job's instance; the agent must
// answer yes.
func (s *Service) command(ctx context.Context, r *run, name string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	reply, err := s.o.Broker.Command(ctx, r.job.InstanceID, protocol.CommandRequest{V: protocol.Version, ID: r.job.ID, Name: name})
	if err != nil {
		return err
	}
	if !reply.OK {
		return fmt.Errorf("%s: %s", name, reply.Error)
	}
	return nil
}

// waitRunning waits for the job's machine to run and records its address.
func (s *Service) waitRunning(ctx context.Context, r *run) error {
	inst, err := s.instance(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.WaitTimeout)
	defer cancel()
	addr, err := s.o.Provider.WaitRunning(ctx, inst.ProviderID)
	if err != nil {
		return err
	}
	s.update(r, func(i *fleet.Instance) { i.Address = addr })
	r.detail = addr
	return nil
}

// upsertDNS points the instance's name at its address.
func (s *Service) upsertDNS(ctx context.Context, r *run) error {
	inst, err := s.instance(r)
	if err != nil {
		return err
	}
	r.detail = s.fqdn(inst) + " A " + inst.Address
	return s.o.DNS.Upsert(ctx, s.fqdn(inst), inst.Address)
}

func (s *Service) waitHealthy(ctx context.Context, r *run) error {
	t, err := s.o.Targets.Get(ctx, r.job.InstanceID)
	if err != nil {
		return err
	}
	r.detail = fmt.Sprintf("version %d", t.Version)
	var failed error
	err = s.waitFor(ctx, "healthy stack", func() bool {
		inst, err := s.o.Tracker.Get(r.job.InstanceID, time.Now())
		if err != nil {
			return false
		}
		if st := inst.Stack; st != nil && st.FailedVersion >= t.Version {
			failed = fmt.Errorf("the agent reports stack version %d failed: %s", st.FailedVersion, st.FailedReason)
			return true
		}
		return healthy(inst, t.Version)
	})
	if failed != nil {
		// The agent does not retry a version that failed: neither can we.
		return permanent(failed)
	}
	return err
}

// setLifecycle is a step that sets the instance's lifecycle and ends its job.
func (s *Service) setLifecycle(l fleet.Lifecycle) func(context.Context, *run) error {
	return func(_ context.Context, r *run) error {
		s.update(r, func(i *fleet.Instance) { i.Lifecycle, i.Job = l, "" })
		return nil
	}
}

// revoke takes away every token and credential of the job's instance.
func (s *Service) revoke(_ context.Context, r *run) error {
	s.o.Broker.Revoke(r.job.InstanceID)
	return s.o.Store.RevokeAccess(r.job.InstanceID)
}

func (s *Service) deleteDNS(ctx context.Context, r *run) error {
	inst, err := s.instance(r)
	if err != nil {
		return err
	}
	if inst.Address == "" {
		return nil
	}
	return s.o.DNS.Delete(ctx, s.fqdn(inst), inst.Address)
}
