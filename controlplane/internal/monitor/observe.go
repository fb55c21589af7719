package monitor

import (
	"cmp"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackpro/stackpro/controlplane/audit"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

// observed is what the monitor reports to Prometheus: the fleet as it
// stands, what it took, and what agents report refusing or losing.
type observed struct {
	instances, connected, heartbeats, samples *prometheus.Desc
	commands, targets                         *prometheus.CounterVec
	eventsDropped                             prometheus.Counter
}

func newObserved() observed {
	return observed{
		instances: prometheus.NewDesc("stackpro_instances", "Instances by status (derived from heartbeats) and lifecycle.",
			[]string{"status", "lifecycle"}, nil),
		connected: prometheus.NewDesc("stackpro_agents_connected", "Agents connected to the broker now.", nil, nil),
		heartbeats: prometheus.NewDesc("stackpro_agent_heartbeats_received_total", "Agent heartbeats received since the control plane started.",
			nil, nil),
		samples: prometheus.NewDesc("stackpro_agent_metrics_samples_received_total", "Agent metrics samples received since the control plane started.",
			nil, nil),
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

// Describe implements prometheus.Collector.
func (m *Monitor) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.obs.instances
	ch <- m.obs.connected
	ch <- m.obs.heartbeats
	ch <- m.obs.samples
	m.obs.commands.Describe(ch)
	m.obs.targets.Describe(ch)
	m.obs.eventsDropped.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Monitor) Collect(ch chan<- prometheus.Metric) {
	m.collectFleet(ch)
	ch <- prometheus.MustNewConstMetric(m.obs.heartbeats, prometheus.CounterValue, float64(m.Heartbeats()))
	ch <- prometheus.MustNewConstMetric(m.obs.samples, prometheus.CounterValue, float64(m.Samples()))
	m.obs.commands.Collect(ch)
	m.obs.targets.Collect(ch)
	m.obs.eventsDropped.Collect(ch)
}

// collectFleet reports the instances by status and lifecycle, and how
// many agents are connected.
func (m *Monitor) collectFleet(ch chan<- prometheus.Metric) {
	type key struct{ status, lifecycle string }
	instances, connected := map[key]int{}, 0
	for _, inst := range m.o.Tracker.List(time.Now()) {
		instances[key{string(inst.Status), cmp.Or(string(inst.Lifecycle), "unknown")}]++
		if inst.Connected {
			connected++
		}
	}
	for k, n := range instances {
		ch <- prometheus.MustNewConstMetric(m.obs.instances, prometheus.GaugeValue, float64(n), k.status, k.lifecycle)
	}
	ch <- prometheus.MustNewConstMetric(m.obs.connected, prometheus.GaugeValue, float64(connected))
}

// stored takes an event once it is stored: it counts and audits what the
// event reports refused or dropped, and publishes it to the fleet's
// followers.
func (m *Monitor) stored(ev protocol.Event) {
	if err := m.refused(ev); err != nil {
		m.log.Error("auditing a refusal", "instance", ev.InstanceID, "type", ev.Type, "err", err)
	}
	inst, _ := m.o.Tracker.Get(ev.InstanceID, time.Now())
	if err := m.o.Publisher.Publish(fleet.ChangeAgentEvent, inst.Customer, ev.InstanceID, ev); err != nil {
		m.log.Error("publishing an agent event", "instance", ev.InstanceID, "err", err)
	}
}

// refused counts what ev reports refused or dropped, and audits a refusal.
func (m *Monitor) refused(ev protocol.Event) error {
	reason := cmp.Or(ev.Data["reason"], "unknown")
	switch ev.Type {
	case protocol.EventCommandRefused:
		if n, err := strconv.Atoi(ev.Data["suppressed"]); err == nil {
			m.obs.commands.WithLabelValues("suppressed").Add(float64(n))
		} else {
			m.obs.commands.WithLabelValues(reason).Inc()
		}
	case protocol.EventTargetRefused:
		m.obs.targets.WithLabelValues(reason).Inc()
	case protocol.EventEventsDropped:
		if n, err := strconv.ParseUint(ev.Data["dropped"], 10, 64); err == nil {
			m.obs.eventsDropped.Add(float64(n))
		}
		return nil
	default:
		return nil
	}
	return m.o.Store.AppendAudit(audit.Record{Time: ev.At, Event: ev.Type, Actor: ev.InstanceID, Detail: refusalDetail(ev)})
}

// refusalDetail says in the audit log what an agent refused.
func refusalDetail(ev protocol.Event) string {
	switch {
	case ev.Type == protocol.EventTargetRefused:
		return fmt.Sprintf("%s refused its target (version %s): %s", ev.InstanceID, cmp.Or(ev.Data["version"], "none"), ev.Message)
	case ev.Data["suppressed"] != "":
		return fmt.Sprintf("%s refused %s more commands (not reported one by one): %s", ev.InstanceID, ev.Data["suppressed"], ev.Message)
	}
	return fmt.Sprintf("%s refused %s (nonce %s, run %s): %s: %s", ev.InstanceID, ev.Data["command"],
		ev.Data["nonce"], ev.Data["run"], ev.Data["reason"], ev.Message)
}
