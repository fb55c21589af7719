package billing_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stackpro/stackpro/controlplane/billing"
)

func TestMetrics(t *testing.T) {
	h := newHarness(t, true)
	now := h.clock()
	day := 24 * time.Hour
	subs := []billing.Subscription{
		// Paid for two months, still paying.
		{CustomerID: "a", Status: billing.SubscriptionActive, Plan: "starter", MonthlyAmount: 2900, FirstPaidAt: now.Add(-60 * day)},
		// Paid for two months, canceled last week: churn.
		{CustomerID: "b", Status: billing.SubscriptionCanceled, Plan: "business", MonthlyAmount: 7900, FirstPaidAt: now.Add(-60 * day), CanceledAt: now.Add(-7 * day)},
		// Canceled long ago: not in the window.
		{CustomerID: "c", Status: billing.SubscriptionCanceled, Plan: "business", FirstPaidAt: now.Add(-90 * day), CanceledAt: now.Add(-40 * day)},
		// A trial converted last week, now past due.
		{CustomerID: "d", Status: billing.SubscriptionPastDue, Plan: "business", MonthlyAmount: 7900, TrialEndsAt: now.Add(-7 * day), FirstPaidAt: now.Add(-7 * day)},
		// A trial canceled before paying.
		{CustomerID: "e", Status: billing.SubscriptionCanceled, Plan: "starter", TrialEndsAt: now.Add(-3 * day), CanceledAt: now.Add(-3 * day), CanceledInTrial: true},
		// Two trials under way.
		{CustomerID: "f", Status: billing.SubscriptionTrialing, Plan: "starter", TrialEndsAt: now.Add(3 * day)},
		{CustomerID: "g", Status: billing.SubscriptionTrialing, Plan: "enterprise", TrialEndsAt: now.Add(5 * day)},
	}
	for _, sub := range subs {
		if _, err := h.st.UpdateSubscription(sub.CustomerID, now, func(s *billing.Subscription) error { *s = sub; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	m, err := h.s.Metrics(now)
	if err != nil {
		t.Fatal(err)
	}
	if m.MRR != 2900+7900 || m.Active["starter"] != 1 || m.Active["business"] != 1 || m.Active["enterprise"] != 0 || m.Trials != 2 {
		t.Errorf("MRR, active, trials: %+v", m)
	}
	if m.Converted30d != 1 || m.TrialsLost30d != 1 || m.TrialConversion != 0.5 {
		t.Errorf("conversion: %+v", m)
	}
	// Paying 30 days ago: a and b; b canceled since.
	if m.Churned30d != 1 || m.Churn != 0.5 {
		t.Errorf("churn: %+v", m)
	}

	want := `
# HELP stackpro_billing_active_subscriptions Active and past-due subscriptions, by plan.
# TYPE stackpro_billing_active_subscriptions gauge
stackpro_billing_active_subscriptions{plan="business"} 1
stackpro_billing_active_subscriptions{plan="enterprise"} 0
stackpro_billing_active_subscriptions{plan="starter"} 1
# HELP stackpro_billing_churn_ratio Share of the subscriptions paid for 30 days ago that were canceled since.
# TYPE stackpro_billing_churn_ratio gauge
stackpro_billing_churn_ratio 0.5
# HELP stackpro_billing_mrr Monthly recurring revenue of active and past-due subscriptions, in the currency's major unit.
# TYPE stackpro_billing_mrr gauge
stackpro_billing_mrr{currency="usd"} 108
# HELP stackpro_billing_trial_conversion_ratio Trials converted to paid over trials that ended, last 30 days.
# TYPE stackpro_billing_trial_conversion_ratio gauge
stackpro_billing_trial_conversion_ratio 0.5
# HELP stackpro_billing_trials Subscriptions in their free trial.
# TYPE stackpro_billing_trials gauge
stackpro_billing_trials 2
`
	if err := testutil.CollectAndCompare(h.s, strings.NewReader(want), "stackpro_billing_mrr", "stackpro_billing_active_subscriptions",
		"stackpro_billing_trials", "stackpro_billing_trial_conversion_ratio", "stackpro_billing_churn_ratio"); err != nil {
		t.Error(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.s)
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("metrics lint: %+v, %v", problems, err)
	}
}
