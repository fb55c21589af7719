package dashboardapi

import (
	"cmp"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/shared/protocol"
)

// instances lists the instances the caller sees, by id, paged, optionally
// only those of one ?status=, ?plan= or ?customer=.
func (a *API) instances(w http.ResponseWriter, r *http.Request) error {
	pg, err := readPage(r)
	if err != nil {
		return err
	}
	p, q := principal(r), r.URL.Query()
	match := func(field, value string) bool { return q.Get(field) == "" || q.Get(field) == value }
	list := slices.DeleteFunc(a.o.Fleet.List(time.Now()), func(inst fleet.Instance) bool {
		return !sees(p, inst.Customer) || !match("status", string(inst.Status)) || !match("plan", inst.Plan) || !match("customer", inst.Customer)
	})
	items, next := page(list, func(inst fleet.Instance) string { return inst.ID }, pg)
	return writeJSON(w, http.StatusOK, instanceList{Instances: nonNil(items), NextCursor: next})
}

// instanceList is a page of instances.
type instanceList struct {
	Instances  []fleet.Instance `json:"instances"`
	NextCursor string           `json:"next_cursor,omitempty"`
}

// visibleInstance is instance id if the caller may see it, else a 404.
func (a *API) visibleInstance(r *http.Request) (fleet.Instance, error) {
	inst, err := a.o.Fleet.Get(chi.URLParam(r, "id"), time.Now())
	if errors.Is(err, fleet.ErrNotFound) || err == nil && !sees(principal(r), inst.Customer) {
		return inst, httpError{Code: http.StatusNotFound, Msg: "instance not found", Err: err}
	}
	return inst, err
}

// customerStatus is what the frontend shows a customer of their server.
type customerStatus struct {
	CustomerID string          `json:"customer_id"`
	InstanceID string          `json:"instance_id"`
	Status     fleet.Status    `json:"status"`
	Lifecycle  fleet.Lifecycle `json:"lifecycle,omitempty"`
	Subdomain  string          `json:"subdomain,omitempty"`
	// Services maps each service of the stack to its state: the
	// healthcheck's verdict (healthy, unhealthy, starting) while it runs
	// one, else the container's state (running, exited, …).
	Services map[string]string `json:"services"`
	Metrics  *statusMetrics    `json:"metrics,omitempty"`
	LastSeen time.Time         `json:"last_seen,omitzero"`
	Job      *jobSummary       `json:"job,omitempty"`
}

// statusMetrics is the latest sample, in the frontend's words.
type statusMetrics struct {
	SampledAt     time.Time `json:"sampled_at"`
	UptimeSeconds uint64    `json:"uptime"`
	StorageUsed   uint64    `json:"storage_used"`
	StorageTotal  uint64    `json:"storage_total"`
	// Bandwidth is bytes received and sent since the machine booted.
	Bandwidth   uint64  `json:"bandwidth"`
	CPUPercent  float64 `json:"cpu_percent"`
	MemoryUsed  uint64  `json:"memory_used"`
	MemoryTotal uint64  `json:"memory_total"`
}

// jobSummary is the job working on an instance now.
type jobSummary struct {
	ID    string             `json:"id"`
	Kind  string             `json:"kind"`
	State provision.JobState `json:"state"`
	// Step is the step it is at.
	Step string `json:"step,omitempty"`
}

// customerStatus answers GET /customers/{id}/status: the customer's
// current instance (the newest one not being terminated).
func (a *API) customerStatus(w http.ResponseWriter, r *http.Request) error {
	customer := chi.URLParam(r, "id")
	if !sees(principal(r), customer) {
		return httpError{Code: http.StatusNotFound, Msg: "customer not found"}
	}
	var inst *fleet.Instance
	for _, it := range a.o.Fleet.OfCustomer(customer, time.Now()) {
		if inst == nil || current(it, *inst) {
			inst = &it
		}
	}
	if inst == nil {
		return httpError{Code: http.StatusNotFound, Msg: "the customer has no instance yet"}
	}
	st := customerStatus{CustomerID: customer, InstanceID: inst.ID, Status: inst.Status, Lifecycle: inst.Lifecycle,
		Subdomain: inst.Subdomain, Services: map[string]string{}, LastSeen: inst.LastSeen}
	if inst.Stack != nil {
		for _, svc := range inst.Stack.Services {
			st.Services[svc.Service] = serviceState(svc)
		}
	}
	if m, ok := a.o.Metrics.LatestMetrics(inst.ID); ok {
		p := fleet.PointFrom(nil, m)
		st.Metrics = &statusMetrics{SampledAt: m.At, UptimeSeconds: m.UptimeSeconds, StorageUsed: p.DiskUsed, StorageTotal: p.DiskTotal,
			Bandwidth: m.Network.RxBytes + m.Network.TxBytes, CPUPercent: m.CPUPercent, MemoryUsed: p.MemoryUsed, MemoryTotal: p.MemoryTotal}
	}
	if inst.Job != "" {
		if job, err := a.o.Jobs.Job(inst.Job); err == nil {
			st.Job = summarize(job)
		}
	}
	return writeJSON(w, http.StatusOK, st)
}

