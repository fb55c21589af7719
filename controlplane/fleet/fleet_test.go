package fleet_test

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

var (
	th = fleet.Thresholds{StaleAfter: 35 * time.Second, OfflineAfter: 2 * time.Minute}
	t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

func TestDerive(t *testing.T) {
	enrolled := t0.Add(-time.Hour)
	tests := []struct {
		name string
		inst fleet.Instance
		now  time.Time
		want fleet.Status
	}{
		{"not enrolled", fleet.Instance{CreatedAt: enrolled}, t0, fleet.StatusProvisioning},
		{"not enrolled, long silent", fleet.Instance{CreatedAt: enrolled}, t0.Add(24 * time.Hour), fleet.StatusProvisioning},
		{"connected and heartbeating", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true, Health: protocol.HealthOK}, t0, fleet.StatusOnline},
		{"no health reported yet", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true}, t0.Add(time.Second), fleet.StatusOnline},
		{"degraded health", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true, Health: protocol.HealthDegraded}, t0, fleet.StatusDegraded},
		{"just under StaleAfter", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true}, t0.Add(th.StaleAfter - time.Nanosecond), fleet.StatusOnline},
		{"exactly StaleAfter", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true}, t0.Add(th.StaleAfter), fleet.StatusStale},
		{"stale by silence beats degraded", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true, Health: protocol.HealthDegraded}, t0.Add(time.Minute), fleet.StatusStale},
		{"stale by disconnect", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: false, Health: protocol.HealthOK}, t0, fleet.StatusStale},
		{"just under OfflineAfter", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true}, t0.Add(th.OfflineAfter - time.Nanosecond), fleet.StatusStale},
		{"exactly OfflineAfter", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: true}, t0.Add(th.OfflineAfter), fleet.StatusOffline},
		{"offline while disconnected", fleet.Instance{EnrolledAt: enrolled, LastSeen: t0, Connected: false}, t0.Add(time.Hour), fleet.StatusOffline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fleet.Derive(tt.inst, tt.now, th); got != tt.want {
				t.Errorf("Derive(%+v, %v) = %q, want %q", tt.inst, tt.now, got, tt.want)
			}
		})
	}
}

// newTracker returns a tracker holding enrolled, connected instances with ids.
func newTracker(t *testing.T, ids ...string) *fleet.Tracker {
	t.Helper()
	insts := make([]fleet.Instance, len(ids))
	for i, id := range ids {
		insts[i] = fleet.Instance{ID: id, Provider: "local", CreatedAt: t0, EnrolledAt: t0, LastSeen: t0, Connected: true}
	}
	return fleet.NewTracker(th, insts)
}

func get(t *testing.T, tr *fleet.Tracker, id string, now time.Time) fleet.Instance {
	t.Helper()
	inst, err := tr.Get(id, now)
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	return inst
}

func ids(insts []fleet.Instance) []string {
	out := make([]string, len(insts))
	for i, inst := range insts {
		out[i] = inst.ID
	}
	return out
}

func TestNewTrackerMarksInstancesDisconnected(t *testing.T) {
	tr := newTracker(t, "i-a", "i-b")
	for _, inst := range tr.List(t0) {
		if inst.Connected {
			t.Errorf("%s: Connected = true after NewTracker, want false", inst.ID)
		}
		if inst.Status != fleet.StatusStale {
			t.Errorf("%s: Status = %q after NewTracker, want %q", inst.ID, inst.Status, fleet.StatusStale)
		}
	}
	if d := tr.Dirty(); len(d) != 0 {
		t.Errorf("Dirty() after NewTracker = %v, want none", ids(d))
	}
}

