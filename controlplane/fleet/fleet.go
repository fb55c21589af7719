// Package fleet is the control plane's picture of its instances: what each
// one is, and its status derived from heartbeats and connection events. It
// does no I/O; the control plane feeds it what the broker sees and persists
// what it holds.
package fleet

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/shared/protocol"
)

// ErrNotFound is returned for an instance id the fleet does not know.
var ErrNotFound = fault.New(fault.NotFound, "instance not found")

// Status is what an operator and the customer see of an instance.
type Status string

// Status values. A status is only ever reported: no status change ever
// triggers an action on the customer's stack.
const (
	// StatusProvisioning: launched, its agent has not enrolled yet.
	StatusProvisioning Status = "provisioning"
	// StatusOnline: connected and heartbeating, and healthy by its own account.
	StatusOnline Status = "online"
	// StatusDegraded: heartbeating, but its agent reports a problem.
	StatusDegraded Status = "degraded"
	// StatusStale: no heartbeat for a while, or its connection dropped.
	StatusStale Status = "stale"
	// StatusOffline: silent for long enough to be considered down.
	StatusOffline Status = "offline"
)

// Lifecycle is where an instance stands in its customer's life: set by
// provisioning jobs only, never by what the agent reports.
type Lifecycle string

// Lifecycle values.
const (
	LifecycleProvisioning Lifecycle = "provisioning"
	LifecycleActive       Lifecycle = "active"
	LifecycleSuspended    Lifecycle = "suspended"
	LifecycleTerminating  Lifecycle = "terminating"
)

// Instance is one customer server as the control plane knows it.
type Instance struct {
	ID        string    `json:"id"`
	Provider  string    `json:"provider"`
	CreatedAt time.Time `json:"created_at"`
	// Who and what it is for, and where it stands; written by jobs.
	Customer     string `json:"customer,omitempty"`
	Plan         string `json:"plan,omitempty"`
	Subdomain    string `json:"subdomain,omitempty"`
	InstanceType string `json:"instance_type,omitempty"`
	Region       string `json:"region,omitempty"`
	// Tags are an operator's labels, for selecting instances in a run.
	Tags       map[string]string `json:"tags,omitempty"`
	ProviderID string            `json:"provider_id,omitempty"`
	Address    string            `json:"address,omitempty"`
	Lifecycle  Lifecycle         `json:"lifecycle,omitempty"`
	// Job is the job working on the instance now, if any.
	Job        string    `json:"job,omitempty"`
	EnrolledAt time.Time `json:"enrolled_at,omitzero"`
	// LastSeen is the last heartbeat or connection event; zero until enrolled.
	LastSeen     time.Time       `json:"last_seen,omitzero"`
	Connected    bool            `json:"connected"`
	AgentVersion string          `json:"agent_version,omitempty"`
	Health       protocol.Health `json:"health,omitempty"`
	Problems     []string        `json:"problems,omitempty"`
	// Stack is the customer's stack as the agent last reported it.
	Stack  *protocol.StackStatus `json:"stack,omitempty"`
	Status Status                `json:"status"`
}

// Thresholds set when silence turns an instance stale, then offline.
type Thresholds struct {
	StaleAfter   time.Duration
	OfflineAfter time.Duration
}

// Derive is the status of inst at now.
//
//	not enrolled                           → provisioning
//	silent for OfflineAfter                → offline
//	disconnected, or silent for StaleAfter → stale
//	agent reports degraded health          → degraded
//	otherwise                              → online
func Derive(inst Instance, now time.Time, th Thresholds) Status {
	if inst.EnrolledAt.IsZero() {
		return StatusProvisioning
	}
	silence := now.Sub(inst.LastSeen)
	switch {
	case silence >= th.OfflineAfter:
		return StatusOffline
	case !inst.Connected || silence >= th.StaleAfter:
		return StatusStale
	case inst.Health == protocol.HealthDegraded:
		return StatusDegraded
	default:
		return StatusOnline
	}
}

// Tracker holds the live state of every instance. It is safe for concurrent
// use. Changes since the last Dirty call are remembered so the caller can
// persist them in batches instead of once per heartbeat.
type Tracker struct {
	th   Thresholds
	mu   sync.Mutex
	byID map[string]*Instance
	// byCustomer indexes byID by customer.
	byCustomer map[string]map[string]*Instance
	dirty      map[string]struct{}
	// changed is what changed since Watch last looked; notify wakes it.
	changed map[string]struct{}
	notify  chan struct{}
}

// NewTracker returns a tracker holding insts, as loaded from the store.
// Connections are not known after a restart, so every instance starts
// disconnected until its agent reconnects.
func NewTracker(th Thresholds, insts []Instance) *Tracker {
	t := &Tracker{th: th, byID: make(map[string]*Instance, len(insts)), dirty: map[string]struct{}{},
		byCustomer: map[string]map[string]*Instance{}, changed: map[string]struct{}{}, notify: make(chan struct{}, 1)}
	for _, inst := range insts {
		inst.Connected = false
		t.put(&inst)
	}
	return t
}

