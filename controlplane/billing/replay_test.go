package billing_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/fleet"
)

// scenario is one customer's life as Stripe reports it, and where it must end.
type scenario struct {
	name   string
	events func(c, plan string, t0 time.Time) [][]byte
	status billing.SubscriptionStatus
	// upgrade: the subscription ends on the business plan.
	upgrade bool
	mail    string
}

var scenarios = []scenario{
	{name: "trial converts", status: billing.SubscriptionActive, mail: "trial ends", events: func(c, plan string, t0 time.Time) [][]byte {
		price, end := testPlans[plan].PriceID, t0.Add(14*24*time.Hour)
		return [][]byte{
			event("evt_"+c+"_1", "checkout.session.completed", t0.Add(1*time.Second), checkoutCompleted(c, plan, "cs_"+c, "sub_"+c)),
			event("evt_"+c+"_2", "customer.subscription.created", t0.Add(2*time.Second), subscriptionObj(c, "sub_"+c, "trialing", price, testPlans[plan].MonthlyPrice, end)),
			event("evt_"+c+"_3", "customer.subscription.trial_will_end", t0.Add(3*time.Second), subscriptionObj(c, "sub_"+c, "trialing", price, testPlans[plan].MonthlyPrice, end)),
			event("evt_"+c+"_4", "customer.subscription.updated", t0.Add(4*time.Second), subscriptionObj(c, "sub_"+c, "active", price, testPlans[plan].MonthlyPrice, end)),
			event("evt_"+c+"_5", "invoice.paid", t0.Add(5*time.Second), invoiceObj(c, "sub_"+c, testPlans[plan].MonthlyPrice)),
		}
	}},
	{name: "payment fails", status: billing.SubscriptionPastDue, mail: "payment failed", events: func(c, plan string, t0 time.Time) [][]byte {
		return [][]byte{
			event("evt_"+c+"_1", "checkout.session.completed", t0.Add(1*time.Second), checkoutCompleted(c, plan, "cs_"+c, "sub_"+c)),
			event("evt_"+c+"_2", "invoice.paid", t0.Add(2*time.Second), invoiceObj(c, "sub_"+c, testPlans[plan].MonthlyPrice)),
			event("evt_"+c+"_3", "invoice.payment_failed", t0.Add(3*time.Second), invoiceObj(c, "sub_"+c, testPlans[plan].MonthlyPrice)),
		}
	}},
	{name: "upgrades", status: billing.SubscriptionActive, upgrade: true, events: func(c, plan string, t0 time.Time) [][]byte {
		return [][]byte{
			event("evt_"+c+"_1", "checkout.session.completed", t0.Add(1*time.Second), checkoutCompleted(c, plan, "cs_"+c, "sub_"+c)),
			event("evt_"+c+"_2", "invoice.paid", t0.Add(2*time.Second), invoiceObj(c, "sub_"+c, testPlans[plan].MonthlyPrice)),
			event("evt_"+c+"_3", "customer.subscription.updated", t0.Add(3*time.Second), subscriptionObj(c, "sub_"+c, "active", "price_business", 7900, time.Time{})),
		}
	}},
	{name: "cancels", status: billing.SubscriptionCanceled, events: func(c, plan string, t0 time.Time) [][]byte {
		return [][]byte{
			event("evt_"+c+"_1", "checkout.session.completed", t0.Add(1*time.Second), checkoutCompleted(c, plan, "cs_"+c, "sub_"+c)),
			event("evt_"+c+"_2", "invoice.paid", t0.Add(2*time.Second), invoiceObj(c, "sub_"+c, testPlans[plan].MonthlyPrice)),
			event("evt_"+c+"_3", "customer.subscription.deleted", t0.Add(3*time.Second), subscriptionObj(c, "sub_"+c, "canceled", testPlans[plan].PriceID, testPlans[plan].MonthlyPrice, time.Time{})),
		}
	}},
	{name: "recovers", status: billing.SubscriptionActive, events: func(c, plan string, t0 time.Time) [][]byte {
		return [][]byte{
			event("evt_"+c+"_1", "checkout.session.completed", t0.Add(1*time.Second), checkoutCompleted(c, plan, "cs_"+c, "sub_"+c)),
			event("evt_"+c+"_2", "invoice.payment_failed", t0.Add(2*time.Second), invoiceObj(c, "sub_"+c, testPlans[plan].MonthlyPrice)),
			event("evt_"+c+"_3", "invoice.paid", t0.Add(3*time.Second), invoiceObj(c, "sub_"+c, testPlans[plan].MonthlyPrice)),
		}
	}},
}

