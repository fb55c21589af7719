package billing

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// window is the span of trial conversion and churn.
const window = 30 * 24 * time.Hour

// Metrics computes the business's figures at now from every subscription.
func (s *Service) Metrics(now time.Time) (Metrics, error) {
	subs, err := s.o.Store.Subscriptions()
	if err != nil {
		return Metrics{}, err
	}
	m := Metrics{At: now.UTC(), Currency: s.o.Currency, Active: map[string]int{}}
	for name := range s.o.Plans {
		m.Active[name] = 0
	}
	since := now.Add(-window)
	// start counts the subscriptions paid for at the window's start, lost
	// those of them canceled since.
	start, lost := 0, 0
	for _, sub := range subs {
		switch sub.Status {
		case SubscriptionActive, SubscriptionPastDue:
			m.MRR += sub.MonthlyAmount
			m.Active[sub.Plan]++
		case SubscriptionTrialing:
			m.Trials++
		case SubscriptionCanceled:
			if sub.CanceledAt.After(since) {
				if sub.CanceledInTrial {
					m.TrialsLost30d++
				} else {
					m.Churned30d++
				}
			}
		}
		if sub.FirstPaidAt.After(since) && !sub.TrialEndsAt.IsZero() {
			m.Converted30d++
		}
		if !sub.FirstPaidAt.IsZero() && !sub.FirstPaidAt.After(since) &&
			(sub.Status != SubscriptionCanceled || sub.CanceledAt.After(since)) {
			start++
			if sub.Status == SubscriptionCanceled {
				lost++
			}
		}
	}
	if n := m.Converted30d + m.TrialsLost30d; n > 0 {
		m.TrialConversion = float64(m.Converted30d) / float64(n)
	}
	if start > 0 {
		m.Churn = float64(lost) / float64(start)
	}
	return m, nil
}

// counters are billing's event counts for Prometheus.
type counters struct {
	webhooks, applied *prometheus.CounterVec
}

func newCounters() *counters {
	return &counters{
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stackpro_billing_webhook_events_total",
			Help: "Stripe webhook deliveries, by outcome: queued, duplicate (seen before) or refused (bad signature or event)."},
			[]string{"outcome"}),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stackpro_billing_events_applied_total",
			Help: "Billing events applied to subscriptions, by outcome: applied or ignored."}, []string{"outcome"}),
	}
}

var (
	descMRR = prometheus.NewDesc("stackpro_billing_mrr", "Monthly recurring revenue of active and past-due subscriptions, in the currency's major unit.",
		[]string{"currency"}, nil)
	descActive = prometheus.NewDesc("stackpro_billing_active_subscriptions", "Active and past-due subscriptions, by plan.",
		[]string{"plan"}, nil)
	descTrials     = prometheus.NewDesc("stackpro_billing_trials", "Subscriptions in their free trial.", nil, nil)
	descConversion = prometheus.NewDesc("stackpro_billing_trial_conversion_ratio", "Trials converted to paid over trials that ended, last 30 days.", nil, nil)
	descChurn      = prometheus.NewDesc("stackpro_billing_churn_ratio", "Share of the subscriptions paid for 30 days ago that were canceled since.", nil, nil)
)

// Describe implements prometheus.Collector.
func (s *Service) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMRR, descActive, descTrials, descConversion, descChurn} {
		ch <- d
	}
	s.counters.webhooks.Describe(ch)
	s.counters.applied.Describe(ch)
}

// Collect implements prometheus.Collector: the gauges are computed from
// the store at each scrape.
func (s *Service) Collect(ch chan<- prometheus.Metric) {
	s.counters.webhooks.Collect(ch)
	s.counters.applied.Collect(ch)
	m, err := s.Metrics(s.o.Now())
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descMRR, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(descMRR, prometheus.GaugeValue, float64(m.MRR)/100, m.Currency)
	for plan, n := range m.Active {
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(n), plan)
	}
	ch <- prometheus.MustNewConstMetric(descTrials, prometheus.GaugeValue, float64(m.Trials))
	ch <- prometheus.MustNewConstMetric(descConversion, prometheus.GaugeValue, m.TrialConversion)
	ch <- prometheus.MustNewConstMetric(descChurn, prometheus.GaugeValue, m.Churn)
}