// current reports whether a is a customer's current instance rather than b.
func current(a, b fleet.Instance) bool {
	if goingA, goingB := a.Lifecycle == fleet.LifecycleTerminating, b.Lifecycle == fleet.LifecycleTerminating; goingA != goingB {
		return goingB
	}
	return a.CreatedAt.After(b.CreatedAt)
}

func serviceState(svc protocol.ServiceState) string {
	if svc.State == "running" && svc.Health != "" {
		return svc.Health
	}
	return svc.State
}

func summarize(job provision.Job) *jobSummary {
	s := &jobSummary{ID: job.ID, Kind: job.Kind, State: job.State}
	if job.Done < len(job.Steps) && !job.State.Finished() {
		s.Step = job.Steps[job.Done]
	}
	return s
}

// fleetOverview counts instances, for operators.
type fleetOverview struct {
	Total          int            `json:"total"`
	Connected      int            `json:"connected"`
	ByStatus       map[string]int `json:"by_status"`
	ByLifecycle    map[string]int `json:"by_lifecycle"`
	ByPlan         map[string]int `json:"by_plan"`
	ByAgentVersion map[string]int `json:"by_agent_version"`
	ByRegion       map[string]int `json:"by_region"`
}

func (a *API) fleetOverview(w http.ResponseWriter, _ *http.Request) error {
	o := fleetOverview{ByStatus: map[string]int{}, ByLifecycle: map[string]int{}, ByPlan: map[string]int{},
		ByAgentVersion: map[string]int{}, ByRegion: map[string]int{}}
	or := func(s, unknown string) string { return cmp.Or(s, unknown) }
	for _, inst := range a.o.Fleet.List(time.Now()) {
		o.Total++
		if inst.Connected {
			o.Connected++
		}
		o.ByStatus[string(inst.Status)]++
		o.ByLifecycle[or(string(inst.Lifecycle), "unknown")]++
		o.ByPlan[or(inst.Plan, "none")]++
		o.ByAgentVersion[or(inst.AgentVersion, "unknown")]++
		o.ByRegion[or(inst.Region, "unknown")]++
	}
	return writeJSON(w, http.StatusOK, o)
}

