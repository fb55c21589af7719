package store

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/billing"
)

// QueueBillingEvent records ev and queues raw to be applied, unless an
// event with its id was recorded before: then it changes nothing and
// returns false. Concurrent calls share transactions (bbolt's Batch), so a
// burst of webhooks costs few disk syncs.
func (s *Store) QueueBillingEvent(ev billing.Event, raw []byte) (bool, error) {
	var queued bool
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		queued = false // Batch may run this function again
		events := tx.Bucket(bucketBillingEvents)
		if events.Get([]byte(ev.ID)) != nil {
			return nil
		}
		ev.Outcome = "queued"
		if err := putJSON(events, ev.ID, ev); err != nil {
			return err
		}
		q := tx.Bucket(bucketBillingQueue)
		seq, err := q.NextSequence()
		if err != nil {
			return err
		}
		queued = true
		return q.Put(binary.BigEndian.AppendUint64(nil, seq), raw)
	})
	return queued, wrap("queueing billing event "+ev.ID, err)
}

// QueuedBillingEvents returns up to n queued events, oldest first.
func (s *Store) QueuedBillingEvents(n int) ([]billing.QueuedEvent, error) {
	var out []billing.QueuedEvent
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketBillingQueue).Cursor()
		for k, v := c.First(); k != nil && len(out) < n; k, v = c.Next() {
			out = append(out, billing.QueuedEvent{Seq: binary.BigEndian.Uint64(k), Raw: append([]byte(nil), v...)})
		}
		return nil
	})
	return out, wrap("reading the billing queue", err)
}

// BillingEventRecord returns the record of event id, or ErrNotFound.
func (s *Store) BillingEventRecord(id string) (billing.Event, error) {
	var ev billing.Event
	err := s.db.View(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketBillingEvents), id, &ev) })
	return ev, wrap("reading billing event "+id, err)
}

// ApplyBillingEvent takes queued event seq (id eventID) off the queue and,
// in the same transaction, applies it to customer customerID's
// subscription with apply (on an empty one if the customer has none yet),
// records its outcome and the effects apply returns. With no customer only
// the outcome, from apply(nil), is recorded.
func (s *Store) ApplyBillingEvent(seq uint64, eventID, customerID string, now time.Time,
	apply func(*billing.Subscription) billing.Effects) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var fx billing.Effects
		if customerID == "" {
			fx = apply(nil)
		} else {
			sub := billing.Subscription{CustomerID: customerID}
			subs := tx.Bucket(bucketSubscriptions)
			if err := getJSON(subs, customerID, &sub); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			fx = apply(&sub)
			sub.UpdatedAt = now
			if err := putSubscription(tx, sub); err != nil {
				return err
			}
			if err := setCustomer(tx, customerID, fx.CustomerStatus, fx.CustomerPlan, now); err != nil {
				return err
			}
			if fx.Reconcile {
				if err := putDue(tx, customerID, now); err != nil {
					return err
				}
			}
			for _, m := range fx.Mails {
				if err := putJSON(tx.Bucket(bucketBillingMail), m.Key, m); err != nil {
					return err
				}
			}
		}
		events := tx.Bucket(bucketBillingEvents)
		var ev billing.Event
		if err := getJSON(events, eventID, &ev); err != nil {
			return fmt.Errorf("event record: %w", err)
		}
		ev.Outcome, ev.CustomerID = fx.Outcome, customerID
		if err := putJSON(events, eventID, ev); err != nil {
			return err
		}
		return tx.Bucket(bucketBillingQueue).Delete(binary.BigEndian.AppendUint64(nil, seq))
	})
	return wrap("applying billing event "+eventID, err)
}

// putSubscription writes sub and indexes its Stripe customer.
func putSubscription(tx *bbolt.Tx, sub billing.Subscription) error {
	if sub.StripeCustomer != "" {
		if err := tx.Bucket(bucketStripeCustomers).Put([]byte(sub.StripeCustomer), []byte(sub.CustomerID)); err != nil {
			return err
		}
	}
	return putJSON(tx.Bucket(bucketSubscriptions), sub.CustomerID, sub)
}

