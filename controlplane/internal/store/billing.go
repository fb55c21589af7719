package store

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/stackpro/stackpro/controlplane/fleet"
)

// BillingEvent is a Stripe event as received: recorded once per id, so a
// redelivered event takes effect once.
type BillingEvent struct {
	ID         string    `json:"id"`
	Type       string    `json:"type"`
	Created    time.Time `json:"created"` // when Stripe created it
	ReceivedAt time.Time `json:"received_at"`
	// Outcome is queued until the event is applied; then applied, or
	// ignored with the reason.
	Outcome    string `json:"outcome"`
	CustomerID string `json:"customer_id,omitempty"`
}

// QueuedEvent is a received event waiting to be applied, as its raw JSON.
type QueuedEvent struct {
	Seq uint64
	Raw []byte
}

// BillingMail is an email billing owes a customer, kept until it is sent.
type BillingMail struct {
	Key        string            `json:"key"` // unique: the event id and kind
	CustomerID string            `json:"customer_id"`
	Kind       string            `json:"kind"`
	Data       map[string]string `json:"data,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
}

// BillingEffects is what applying an event asks of the store besides the
// subscription itself.
type BillingEffects struct {
	// Outcome is recorded with the event: applied, or ignored: <why>.
	Outcome string
	// CustomerStatus and CustomerPlan, when set, become the customer's.
	CustomerStatus, CustomerPlan string
	// Reconcile marks the customer's instance for a look now.
	Reconcile bool
	Mails     []BillingMail
}

// QueueBillingEvent records ev and queues raw to be applied, unless an
// event with its id was recorded before: then it changes nothing and
// returns false. Concurrent calls share transactions (bbolt's Batch), so a
// burst of webhooks costs few disk syncs.
func (s *Store) QueueBillingEvent(ev BillingEvent, raw []byte) (bool, error) {
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
func (s *Store) QueuedBillingEvents(n int) ([]QueuedEvent, error) {
	var out []QueuedEvent
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketBillingQueue).Cursor()
		for k, v := c.First(); k != nil && len(out) < n; k, v = c.Next() {
			out = append(out, QueuedEvent{Seq: binary.BigEndian.Uint64(k), Raw: append([]byte(nil), v...)})
		}
		return nil
	})
	return out, wrap("reading the billing queue", err)
}

// BillingEventRecord returns the record of event id, or ErrNotFound.
func (s *Store) BillingEventRecord(id string) (BillingEvent, error) {
	var ev BillingEvent
	err := s.db.View(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketBillingEvents), id, &ev) })
	return ev, wrap("reading billing event "+id, err)
}

// ApplyBillingEvent takes queued event seq (id eventID) off the queue and,
// in the same transaction, applies it to customer customerID's
// subscription with apply (on an empty one if the customer has none yet),
// records its outcome and the effects apply returns. With no customer only
// the outcome, from apply(nil), is recorded.
func (s *Store) ApplyBillingEvent(seq uint64, eventID, customerID string, now time.Time,
	apply func(*fleet.Subscription) BillingEffects) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var fx BillingEffects
		if customerID == "" {
			fx = apply(nil)
		} else {
			sub := fleet.Subscription{CustomerID: customerID}
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
		var ev BillingEvent
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
func putSubscription(tx *bbolt.Tx, sub fleet.Subscription) error {
	if sub.StripeCustomer != "" {
		if err := tx.Bucket(bucketStripeCustomers).Put([]byte(sub.StripeCustomer), []byte(sub.CustomerID)); err != nil {
			return err
		}
	}
	return putJSON(tx.Bucket(bucketSubscriptions), sub.CustomerID, sub)
}

func setCustomer(tx *bbolt.Tx, id, status, plan string, now time.Time) error {
	b := tx.Bucket(bucketCustomers)
	var c Customer
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
func (s *Store) Subscription(customerID string) (fleet.Subscription, error) {
	var sub fleet.Subscription
	err := s.db.View(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketSubscriptions), customerID, &sub) })
	return sub, wrap("reading subscription of "+customerID, err)
}

// UpdateSubscription applies update to customer id's subscription (an
// empty one if none) in one transaction and returns the result.
func (s *Store) UpdateSubscription(customerID string, now time.Time, update func(*fleet.Subscription) error) (fleet.Subscription, error) {
	sub := fleet.Subscription{CustomerID: customerID}
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
func (s *Store) Subscriptions() ([]fleet.Subscription, error) {
	var out []fleet.Subscription
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketSubscriptions).ForEach(func(k, v []byte) error {
			var sub fleet.Subscription
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
func (s *Store) BillingMails() ([]BillingMail, error) {
	var out []BillingMail
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketBillingMail).ForEach(func(k, v []byte) error {
			var m BillingMail
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
func (s *Store) CustomerUsers(customerID string) ([]User, error) {
	var out []User
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketUsers).ForEach(func(k, v []byte) error {
			var u User
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
