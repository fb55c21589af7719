package billing_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/internal/proctest"
)

// restart stops h's control plane and starts another over the same store
// file: h gets a new Service, with the same options, over the store opened
// again. Nothing of the old Service carries over but what it stored.
func (h *harness) restart(t *testing.T) {
	t.Helper()
	if err := h.st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(h.path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h.opts.Store = st
	h.st, h.s = st, billing.New(h.opts)
}

// run runs h's Service until stop is called, or the test ends.
func (h *harness) run(t *testing.T) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func(s *billing.Service) { done <- s.Run(ctx) }(h.s)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v, want nil after a cancel", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// applied waits until h's Run has applied event id, and for what cond
// says that applying it brings about.
func (h *harness) applied(t *testing.T, id string, cond func() bool) {
	t.Helper()
	proctest.Until(t, id+" applied", func() bool {
		rec, err := h.st.BillingEventRecord(id)
		return err == nil && rec.Outcome == "applied" && cond()
	})
}

// TestQueuedEventsAppliedAfterRestart: a webhook queued but not applied
// when the control plane stopped is applied by the next one's Run, and
// provisions the customer's instance; a later start does not apply it
// again, only what came since.
func TestQueuedEventsAppliedAfterRestart(t *testing.T) {
	h := newHarness(t, false)
	h.customer(t, "c1", time.Time{})
	at := h.clock().Add(-time.Hour)
	h.deliver(t, event("evt_1", "checkout.session.completed", at, checkoutCompleted("c1", "starter", "cs_1", "sub_1")))

	h.restart(t)
	stop := h.run(t)
	h.applied(t, "evt_1", func() bool { return h.subscription(t, "c1").InstanceID != "" })
	stop()
	if n := h.s.Applied("applied"); n != 1 {
		t.Errorf("the first restart applied %v events, want 1", n)
	}

	h.restart(t)
	h.deliver(t, event("evt_2", "invoice.payment_failed", at.Add(time.Second), invoiceObj("c1", "sub_1", 2900)))
	stop = h.run(t)
	h.applied(t, "evt_2", func() bool { return h.subscription(t, "c1").Status == billing.SubscriptionPastDue })
	stop()
	if n := h.s.Applied("applied"); n != 1 {
		t.Errorf("the second restart applied %v events, want 1 (evt_2 alone)", n)
	}
	if q, err := h.st.QueuedBillingEvents(10); err != nil || len(q) != 0 {
		t.Errorf("queue after both were applied: %d events, %v", len(q), err)
	}
	if want := "[provision c1 starter]"; fmt.Sprint(h.insts.calls) != want {
		t.Errorf("jobs %q, want %s", h.insts.calls, want)
	}
	if insts := h.insts.ofCustomer("c1"); len(insts) != 1 {
		t.Errorf("%d instances for one checkout", len(insts))
	}
}
