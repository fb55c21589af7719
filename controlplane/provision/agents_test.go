package provision_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/shared/protocol"
)

// machines is the cloud as a provider whose machines' agents enroll as
// real ones do: each launched machine redeems the enrollment token its
// launch carried in the store, with a key of its own, as the broker's
// enrollment responder has it, and then shows in the tracker as enrolled.
type machines struct {
	provision.Provider
	st      *store.Store
	tracker *fleet.Tracker

	mu sync.Mutex
	// tokens are the enrollment tokens the launches carried, by instance.
	tokens map[string][]string
	// refused are the enrollments the store refused.
	refused []error
}

func (m *machines) Launch(ctx context.Context, spec provision.LaunchSpec) (string, error) {
	pid, err := m.Provider.Launch(ctx, spec)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tokens[spec.InstanceID] = append(m.tokens[spec.InstanceID], spec.EnrollmentToken)
	now := time.Now()
	if err := m.st.RedeemToken(spec.InstanceID, spec.EnrollmentToken, "agent-key-"+spec.InstanceID, now); err != nil {
		m.refused = append(m.refused, err)
		return pid, nil
	}
	m.tracker.Enrolled(spec.InstanceID, now)
	return pid, nil
}

// launched returns the tokens the launches of instance id carried and the
// enrollments refused.
func (m *machines) launched(id string) (tokens []string, refused []error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tokens[id], m.refused
}

// newCloud is an empty cloud.
func newCloud() *cloud {
	return &cloud{machines: map[string]bool{}, dns: map[string]string{}, targets: map[string]protocol.Target{},
		commandKeys: map[string]string{}}
}

// tokenTTL is how long the enrollment tokens of startEnrolling's service
// are good for.
const tokenTTL = time.Hour

// agentsSetup is what startEnrolling puts in place of the cloud's broker
// and of the store.
type agentsSetup struct {
	// broker takes the commands; the cloud, which says yes to all, when nil.
	broker provision.Broker
	// wrap stands between the service and its store, when set.
	wrap func(provision.Store) provision.Store
}

// startEnrolling is start with machines whose agents enroll through the
// store (see machines), over the store in dir, until ctx ends or the test
// does. c keeps the machines, names and targets across a restart.
func startEnrolling(ctx context.Context, t *testing.T, dir string, c *cloud, s agentsSetup) (*env, *machines) {
	t.Helper()
	st, tracker := openStore(t, dir)
	c.tracker, c.holdEnrollment = tracker, true
	m := &machines{Provider: c, st: st, tracker: tracker, tokens: map[string][]string{}}
	var records provision.Store = st
	if s.wrap != nil {
		records = s.wrap(st)
	}
	var broker provision.Broker = c
	if s.broker != nil {
		broker = s.broker
	}
	svc := provision.New(provision.Options{Provider: m, DNS: c, Store: records, Tracker: tracker, Publisher: fleet.NewFeed(64, 64), Broker: broker,
		Targets: targetsOf{c}, Zone: "example.test", TokenKey: []byte("0123456789abcdef0123456789abcdef"), TokenTTL: tokenTTL,
		Plans: map[string]provision.Plan{"starter": {Stack: "starter", InstanceType: "t3.small"}}, StackImage: "stackpro/demo:test",
		Workers: 2, Attempts: 3, RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond, WaitTimeout: 5 * time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := svc.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once sync.Once
	e := &env{svc: svc, st: st, tracker: tracker, cloud: c}
	e.cancel = func() { once.Do(func() { cancel(); <-done; st.Close() }) }
	t.Cleanup(e.cancel)
	return e, m
}