func TestUnknownInstance(t *testing.T) {
	tr := newTracker(t, "i-a")
	tests := []struct {
		name string
		call func() bool
	}{
		{"Heartbeat", func() bool { return tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-nope"}, t0) }},
		{"Enrolled", func() bool { return tr.Enrolled("i-nope", t0) }},
		{"Connected", func() bool { return tr.Connected("i-nope", true, t0) }},
	}
	for _, tt := range tests {
		if tt.call() {
			t.Errorf("%s of an unknown instance = true, want false", tt.name)
		}
	}
	if d := tr.Dirty(); len(d) != 0 {
		t.Errorf("Dirty() = %v, want none", ids(d))
	}
	if _, err := tr.Get("i-nope", t0); !errors.Is(err, fleet.ErrNotFound) {
		t.Errorf("Get of an unknown instance = %v, want fleet.ErrNotFound", err)
	}
}

func TestTrackerUpdates(t *testing.T) {
	tr := fleet.NewTracker(th, []fleet.Instance{{ID: "i-a", Provider: "local", CreatedAt: t0}})
	if got := get(t, tr, "i-a", t0).Status; got != fleet.StatusProvisioning {
		t.Fatalf("Status before enrolling = %q, want %q", got, fleet.StatusProvisioning)
	}

	t1 := t0.Add(time.Minute)
	if !tr.Enrolled("i-a", t1) {
		t.Fatal("Enrolled = false, want true")
	}
	got := get(t, tr, "i-a", t1)
	if !got.EnrolledAt.Equal(t1) || !got.LastSeen.Equal(t1) {
		t.Errorf("after Enrolled: EnrolledAt %v, LastSeen %v, want both %v", got.EnrolledAt, got.LastSeen, t1)
	}

	t2 := t1.Add(time.Second)
	if !tr.Connected("i-a", true, t2) {
		t.Fatal("Connected = false, want true")
	}
	if got := get(t, tr, "i-a", t2); !got.Connected || !got.LastSeen.Equal(t2) || got.Status != fleet.StatusOnline {
		t.Errorf("after Connected(true): Connected %v, LastSeen %v, Status %q; want true, %v, online", got.Connected, got.LastSeen, got.Status, t2)
	}

	t3 := t2.Add(10 * time.Second)
	hb := protocol.Heartbeat{InstanceID: "i-a", AgentVersion: "1.2.3", Health: protocol.HealthDegraded, Problems: []string{"disk / 95% full"}}
	if !tr.Heartbeat(hb, t3) {
		t.Fatal("Heartbeat = false, want true")
	}
	got = get(t, tr, "i-a", t3)
	want := fleet.Instance{ID: "i-a", Provider: "local", CreatedAt: t0, EnrolledAt: t1, LastSeen: t3, Connected: true,
		AgentVersion: "1.2.3", Health: protocol.HealthDegraded, Problems: []string{"disk / 95% full"}, Status: fleet.StatusDegraded}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after Heartbeat:\n got %+v\nwant %+v", got, want)
	}

	t4 := t3.Add(time.Second)
	if !tr.Connected("i-a", false, t4) {
		t.Fatal("Connected = false, want true")
	}
	if got := get(t, tr, "i-a", t4); got.Connected || !got.LastSeen.Equal(t4) || got.Status != fleet.StatusStale {
		t.Errorf("after Connected(false): Connected %v, LastSeen %v, Status %q; want false, %v, stale", got.Connected, got.LastSeen, got.Status, t4)
	}
}

func TestDirty(t *testing.T) {
	tr := newTracker(t, "i-a", "i-b", "i-c")
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-c"}, t0)
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-c", AgentVersion: "2"}, t0.Add(time.Second)) // twice, reported once
	tr.Connected("i-a", true, t0)
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-nope"}, t0)

	got := ids(tr.Dirty())
	slices.Sort(got)
	if want := []string{"i-a", "i-c"}; !slices.Equal(got, want) {
		t.Errorf("Dirty() = %v, want %v", got, want)
	}
	if d := tr.Dirty(); len(d) != 0 {
		t.Errorf("second Dirty() = %v, want none", ids(d))
	}

	tr.Enrolled("i-b", t0)
	if d := tr.Dirty(); !slices.Equal(ids(d), []string{"i-b"}) || !d[0].EnrolledAt.Equal(t0) {
		t.Errorf("Dirty() after Enrolled = %+v, want i-b enrolled at %v", d, t0)
	}

	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-b"}, t0)
	tr.Remove("i-b")
	if d := tr.Dirty(); len(d) != 0 {
		t.Errorf("Dirty() after Remove = %v, want none", ids(d))
	}
}

func TestListSortedByID(t *testing.T) {
	tr := newTracker(t, "i-c", "i-a", "i-d")
	tr.Put(fleet.Instance{ID: "i-b", CreatedAt: t0})
	if got, want := ids(tr.List(t0)), []string{"i-a", "i-b", "i-c", "i-d"}; !slices.Equal(got, want) {
		t.Errorf("List() ids = %v, want %v", got, want)
	}
	if got := ids(fleet.NewTracker(th, nil).List(t0)); len(got) != 0 {
		t.Errorf("List() of an empty tracker = %v, want none", got)
	}
}

func TestGetReturnsACopy(t *testing.T) {
	tr := newTracker(t, "i-a")
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-a", Problems: []string{"original"}}, t0)

	got := get(t, tr, "i-a", t0)
	got.Problems[0] = "changed"
	got.Problems = append(got.Problems, "added")
	got.AgentVersion = "changed"

	listed := tr.List(t0)
	listed[0].Problems[0] = "changed by List caller"

	again := get(t, tr, "i-a", t0)
	if !slices.Equal(again.Problems, []string{"original"}) || again.AgentVersion != "" {
		t.Errorf("after mutating copies: Problems %q, AgentVersion %q; want [original] and empty", again.Problems, again.AgentVersion)
	}
}

func TestTrackerConcurrentUse(t *testing.T) {
	const workers, beats = 8, 200
	insts := make([]string, workers)
	for i := range insts {
		insts[i] = fmt.Sprintf("i-%02d", i)
	}
	tr := newTracker(t, insts...)

	var wg sync.WaitGroup
	for w, id := range insts {
		wg.Go(func() {
			for n := range beats {
				now := t0.Add(time.Duration(n) * time.Second)
				if !tr.Heartbeat(protocol.Heartbeat{InstanceID: id, Seq: uint64(n), Problems: []string{strings.Repeat("x", w)}}, now) {
					t.Errorf("Heartbeat(%s) = false", id)
					return
				}
				if n%10 == 0 {
					tr.Connected(id, n%20 == 0, now)
				}
			}
		})
	}
	var (
		mu    sync.Mutex
		dirty = map[string]bool{}
	)
	for range 2 {
		wg.Go(func() {
			for range beats {
				for _, inst := range tr.List(t0) {
					_ = len(inst.Problems)
				}
				if _, err := tr.Get(insts[0], t0); err != nil {
					t.Errorf("Get: %v", err)
					return
				}
				d := tr.Dirty()
				mu.Lock()
				for _, inst := range d {
					dirty[inst.ID] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	for _, inst := range tr.Dirty() {
		dirty[inst.ID] = true
	}
	if len(dirty) != workers {
		t.Errorf("Dirty() reported %d instances in all, want %d", len(dirty), workers)
	}
	for _, inst := range tr.List(t0) {
		if want := t0.Add((beats - 1) * time.Second); !inst.LastSeen.Equal(want) {
			t.Errorf("%s: LastSeen = %v, want %v", inst.ID, inst.LastSeen, want)
		}
	}
}

func TestOfCustomer(t *testing.T) {
	tr := fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Minute, OfflineAfter: time.Hour}, []fleet.Instance{
		{ID: "i-2", Customer: "acme"}, {ID: "i-1", Customer: "acme"}, {ID: "i-3", Customer: "other"},
	})
	ids := func(customer string) string {
		var out []string
		for _, inst := range tr.OfCustomer(customer, time.Now()) {
			out = append(out, inst.ID)
		}
		return strings.Join(out, " ")
	}
	if got := ids("acme"); got != "i-1 i-2" {
		t.Errorf("acme's instances: %q", got)
	}
	tr.Update("i-3", func(inst *fleet.Instance) { inst.Customer = "acme" })
	tr.Put(fleet.Instance{ID: "i-1", Customer: "other"})
	tr.Remove("i-2")
	if got, other := ids("acme"), ids("other"); got != "i-3" || other != "i-1" {
		t.Errorf("after moves: acme %q, other %q; want i-3 and i-1", got, other)
	}
}
