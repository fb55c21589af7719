package provision

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackpro/stackpro/controlplane/fleet"
)

// record saves job with the instances it touched, then counts it and
// publishes it to the fleet's followers. A change that cannot be published
// is logged: it is stored, and clients that miss it read it from the lists.
func (s *Service) record(job Job, touched ...fleet.Instance) error {
	if err := s.o.Store.SaveJob(job, touched...); err != nil {
		return err
	}
	s.counts.saw(job)
	customer := job.Params["customer"]
	if inst, err := s.o.Tracker.Get(job.InstanceID, time.Now()); err == nil {
		customer = inst.Customer
	}
	if err := s.o.Publisher.Publish(fleet.ChangeJob, customer, job.InstanceID, job); err != nil {
		s.log.Error("publishing a job change", "job", job.ID, "err", err)
	}
	return nil
}

// jobCounts counts jobs by kind and state, for Prometheus, without
// reading the store at every scrape.
type jobCounts struct {
	mu    sync.Mutex
	state map[string]Job // job id → kind and state only
	desc  *prometheus.Desc
}

func newJobCounts() *jobCounts {
	return &jobCounts{state: map[string]Job{},
		desc: prometheus.NewDesc("stackpro_jobs", "Provisioning jobs by kind and state.", []string{"kind", "state"}, nil)}
}

func (c *jobCounts) saw(j Job) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state[j.ID] = Job{Kind: j.Kind, State: j.State}
}

// Describe implements prometheus.Collector: the service counts its jobs.
func (s *Service) Describe(ch chan<- *prometheus.Desc) { ch <- s.counts.desc }

// Collect implements prometheus.Collector.
func (s *Service) Collect(ch chan<- prometheus.Metric) {
	type key struct{ kind, state string }
	jobs := map[key]int{}
	s.counts.mu.Lock()
	for _, j := range s.counts.state {
		jobs[key{j.Kind, string(j.State)}]++
	}
	s.counts.mu.Unlock()
	for k, n := range jobs {
		ch <- prometheus.MustNewConstMetric(s.counts.desc, prometheus.GaugeValue, float64(n), k.kind, k.state)
	}
}
