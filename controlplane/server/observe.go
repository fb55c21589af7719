package server

import (
	"cmp"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/monitor"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/shared/protocol"
)

// feedStore is the store as provisioning and the monitor use it: every job
// step saved and every agent event stored is also published to the feed
// dashboard-api streams, and counted for Prometheus.
type feedStore struct {
	*store.Store
	feed     *fleet.Feed
	tracker  *fleet.Tracker
	jobs     *jobCounts
	refusals refusals
	log      *slog.Logger
}

// refusals counts what agents report refusing, by reason, and the events
// they report losing at their outbox's hard cap.
type refusals struct {
	commands, targets *prometheus.CounterVec
	eventsDropped     prometheus.Counter
}

func newRefusals() refusals {
	return refusals{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stackpro_commands_refused_total",
			Help: "Commands agents reported refusing, by reason (suppressed: refusals an agent counted but did not report one by one)."},
			[]string{"reason"}),
		targets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stackpro_targets_refused_total",
			Help: "Values of their key in the targets bucket that agents reported refusing to apply, by reason."},
			[]string{"reason"}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "stackpro_agent_events_dropped_total",
			Help: "Events agents reported dropping because their outbox was at its hard cap."}),
	}
}

func (r refusals) Describe(ch chan<- *prometheus.Desc) {
	r.commands.Describe(ch)
	r.targets.Describe(ch)
	r.eventsDropped.Describe(ch)
}

func (r refusals) Collect(ch chan<- prometheus.Metric) {
	r.commands.Collect(ch)
	r.targets.Collect(ch)
	r.eventsDropped.Collect(ch)
}

// count counts what ev reports refused or dropped, and audits a refusal.
func (r refusals) count(st *store.Store, ev protocol.Event) error {
	reason := cmp.Or(ev.Data["reason"], "unknown")
	switch ev.Type {
	case protocol.EventCommandRefused:
		if n, err := strconv.Atoi(ev.Data["suppressed"]); err == nil {
			r.commands.WithLabelValues("suppressed").Add(float64(n))
		} else {
			r.commands.WithLabelValues(reason).Inc()
		}
	case protocol.EventTargetRefused:
		r.targets.WithLabelValues(reason).Inc()
	case protocol.EventEventsDropped:
		if n, err := strconv.ParseUint(ev.Data["dropped"], 10, 64); err == nil {
			r.eventsDropped.Add(float64(n))
		}
		return nil
	default:
		return nil
	}
	return auditRefusal(st, ev)
}

// SaveJob saves job, then publishes it.
func (s feedStore) SaveJob(job fleet.Job, insts ...fleet.Instance) error {
	if err := s.Store.SaveJob(job, insts...); err != nil {
		return err
	}
	s.jobs.saw(job)
	customer := job.Params["customer"]
	if inst, err := s.tracker.Get(job.InstanceID, time.Now()); err == nil {
		customer = inst.Customer
	}
	s.publish(fleet.ChangeJob, customer, job.InstanceID, job)
	return nil
}

// AppendEvent stores ev, then publishes it.
func (s feedStore) AppendEvent(ev protocol.Event, seq uint64) error {
	if err := s.Store.AppendEvent(ev, seq); err != nil {
		return err
	}
	if err := s.refusals.count(s.Store, ev); err != nil {
		s.log.Error("auditing a refusal", "instance", ev.InstanceID, "type", ev.Type, "err", err)
	}
	inst, _ := s.tracker.Get(ev.InstanceID, time.Now())
	s.publish(fleet.ChangeAgentEvent, inst.Customer, ev.InstanceID, ev)
	return nil
}

// publish logs what it could not publish: the change is stored, and
// clients that miss it read it from the lists.
func (s feedStore) publish(kind, customer, instanceID string, v any) {
	if err := s.feed.Publish(kind, customer, instanceID, v); err != nil {
		s.log.Error("publishing a change", "kind", kind, "instance", instanceID, "err", err)
	}
}

// jobCounts counts jobs by kind and state, for Prometheus, without
// reading the store at every scrape.
type jobCounts struct {
	mu    sync.Mutex
	state map[string]fleet.Job // job id → kind and state only
}

func newJobCounts(jobs []fleet.Job) *jobCounts {
	c := &jobCounts{state: make(map[string]fleet.Job, len(jobs))}
	for _, j := range jobs {
		c.saw(j)
	}
	return c
}

func (c *jobCounts) saw(j fleet.Job) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state[j.ID] = fleet.Job{Kind: j.Kind, State: j.State}
}

// fleetCollector reports the fleet to Prometheus at each scrape.
type fleetCollector struct {
	tracker *fleet.Tracker
	mon     *monitor.Monitor
	jobs    *jobCounts

	instances, connected, jobStates, heartbeats, samples *prometheus.Desc
}

func newFleetCollector(t *fleet.Tracker, mon *monitor.Monitor, jobs *jobCounts) *fleetCollector {
	return &fleetCollector{tracker: t, mon: mon, jobs: jobs,
		instances: prometheus.NewDesc("stackpro_instances", "Instances by status (derived from heartbeats) and lifecycle.",
			[]string{"status", "lifecycle"}, nil),
		connected: prometheus.NewDesc("stackpro_agents_connected", "Agents connected to the broker now.", nil, nil),
		jobStates: prometheus.NewDesc("stackpro_jobs", "Provisioning jobs by kind and state.", []string{"kind", "state"}, nil),
		heartbeats: prometheus.NewDesc("stackpro_agent_heartbeats_received_total", "Agent heartbeats received since the control plane started.",
			nil, nil),
		samples: prometheus.NewDesc("stackpro_agent_metrics_samples_received_total", "Agent metrics samples received since the control plane started.",
			nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.instances, c.connected, c.jobStates, c.heartbeats, c.samples} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ a, b string }
	instances, connected := map[key]int{}, 0
	for _, inst := range c.tracker.List(time.Now()) {
		instances[key{string(inst.Status), cmp.Or(string(inst.Lifecycle), "unknown")}]++
		if inst.Connected {
			connected++
		}
	}
	for k, n := range instances {
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(n), k.a, k.b)
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(connected))

	jobs := map[key]int{}
	c.jobs.mu.Lock()
	for _, j := range c.jobs.state {
		jobs[key{j.Kind, string(j.State)}]++
	}
	c.jobs.mu.Unlock()
	for k, n := range jobs {
		ch <- prometheus.MustNewConstMetric(c.jobStates, prometheus.GaugeValue, float64(n), k.a, k.b)
	}
	ch <- prometheus.MustNewConstMetric(c.heartbeats, prometheus.CounterValue, float64(c.mon.Heartbeats()))
	ch <- prometheus.MustNewConstMetric(c.samples, prometheus.CounterValue, float64(c.mon.Samples()))
}
