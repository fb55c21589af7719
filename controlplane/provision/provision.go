// Package provision runs the durable jobs that bring instances into the
// fleet and take them out — provision, suspend, resume, resize, terminate —
// as sagas: ordered, idempotent steps persisted after each one, retried with
// backoff, compensated in reverse when one fails for good, and resumed from
// the last completed step after a restart. Machines come from a Provider
// and names from a DNS, both small interfaces declared here.
package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"log/slog"
	"sync"
	"time"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/targets"
	"github.com/stackpro/stackpro/shared/protocol"
)

// LaunchSpec is what a provider needs to start an instance whose agent can enroll.
type LaunchSpec struct {
	InstanceID      string
	EnrollmentToken string
	NATSURL         string
	Customer, Plan  string
	InstanceType    string
	// ClientToken is the same on every retry of one launch, so a provider
	// that honours it never starts a second machine.
	ClientToken string
	// Intervals the agent reports at.
	HeartbeatInterval, MetricsInterval time.Duration
	// CommandKey is the control plane's command key (base64, as
	// protocol.FormatCommandKey writes it), pinned in the agent's bootstrap.
	CommandKey string
}

// Provider starts and stops the machines instances run on. Every method is
// idempotent: a step may run it again after a crash.
type Provider interface {
	Name() string
	// Launch starts the machine, or finds the one an earlier try started,
	// and returns the provider's id for it.
	Launch(ctx context.Context, spec LaunchSpec) (providerID string, err error)
	// WaitRunning waits until the machine runs and returns its address.
	WaitRunning(ctx context.Context, providerID string) (address string, err error)
	// Resize gives the machine another instance type (stop, modify, start).
	Resize(ctx context.Context, providerID, instanceType string) error
	// Terminate frees the machine; one already gone is not an error.
	Terminate(ctx context.Context, instanceID, providerID string) error
}

// Snapshotter is a Provider that can keep a machine's disks: the terminate
// job snapshots them before the machine goes.
type Snapshotter interface {
	// Snapshot snapshots every disk of the machine and returns the
	// snapshots' ids; a machine already gone has none. A call with a
	// token an earlier call had takes no second snapshot of a disk, and
	// returns the earlier one's id.
	Snapshot(ctx context.Context, providerID, token string) (snapshotIDs []string, err error)
}

// DNS keeps an A record per instance.
type DNS interface {
	Upsert(ctx context.Context, name, address string) error
	// Delete removes the record; one already gone is not an error.
	Delete(ctx context.Context, name, address string) error
}

// Store is what the jobs record.
type Store interface {
	SaveJob(job Job, insts ...fleet.Instance) error
	Job(id string) (Job, error)
	Jobs() ([]Job, error)
	// JobByKey returns the job saved with key, or a NotFound error.
	JobByKey(key string) (Job, error)
	ReserveSubdomain(name, instanceID string) error
	ReleaseSubdomain(name, instanceID string) error
	RecordToken(instanceID, token string, ttl time.Duration, now time.Time) error
	RevokeAccess(instanceID string) error
	DeleteInstance(id string) error
	SetTags(id string, tags map[string]string) error
}

// Targets keeps what each instance should run.
type Targets interface {
	Get(ctx context.Context, instanceID string) (protocol.Target, error)
	Set(ctx context.Context, instanceID string, spec targets.Spec) (protocol.Target, error)
	Delete(ctx context.Context, instanceID string) error
}

// Broker is the part of the NATS broker the jobs use.
type Broker interface {
	// Revoke forgets an instance's keys and closes its connections.
	Revoke(instanceID string)
	// Command sends a command to an instance's agent and waits for the answer.
	Command(ctx context.Context, id string, req protocol.CommandRequest) (protocol.CommandReply, error)
}

// Plan is what a plan gives an instance.
type Plan struct {
	// Stack names the template under deploy/stacks/.
	Stack        string
	InstanceType string
}