func setCustomer(tx *bbolt.Tx, id, status, plan string, now time.Time) error {
	b := tx.Bucket(bucketCustomers)
	var c accounts.Customer
	if err := getJSON(b, id, &c); errors.Is(err, ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	was := c
	c.Status, c.Plan = cmp.Or(status, c.Status), cmp.Or(plan, c.Plan)
	if c == was {
		return nil
	}
	c.UpdatedAt = now
	return putJSON(b, id, c)
}

// Subscription returns customer id's subscription, or ErrNotFound.
func (s *Store) Subscription(customerID string) (billing.Subscription, error) {
	var sub billing.Subscription
	err := s.db.View(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketSubscriptions), customerID, &sub) })
	return sub, wrap("reading subscription of "+customerID, err)
}

// UpdateSubscription applies update to customer id's subscription (an
// empty one if none) in one transaction and returns the result.
func (s *Store) UpdateSubscription(customerID string, now time.Time, update func(*billing.Subscription) error) (billing.Subscription, error) {
	sub := billing.Subscription{CustomerID: customerID}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if err := getJSON(tx.Bucket(bucketSubscriptions), customerID, &sub); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if err := update(&sub); err != nil {
			return err
		}
		if sub.CustomerID != customerID {
			return errors.New("a subscription's customer does not change")
		}
		sub.UpdatedAt = now
		return putSubscription(tx, sub)
	})
	return sub, wrap("updating subscription of "+customerID, err)
}

// Subscriptions returns every subscription.
func (s *Store) Subscriptions() ([]billing.Subscription, error) {
	var out []billing.Subscription
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketSubscriptions).ForEach(func(k, v []byte) error {
			var sub billing.Subscription
			if err := json.Unmarshal(v, &sub); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			out = append(out, sub)
			return nil
		})
	})
	return out, wrap("reading subscriptions", err)
}

// CustomerByStripe returns our customer id for a Stripe customer id, or
// ErrNotFound.
func (s *Store) CustomerByStripe(stripeCustomer string) (string, error) {
	var id string
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketStripeCustomers).Get([]byte(stripeCustomer))
		if v == nil {
			return ErrNotFound
		}
		id = string(v)
		return nil
	})
	return id, wrap("looking up stripe customer", err)
}

func putDue(tx *bbolt.Tx, customerID string, at time.Time) error {
	return tx.Bucket(bucketBillingDue).Put([]byte(customerID), binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano())))
}

// SetBillingDue asks for a look at customer id's instance at at.
func (s *Store) SetBillingDue(customerID string, at time.Time) error {
	return wrap("setting billing due", s.db.Update(func(tx *bbolt.Tx) error { return putDue(tx, customerID, at) }))
}

// BillingDue returns every customer waiting for a look, with when.
func (s *Store) BillingDue() (map[string]time.Time, error) {
	due := map[string]time.Time{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketBillingDue).ForEach(func(k, v []byte) error {
			due[string(k)] = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
			return nil
		})
	})
	return due, wrap("reading billing due", err)
}

// ClearBillingDue removes customer id's look if it is still the one due at
// at: a look asked for meanwhile stays.
func (s *Store) ClearBillingDue(customerID string, at time.Time) error {
	return wrap("clearing billing due", s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketBillingDue)
		if v := b.Get([]byte(customerID)); v != nil && int64(binary.BigEndian.Uint64(v)) == at.UnixNano() {
			return b.Delete([]byte(customerID))
		}
		return nil
	}))
}

// BillingMails returns the emails billing still owes.
func (s *Store) BillingMails() ([]billing.OwedMail, error) {
	var out []billing.OwedMail
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketBillingMail).ForEach(func(k, v []byte) error {
			var m billing.OwedMail
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			out = append(out, m)
			return nil
		})
	})
	return out, wrap("reading billing mail", err)
}

// DeleteBillingMail forgets an email once it is sent.
func (s *Store) DeleteBillingMail(key string) error {
	return wrap("deleting billing mail", s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketBillingMail).Delete([]byte(key))
	}))
}

// CustomerUsers returns the users of customer id.
func (s *Store) CustomerUsers(customerID string) ([]accounts.User, error) {
	var out []accounts.User
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketUsers).ForEach(func(k, v []byte) error {
			var u accounts.User
			if err := json.Unmarshal(v, &u); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			if u.CustomerID == customerID {
				out = append(out, u)
			}
			return nil
		})
	})
	return out, wrap("reading users of "+customerID, err)
}
