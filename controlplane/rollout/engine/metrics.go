package engine

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackpro/stackpro/controlplane/rollout"
)

// counters count what runs did since the control plane started.
type counters struct {
	runs    *prometheus.CounterVec
	targets *prometheus.CounterVec
}

func newCounters() counters {
	return counters{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stackpro_runs_finished_total",
			Help: "Command runs finished, by final state (completed, stopped, cancelled)."}, []string{"state"}),
		targets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stackpro_run_targets_total",
			Help: "Targets of command runs that reached a final state, by state and command."}, []string{"state", "command"}),
	}
}

var descActive = prometheus.NewDesc("stackpro_runs_active", "Command runs in progress.", nil, nil)

// Describe implements prometheus.Collector.
func (e *Engine) Describe(ch chan<- *prometheus.Desc) {
	e.counters.runs.Describe(ch)
	e.counters.targets.Describe(ch)
	ch <- descActive
}

// Collect implements prometheus.Collector.
func (e *Engine) Collect(ch chan<- prometheus.Metric) {
	e.counters.runs.Collect(ch)
	e.counters.targets.Collect(ch)
	e.mu.Lock()
	active := 0
	for _, a := range e.active {
		if !a.run.Done() {
			active++
		}
	}
	e.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(active))
}

var _ prometheus.Collector = (*Engine)(nil)

// target counts a target of a command run that reached final state.
func (c counters) target(command string, state rollout.TargetState) {
	c.targets.WithLabelValues(string(state), command).Inc()
}

// run counts a run that ended in state.
func (c counters) run(state rollout.RunState) { c.runs.WithLabelValues(string(state)).Inc() }