// Faults inject failures for the crash and failure tests; both empty in
// normal operation.
type Faults struct {
	// CrashAfter kills the process (SIGKILL) right after this step is saved.
	CrashAfter string
	// Fail makes this step fail every time.
	Fail string
	// FailFor limits Fail to the jobs of customers whose id starts with
	// it; empty means every job.
	FailFor string
}

// Options configures a Service.
type Options struct {
	Provider Provider
	DNS      DNS
	Store    Store
	Tracker  *fleet.Tracker
	// Publisher takes every change of a job for the fleet's followers.
	Publisher fleet.Publisher
	Broker    Broker
	Targets   Targets
	// Zone is the DNS zone instances get a name in: <subdomain>.<zone>.
	Zone string
	// Region is where the provider launches machines ("local" for local
	// ones); instances carry it for the fleet overview.
	Region  string
	NATSURL string
	// TokenKey derives each instance's enrollment token, so a retried step
	// hands a machine the same token without storing it.
	TokenKey []byte
	TokenTTL time.Duration
	Plans    map[string]Plan
	// StackImage is the image the stand-in services run.
	StackImage string
	// Intervals the agents are told to report at.
	HeartbeatInterval, MetricsInterval time.Duration
	// CommandKey is the key agents check commands with; every bootstrap
	// pins it, so an enrollment reply cannot hand over another.
	CommandKey ed25519.PublicKey
	// Workers bounds how many jobs run a step at once; steps that only
	// wait hold no worker.
	Workers int
	// Attempts, RetryBase and RetryMax shape a failing step's retries.
	Attempts            int
	RetryBase, RetryMax time.Duration
	// WaitTimeout bounds one wait for a machine, an enrollment or a healthy stack.
	WaitTimeout time.Duration
	Faults      Faults
	Log         *slog.Logger
}

// Service runs the jobs.
type Service struct {
	o    Options
	log  *slog.Logger
	defs map[string][]step
	sem  chan struct{}
	jobs jobSet
	// submitted hands new jobs to Run; submitMu makes "no other unfinished
	// job on this instance" and saving the new one a single step.
	submitted chan string
	submitMu  sync.Mutex
	counts    *jobCounts
}

// New returns a Service; Run starts its workers.
func New(o Options) *Service {
	s := &Service{o: o, log: o.Log.With("component", "provision", "provider", o.Provider.Name()),
		sem: make(chan struct{}, max(o.Workers, 1)), jobs: jobSet{running: map[string]bool{}},
		submitted: make(chan string, 4096), counts: newJobCounts()}
	s.defs = map[string][]step{
		KindProvision: s.provisionSteps(),
		KindTerminate: s.terminateSteps(),
		KindSuspend:   s.suspendSteps(),
		KindResume:    s.resumeSteps(),
		KindResize:    s.resizeSteps(),
	}
	return s
}

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// NewInstanceID returns a fresh id in the form of an EC2 instance id.
func NewInstanceID() string { return newID("i-") }

// enrollmentToken derives instance id's token from the service's key: the
// same on every retry, stored nowhere but as a hash.
func (s *Service) enrollmentToken(instanceID string) string {
	mac := hmac.New(sha256.New, s.o.TokenKey)
	mac.Write([]byte("enroll:" + instanceID))
	return "spe_" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(mac.Sum(nil)[:20])
}

// Errors callers test for (fault errors: their messages are written for
// a client).
var (
	// ErrBadRequest is a request provisioning refuses; its problems say why.
	ErrBadRequest = fault.New(fault.Invalid, "invalid request")
	ErrBusy       = fault.New(fault.Busy, "another job is working on this instance")
	ErrNotFound   = fault.New(fault.NotFound, "instance not found")
	// ErrSubdomainTaken is a subdomain another instance holds (the store
	// returns it).
	ErrSubdomainTaken = fault.New(fault.Conflict, "subdomain taken")
)
