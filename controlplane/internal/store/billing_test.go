package store_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/internal/store"
)

func TestBillingEventsQueueOnce(t *testing.T) {
	s, _ := newStore(t)
	now := time.Now().UTC()
	var wg sync.WaitGroup
	var mu sync.Mutex
	queued := 0
	for i := range 40 { // 20 events, each delivered twice at once
		wg.Go(func() {
			id := fmt.Sprintf("evt_%d", i%20)
			ok, err := s.QueueBillingEvent(billing.Event{ID: id, Type: "invoice.paid", ReceivedAt: now}, []byte(`{"id":"`+id+`"}`))
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				queued++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	q, err := s.QueuedBillingEvents(100)
	if err != nil || queued != 20 || len(q) != 20 {
		t.Fatalf("queued %d, %d in the queue (%v); want 20", queued, len(q), err)
	}
	for i := 1; i < len(q); i++ {
		if q[i].Seq <= q[i-1].Seq {
			t.Fatalf("queue out of order: %d after %d", q[i].Seq, q[i-1].Seq)
		}
	}

	// Applying takes the event off the queue, with the subscription, the
	// customer's look and the mail in the same transaction.
	var first struct{ ID string }
	if err := json.Unmarshal(q[0].Raw, &first); err != nil {
		t.Fatal(err)
	}
	err = s.ApplyBillingEvent(q[0].Seq, first.ID, "c1", now, func(sub *billing.Subscription) billing.Effects {
		sub.Status, sub.StripeCustomer = billing.SubscriptionActive, "cus_1"
		return billing.Effects{Outcome: "applied", Reconcile: true,
			Mails: []billing.OwedMail{{Key: "m1", CustomerID: "c1", Kind: "payment_failed"}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if q2, err := s.QueuedBillingEvents(100); err != nil || len(q2) != 19 {
		t.Errorf("%d queued after applying one (%v), want 19", len(q2), err)
	}
	if rec, err := s.BillingEventRecord(first.ID); err != nil || rec.Outcome != "applied" || rec.CustomerID != "c1" {
		t.Errorf("event record %+v (%v)", rec, err)
	}
	if c, err := s.CustomerByStripe("cus_1"); err != nil || c != "c1" {
		t.Errorf("CustomerByStripe = %q, %v", c, err)
	}
	due := billingDue(t, s)
	mails, err := s.BillingMails()
	if err != nil {
		t.Fatal(err)
	}
	if !due["c1"].Equal(now) || len(mails) != 1 {
		t.Errorf("due %v, mails %v", due, mails)
	}

	// A look asked for while one was being taken is kept.
	later := now.Add(time.Minute)
	if err := s.SetBillingDue("c1", later); err != nil {
		t.Fatal(err)
	}
	if err := s.ClearBillingDue("c1", now); err != nil {
		t.Fatal(err)
	}
	if due := billingDue(t, s); !due["c1"].Equal(later) {
		t.Errorf("a newer look was cleared: %v", due)
	}
	if err := s.ClearBillingDue("c1", later); err != nil {
		t.Fatal(err)
	}
	if due := billingDue(t, s); len(due) != 0 {
		t.Errorf("due after clearing: %v", due)
	}
	if _, err := s.Subscription("nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Subscription(nobody): %v", err)
	}
}

func billingDue(t *testing.T, s *store.Store) map[string]time.Time {
	t.Helper()
	due, err := s.BillingDue()
	if err != nil {
		t.Fatal(err)
	}
	return due
}