// Update applies fn to instance id and returns the result; false if unknown.
// The caller persists the lifecycle fields it changed.
func (t *Tracker) Update(id string, fn func(*Instance)) (Instance, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	inst, ok := t.byID[id]
	if !ok {
		return Instance{}, false
	}
	customer := inst.Customer
	fn(inst)
	if inst.Customer != customer {
		t.unindex(id, customer)
		t.put(inst)
	}
	t.touch(id)
	return *inst, true
}

// Put adds or replaces an instance.
func (t *Tracker) Put(inst Instance) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.byID[inst.ID]; ok {
		t.unindex(old.ID, old.Customer)
	}
	t.put(&inst)
	t.touch(inst.ID)
}

// put indexes inst; t.mu is held.
func (t *Tracker) put(inst *Instance) {
	t.byID[inst.ID] = inst
	if t.byCustomer[inst.Customer] == nil {
		t.byCustomer[inst.Customer] = map[string]*Instance{}
	}
	t.byCustomer[inst.Customer][inst.ID] = inst
}

// unindex drops instance id from customer's index; t.mu is held.
func (t *Tracker) unindex(id, customer string) {
	delete(t.byCustomer[customer], id)
	if len(t.byCustomer[customer]) == 0 {
		delete(t.byCustomer, customer)
	}
}

// OfCustomer returns customer's instances, sorted by id, with their
// status at now.
func (t *Tracker) OfCustomer(customer string, now time.Time) []Instance {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Instance, 0, len(t.byCustomer[customer]))
	for _, inst := range t.byCustomer[customer] {
		out = append(out, t.view(inst, now))
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Remove forgets an instance.
func (t *Tracker) Remove(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if inst, ok := t.byID[id]; ok {
		t.unindex(id, inst.Customer)
	}
	delete(t.byID, id)
	delete(t.dirty, id)
	t.touch(id)
}

// touch notes that instance id changed, for Watch; t.mu is held.
func (t *Tracker) touch(id string) {
	t.changed[id] = struct{}{}
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// takeChanged returns the ids changed since the last call, and forgets them.
func (t *Tracker) takeChanged() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]string, 0, len(t.changed))
	for id := range t.changed {
		ids = append(ids, id)
	}
	clear(t.changed)
	return ids
}

// ids returns the id of every instance.
func (t *Tracker) ids() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]string, 0, len(t.byID))
	for id := range t.byID {
		ids = append(ids, id)
	}
	return ids
}

// update applies fn to instance id and marks it dirty; false if unknown.
func (t *Tracker) update(id string, fn func(*Instance)) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	inst, ok := t.byID[id]
	if ok {
		fn(inst)
		t.dirty[id] = struct{}{}
		t.touch(id)
	}
	return ok
}

// Heartbeat records a heartbeat received at now; false if the instance is unknown.
func (t *Tracker) Heartbeat(hb protocol.Heartbeat, now time.Time) bool {
	return t.update(hb.InstanceID, func(inst *Instance) {
		inst.LastSeen, inst.Connected = now, true
		inst.AgentVersion, inst.Health, inst.Problems, inst.Stack = hb.AgentVersion, hb.Health, hb.Problems, hb.Stack
	})
}

// Enrolled records that instance id's agent enrolled at now.
func (t *Tracker) Enrolled(id string, now time.Time) bool {
	return t.update(id, func(inst *Instance) { inst.EnrolledAt, inst.LastSeen = now, now })
}

// Connected records a connection (true) or a disconnection (false) of
// instance id's agent at now.
func (t *Tracker) Connected(id string, connected bool, now time.Time) bool {
	return t.update(id, func(inst *Instance) { inst.Connected, inst.LastSeen = connected, now })
}

// Get returns instance id with its status at now.
func (t *Tracker) Get(id string, now time.Time) (Instance, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	inst, ok := t.byID[id]
	if !ok {
		return Instance{}, ErrNotFound
	}
	return t.view(inst, now), nil
}

// List returns every instance, sorted by id, with its status at now.
func (t *Tracker) List(now time.Time) []Instance {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Instance, 0, len(t.byID))
	for _, inst := range t.byID {
		out = append(out, t.view(inst, now))
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Dirty returns the instances changed since the last call, and forgets them.
func (t *Tracker) Dirty() []Instance {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Instance, 0, len(t.dirty))
	for id := range t.dirty {
		out = append(out, *t.byID[id])
	}
	clear(t.dirty)
	return out
}

// view is a copy of inst with its derived status.
func (t *Tracker) view(inst *Instance, now time.Time) Instance {
	v := *inst
	v.Problems = slices.Clone(inst.Problems)
	v.Status = Derive(v, now, t.th)
	return v
}
