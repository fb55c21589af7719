package provision_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/provision"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/internal/targets"
	"github.com/stackpro/stackpro/shared/protocol"
)

// provider records launches and fails when told to.
type provider struct {
	fail       error
	launched   []provision.LaunchSpec
	terminated []string
}

func (p *provider) Name() string { return "test" }
func (p *provider) Launch(_ context.Context, spec provision.LaunchSpec) error {
	p.launched = append(p.launched, spec)
	return p.fail
}
func (p *provider) Terminate(_ context.Context, id string) error {
	p.terminated = append(p.terminated, id)
	return p.fail
}

// revoker stands in for the broker and the targets store.
type revoker struct {
	revoked, targetsDeleted []string
	targets                 map[string]targets.Spec
}

func (r *revoker) Set(_ context.Context, id string, spec targets.Spec) (protocol.Target, error) {
	if r.targets == nil {
		r.targets = map[string]targets.Spec{}
	}
	r.targets[id] = spec
	return protocol.Target{InstanceID: id, Version: 1, Compose: spec.Compose}, nil
}

func (r *revoker) Revoke(id string) { r.revoked = append(r.revoked, id) }

func (r *revoker) Delete(_ context.Context, id string) error {
	r.targetsDeleted = append(r.targetsDeleted, id)
	return nil
}

func setup(t *testing.T, p *provider) (*provision.Service, *store.Store, *fleet.Tracker, *revoker) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	tracker := fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Minute, OfflineAfter: time.Hour}, nil)
	r := &revoker{}
	svc := provision.New(provision.Options{Provider: p, Store: st, Tracker: tracker, Broker: r, Targets: r,
		NATSURL: "nats://127.0.0.1:4222", TokenTTL: time.Hour, Plan: "starter", StackImage: "stackpro/demo:test", HeartbeatInterval: time.Second, MetricsInterval: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return svc, st, tracker, r
}

func TestLaunch(t *testing.T) {
	p := &provider{}
	svc, st, tracker, r := setup(t, p)
	inst, err := svc.Launch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.ValidInstanceID(inst.ID); err != nil {
		t.Errorf("instance id: %v", err)
	}
	if len(p.launched) != 1 || p.launched[0].InstanceID != inst.ID || p.launched[0].EnrollmentToken == "" {
		t.Fatalf("launched %+v", p.launched)
	}
	if got, _ := tracker.Get(inst.ID, time.Now()); got.Status != fleet.StatusProvisioning {
		t.Errorf("status = %s, want provisioning", got.Status)
	}
	// The instance starts with its plan's stack.
	if spec, ok := r.targets[inst.ID]; !ok || !strings.Contains(spec.Compose, "stackpro/demo:test") || spec.Validate() != nil {
		t.Errorf("initial target = %+v, want the starter stack", spec)
	}
	// The token handed to the provider is the one the store will redeem.
	if err := st.RedeemToken(inst.ID, p.launched[0].EnrollmentToken, "UKEY", time.Now()); err != nil {
		t.Errorf("redeeming the launched token: %v", err)
	}
}

// A failed launch leaves no instance behind, in the store or the tracker.
func TestLaunchFailureCompensates(t *testing.T) {
	p := &provider{fail: errors.New("no capacity")}
	svc, st, tracker, r := setup(t, p)
	if _, err := svc.Launch(context.Background()); err == nil {
		t.Fatal("Launch succeeded, want the provider's error")
	}
	if len(r.targetsDeleted) != 1 {
		t.Errorf("the failed instance's target was not removed: %v", r.targetsDeleted)
	}
	if insts, _ := st.Instances(); len(insts) != 0 {
		t.Errorf("store keeps %+v after a failed launch", insts)
	}
	if list := tracker.List(time.Now()); len(list) != 0 {
		t.Errorf("tracker keeps %+v after a failed launch", list)
	}
}

func TestTerminate(t *testing.T) {
	p := &provider{}
	svc, st, tracker, r := setup(t, p)
	inst, err := svc.Launch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Terminate(context.Background(), inst.ID); err != nil {
		t.Fatal(err)
	}
	if len(p.terminated) != 1 || len(r.revoked) != 1 || r.revoked[0] != inst.ID || len(r.targetsDeleted) != 1 {
		t.Errorf("terminated %v, revoked %v, targets deleted %v", p.terminated, r.revoked, r.targetsDeleted)
	}
	if insts, _ := st.Instances(); len(insts) != 0 {
		t.Errorf("store keeps %+v", insts)
	}
	if _, err := tracker.Get(inst.ID, time.Now()); !errors.Is(err, fleet.ErrNotFound) {
		t.Errorf("tracker still has %s", inst.ID)
	}
}

// When the provider cannot terminate, the instance is kept so it can be retried.
func TestTerminateFailureKeepsRecord(t *testing.T) {
	p := &provider{}
	svc, st, _, r := setup(t, p)
	inst, err := svc.Launch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p.fail = errors.New("api down")
	if err := svc.Terminate(context.Background(), inst.ID); err == nil {
		t.Fatal("Terminate succeeded, want the provider's error")
	}
	if insts, _ := st.Instances(); len(insts) != 1 || len(r.revoked) != 0 {
		t.Errorf("after a failed terminate: instances %+v, revoked %v; want the record kept and nothing revoked", insts, r.revoked)
	}
}