// jobList is a page of jobs, newest first.
type jobList struct {
	Jobs       []provision.Job `json:"jobs"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

// jobsOf reads a paged request for the jobs of the route's instance, which
// the caller must be allowed to see.
func (a *API) jobsOf(r *http.Request) (pageRequest, fleet.Instance, []provision.Job, error) {
	pg, err := readPage(r)
	if err != nil {
		return pg, fleet.Instance{}, nil, err
	}
	inst, err := a.visibleInstance(r)
	if err != nil {
		return pg, inst, nil, err
	}
	jobs, err := a.o.Jobs.InstanceJobs(inst.ID)
	return pg, inst, jobs, err
}

func jobKey(j provision.Job) string { return newestFirst(j.CreatedAt, j.ID) }

// instanceJobs lists the jobs of an instance, its provisioning log first
// among them, newest first.
func (a *API) instanceJobs(w http.ResponseWriter, r *http.Request) error {
	pg, _, jobs, err := a.jobsOf(r)
	if err != nil {
		return err
	}
	slices.SortFunc(jobs, func(x, y provision.Job) int { return cmp.Compare(jobKey(x), jobKey(y)) })
	items, next := page(jobs, jobKey, pg)
	return writeJSON(w, http.StatusOK, jobList{Jobs: nonNil(items), NextCursor: next})
}

// timelineEntry is one line of an instance's timeline: a job's step or an
// agent's event.
type timelineEntry struct {
	At       time.Time         `json:"at"`
	Kind     string            `json:"kind"` // job or event
	Severity protocol.Severity `json:"severity"`
	Message  string            `json:"message"`
	// Type is the event's type, or the job's kind.
	Type  string `json:"type"`
	JobID string `json:"job_id,omitempty"`
	Step  string `json:"step,omitempty"`
	key   string
}

// timelineEvents bounds the agent events a timeline reads.
const timelineEvents = 1000

// timeline merges an instance's job logs and its agent's last events,
// newest first.
func (a *API) timeline(w http.ResponseWriter, r *http.Request) error {
	pg, inst, jobs, err := a.jobsOf(r)
	if err != nil {
		return err
	}
	events, err := a.o.Events.InstanceEvents(inst.ID, timelineEvents)
	if err != nil {
		return err
	}
	var entries []timelineEntry
	for _, job := range jobs {
		for i, l := range job.Log {
			e := timelineEntry{At: l.At, Kind: "job", Message: l.Step + ": " + l.Outcome,
				Type: job.Kind, JobID: job.ID, Step: l.Step, key: newestFirst(l.At, job.ID+"/"+strconv.Itoa(i))}
			if l.Detail != "" {
				e.Message += " (" + l.Detail + ")"
			}
			e.Severity = stepSeverity(l.Outcome)
			entries = append(entries, e)
		}
	}
	for _, ev := range events {
		entries = append(entries, timelineEntry{At: ev.At, Kind: "event", Severity: ev.Severity, Message: ev.Message,
			Type: ev.Type, key: newestFirst(ev.At, "event/"+ev.ID)})
	}
	slices.SortFunc(entries, func(x, y timelineEntry) int { return cmp.Compare(x.key, y.key) })
	items, next := page(entries, func(e timelineEntry) string { return e.key }, pg)
	return writeJSON(w, http.StatusOK, timelinePage{Entries: nonNil(items), NextCursor: next})
}

// timelinePage is a page of a timeline, newest first.
type timelinePage struct {
	Entries    []timelineEntry `json:"entries"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

// stepSeverity is how much a job step's outcome matters: a failure is an
// error, a retry or an undo a warning, progress (ok, submitted,
// succeeded) information.
func stepSeverity(outcome string) protocol.Severity {
	switch outcome {
	case "failed":
		return protocol.SeverityError
	case "retry", "undo retry", "undone":
		return protocol.SeverityWarning
	}
	return protocol.SeverityInfo
}

// windows are the ?window= values of a metrics history.
var windows = map[string]time.Duration{"1h": time.Hour, "6h": 6 * time.Hour, "24h": 24 * time.Hour,
	"7d": 7 * 24 * time.Hour, "30d": 30 * 24 * time.Hour}

// metricsHistory answers an instance's metrics over ?window= (default 1h),
// or from ?from= to ?to= (RFC 3339).
func (a *API) metricsHistory(w http.ResponseWriter, r *http.Request) error {
	inst, err := a.visibleInstance(r)
	if err != nil {
		return err
	}
	q, to := r.URL.Query(), time.Now()
	window, ok := windows[cmp.Or(q.Get("window"), "1h")]
	if !ok {
		return httpError{Code: http.StatusBadRequest, Msg: "window: want one of 1h, 6h, 24h, 7d, 30d"}
	}
	from := to.Add(-window)
	for name, t := range map[string]*time.Time{"from": &from, "to": &to} {
		if s := q.Get(name); s != "" {
			v, err := time.Parse(time.RFC3339, s)
			if err != nil {
				return httpError{Code: http.StatusBadRequest, Msg: name + ": want an RFC 3339 time", Err: err}
			}
			*t = v
		}
	}
	if !from.Before(to) {
		return httpError{Code: http.StatusBadRequest, Msg: "from must be before to"}
	}
	h, err := a.o.Metrics.MetricsHistory(inst.ID, from, to)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, h)
}

// nonNil is s, or an empty slice that reads as [] in JSON.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