// TestReplayShuffledWithDuplicates sends 1,000 lifecycle events for many
// customers, in random order and with redeliveries, from several senders
// at once: every customer ends where its events say, and every checkout
// provisioned exactly one instance.
func TestReplayShuffledWithDuplicates(t *testing.T) {
	h := newHarness(t, false)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	plans := []string{"starter", "business", "enterprise"}

	type customer struct {
		id   string
		sc   scenario
		plan string
	}
	var customers []customer
	var events [][]byte
	t0 := h.clock().Add(-time.Hour)
	for i := 0; len(events) < 750; i++ {
		c := customer{id: fmt.Sprintf("c%03d", i), sc: scenarios[i%len(scenarios)], plan: plans[rng.IntN(len(plans))]}
		h.customer(t, c.id, time.Time{})
		customers = append(customers, c)
		events = append(events, c.sc.events(c.id, c.plan, t0.Add(time.Duration(i)*time.Minute))...)
	}
	for len(events) < 1000 {
		events = append(events, events[rng.IntN(len(events))])
	}
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })

	// Apply while delivering, as the service does.
	var wg sync.WaitGroup
	next := make(chan []byte)
	for range 8 {
		wg.Go(func() {
			for ev := range next {
				h.deliver(t, ev)
			}
		})
	}
	for i, ev := range events {
		next <- ev
		if i%50 == 0 {
			h.settle(t)
		}
	}
	close(next)
	wg.Wait()
	h.settle(t)

	if q, err := h.st.QueuedBillingEvents(1); err != nil || len(q) != 0 {
		t.Fatalf("events left in the queue: %d (%v)", len(q), err)
	}
	// A checkout reads its subscription from Stripe, and what it brings in
	// stands until a subscription event says otherwise: stripe-mock answers
	// every subscription with its fixture, one item at 20.00 USD a month.
	const fixtureAmount = 2000
	var mrr int64
	for _, c := range customers {
		sub := h.subscription(t, c.id)
		wantPlan := c.plan
		if c.sc.upgrade {
			wantPlan = "business"
		}
		if sub.Status != c.sc.status || sub.Plan != wantPlan {
			t.Errorf("%s (%s on %s): ended %s on %s; history %+v", c.id, c.sc.name, c.plan, sub.Status, sub.Plan, sub.History)
		}
		insts := h.insts.ofCustomer(c.id)
		provisions := strings.Count(strings.Join(h.insts.calls, "\n"), "provision "+c.id+" ")
		switch {
		case provisions > 1:
			t.Errorf("%s: provisioned %d times", c.id, provisions)
		case c.sc.status == billing.SubscriptionCanceled:
			// The cancellation may come before the checkout: then nothing
			// is provisioned; otherwise the instance is suspended.
			if len(insts) == 1 && insts[0].Lifecycle != fleet.LifecycleSuspended {
				t.Errorf("%s: canceled, but its instance is %s", c.id, insts[0].Lifecycle)
			}
		case len(insts) != 1 || provisions != 1:
			t.Errorf("%s (%s): %d instances, %d provisions; want 1", c.id, c.sc.name, len(insts), provisions)
		case insts[0].Plan != wantPlan || insts[0].Lifecycle != fleet.LifecycleActive:
			t.Errorf("%s: instance on %s, %s; want %s, active", c.id, insts[0].Plan, insts[0].Lifecycle, wantPlan)
		}
		if c.sc.status == billing.SubscriptionActive || c.sc.status == billing.SubscriptionPastDue {
			want := testPlans[wantPlan].MonthlyPrice
			if c.sc.name == "payment fails" || c.sc.name == "recovers" {
				want = fixtureAmount // no subscription event
			}
			if sub.MonthlyAmount != want {
				t.Errorf("%s (%s): monthly amount %d, want %d", c.id, c.sc.name, sub.MonthlyAmount, want)
			}
			mrr += want
		}
		if c.sc.mail != "" {
			if m, err := h.outbox.Latest(c.id + "@example.com"); err != nil || !strings.Contains(strings.ToLower(m.Subject), c.sc.mail) {
				t.Errorf("%s: email %+v, %v; want one about %q", c.id, m, err, c.sc.mail)
			}
		}
	}
	m, err := h.s.Metrics(h.clock())
	if err != nil || m.MRR != mrr {
		t.Errorf("MRR %d, want %d (%v)", m.MRR, mrr, err)
	}
	t.Logf("%d events (%d customers), metrics %+v", len(events), len(customers), m)
}
