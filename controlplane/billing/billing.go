// Package billing sells the plans: Stripe Checkout and the customer portal,
// Stripe's webhooks verified and applied once each, and the subscription
// lifecycle that provisions, resizes, suspends and terminates a customer's
// instance. A local stand-in for Stripe completes every checkout at once,
// through the same events, so the embedded default needs no Stripe account.
//
// Webhooks are answered as soon as the event is verified and stored; a
// worker applies stored events in order. Events come late, twice and out
// of order: an event older than the one that set a subscription's status
// or plan changes neither, and a canceled subscription stays canceled.
// What the customer's instance should be (running on its plan, suspended,
// terminated) follows from the subscription alone, and is made so by
// provisioning jobs, retried until it holds.
package billing

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/controlplane/provision"
)

// Billing's expected failures are fault errors: Invalid for a refused
// request or webhook, Conflict for a checkout by a customer who already
// subscribes, NotFound for a customer with no subscription or webhooks
// asked of local billing.

// WebhookTolerance is how old a webhook's signature may be.
const WebhookTolerance = 5 * time.Minute

// Plan is what billing knows of a plan.
type Plan struct {
	// PriceID is the plan's Stripe price.
	PriceID string
	// MonthlyPrice, in the currency's minor unit, is what local billing
	// charges and what MRR counts when Stripe does not say.
	MonthlyPrice int64
}

// Instances runs the jobs that make a customer's instance what the
// subscription says (provisioning does). Suspend, Resume, Resize and
// Terminate start a job; their error is Busy (package fault) while the
// instance has a job running.
type Instances interface {
	// ProvisionOnce starts the provisioning of a customer's instance, once
	// per key: asked again, it returns the first job.
	ProvisionOnce(key, customer, plan string) (provision.Job, error)
	Suspend(id string) (provision.Job, error)
	Resume(id string) (provision.Job, error)
	Resize(id, plan string) (provision.Job, error)
	Terminate(id string) (provision.Job, error)
}

// Fleet is the instances as they are now (the fleet tracker); an
// instance gone is NotFound.
type Fleet interface {
	Get(id string, now time.Time) (fleet.Instance, error)
}

// Store keeps billing's records: the subscriptions, the Stripe events
// received and queued, the looks due at instances and the mail owed. A
// record that does not exist is NotFound (package fault).
type Store interface {
	// QueueBillingEvent records ev and queues raw, unless ev.ID was
	// received before; it reports whether it queued.
	QueueBillingEvent(ev Event, raw []byte) (bool, error)
	// QueuedBillingEvents returns up to n queued events, oldest first.
	QueuedBillingEvents(n int) ([]QueuedEvent, error)
	// ApplyBillingEvent takes event seq off the queue and, in the same
	// transaction, applies what apply makes of the customer's subscription.
	ApplyBillingEvent(seq uint64, eventID, customerID string, now time.Time, apply func(*Subscription) Effects) error

	Subscription(customerID string) (Subscription, error)
	Subscriptions() ([]Subscription, error)
	UpdateSubscription(customerID string, now time.Time, update func(*Subscription) error) (Subscription, error)

	// SetBillingDue asks for a look at a customer's instance at at;
	// ClearBillingDue removes it if it is still the one due at at.
	SetBillingDue(customerID string, at time.Time) error
	ClearBillingDue(customerID string, at time.Time) error
	BillingDue() (map[string]time.Time, error)

	BillingMails() ([]OwedMail, error)
	DeleteBillingMail(key string) error

	Customer(id string) (accounts.Customer, error)
	// CustomerByStripe returns our customer id for a Stripe customer id.
	CustomerByStripe(stripeCustomer string) (string, error)
	CustomerUsers(customerID string) ([]accounts.User, error)
}

// Options configure a Service.
type Options struct {
	Store Store
	// Stripe is the Stripe API (NewStripe); nil selects local billing.
	Stripe *client.API
	// WebhookSecret verifies Stripe's webhooks (whsec_...).
	WebhookSecret string
	Plans         map[string]Plan
	Currency      string
	// SuccessURL, CancelURL and PortalReturnURL are where Stripe sends the
	// customer back.
	SuccessURL, CancelURL, PortalReturnURL string
	// GracePeriod is how long a canceled subscription's instance stays
	// suspended before it is terminated.
	GracePeriod time.Duration
	Instances   Instances
	Fleet       Fleet
	Mail        mail.Sender
	// BaseURL starts the links in emails.
	BaseURL string
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	Log *slog.Logger
}

// Service is billing.
type Service struct {
	o        Options
	pay      payments
	log      *slog.Logger
	wake     chan struct{}
	counters *counters
}

// New returns the billing service; Run applies what it receives.
func New(o Options) *Service {
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Service{o: o, log: o.Log.With("component", "billing"), wake: make(chan struct{}, 1), counters: newCounters()}
	if o.Stripe != nil {
		s.pay = stripePayments{api: o.Stripe, o: &s.o}
	} else {
		s.pay = localPayments{s: s}
		// Local prices need ids too: events name plans by them.
		s.o.Plans = maps.Clone(o.Plans)
		for name, p := range s.o.Plans {
			p.PriceID = cmp.Or(p.PriceID, "price_local_"+name)
			s.o.Plans[name] = p
		}
	}
	return s
}

func (s *Service) now() time.Time { return s.o.Now().UTC() }

// Checkout starts a subscription of customer to plan and returns the page
// to send the customer to.
func (s *Service) Checkout(ctx context.Context, customerID, plan string) (string, error) {
	if _, ok := s.o.Plans[plan]; !ok {
		return "", fault.New(fault.Invalid, "unknown plan %q", plan)
	}
	sub, err := s.o.Store.Subscription(customerID)
	if err != nil && !errors.Is(err, fault.ErrNotFound) {
		return "", err
	}
	if sub.Status.Paying() {
		return "", fault.New(fault.Conflict, "already subscribed (%s, plan %s): change plans in the billing portal", sub.Status, sub.Plan)
	}
	c, err := s.o.Store.Customer(customerID)
	if err != nil {
		return "", err
	}
	if sub.StripeCustomer == "" {
		users, err := s.o.Store.CustomerUsers(customerID)
		if err != nil {
			return "", err
		}
		var email string
		if len(users) > 0 {
			email = users[0].Email
		}
		// Two checkouts at once both come here, and get one customer: its
		// id is derived from ours (local), or Stripe's idempotency key is.
		id, err := s.pay.customer(ctx, c, email)
		if err != nil {
			return "", err
		}
		if sub, err = s.o.Store.UpdateSubscription(customerID, s.now(), func(sub *Subscription) error {
			sub.StripeCustomer = id
			return nil
		}); err != nil {
			return "", err
		}
	}
	var trialEnd time.Time
	// Stripe takes a trial end at least 48 hours ahead; a trial closer to
	// its end is paid from the start.
	if c.TrialEndsAt.After(s.now().Add(48 * time.Hour)) {
		trialEnd = c.TrialEndsAt
	}
	return s.pay.checkout(ctx, sub, plan, trialEnd)
}

// Portal returns the customer's Stripe billing portal.
func (s *Service) Portal(ctx context.Context, customerID string) (string, error) {
	sub, err := s.o.Store.Subscription(customerID)
	if errors.Is(err, fault.ErrNotFound) || err == nil && sub.StripeCustomer == "" {
		return "", fault.New(fault.NotFound, "no billing account yet: subscribe first")
	}
	if err != nil {
		return "", err
	}
	return s.pay.portal(ctx, sub.StripeCustomer)
}

// Subscription returns the customer's subscription.
func (s *Service) Subscription(customerID string) (Subscription, error) {
	sub, err := s.o.Store.Subscription(customerID)
	if errors.Is(err, fault.ErrNotFound) {
		return sub, fault.New(fault.NotFound, "no subscription yet")
	}
	return sub, err
}

// Webhook verifies a Stripe event on its raw body and queues it. It
// refuses a missing, forged or stale signature, and an event of another
// API version than stripe-go's, which it could misread.
func (s *Service) Webhook(payload []byte, signature string) error {
	if s.o.WebhookSecret == "" {
		return fault.New(fault.NotFound, "Stripe webhooks are off: billing.provider is local")
	}
	if err := webhook.ValidatePayloadWithTolerance(payload, signature, s.o.WebhookSecret, WebhookTolerance); err != nil {
		s.counters.webhooks.WithLabelValues("refused").Inc()
		return fault.Wrap(fault.Invalid, err, "signature: %v", err) // about Stripe's own header: safe to show
	}
	var ev stripe.Event
	if err := json.Unmarshal(payload, &ev); err != nil || ev.ID == "" || ev.Type == "" || ev.Data == nil {
		s.counters.webhooks.WithLabelValues("refused").Inc()
		return fault.New(fault.Invalid, "not a Stripe event")
	}
	if ev.APIVersion != stripe.APIVersion {
		s.counters.webhooks.WithLabelValues("refused").Inc()
		s.log.Error("Stripe webhook refused: API version mismatch; recreate the webhook endpoint with api_version "+stripe.APIVersion,
			"event", ev.ID, "type", ev.Type, "event_api_version", ev.APIVersion, "want", stripe.APIVersion)
		return fault.New(fault.Invalid, "event API version %s: StackPro reads Stripe API version %s (stripe-go v76); create the webhook endpoint with that version",
			ev.APIVersion, stripe.APIVersion)
	}
	return s.ingest(ev, payload)
}

// ingest records and queues an event, once per id.
func (s *Service) ingest(ev stripe.Event, raw []byte) error {
	queued, err := s.o.Store.QueueBillingEvent(Event{ID: ev.ID, Type: string(ev.Type),
		Created: time.Unix(ev.Created, 0).UTC(), ReceivedAt: s.now()}, raw)
	if err != nil {
		return err
	}
	if !queued {
		s.counters.webhooks.WithLabelValues("duplicate").Inc()
		return nil
	}
	s.counters.webhooks.WithLabelValues("queued").Inc()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run applies queued events, keeps instances in line with subscriptions
// and sends billing's emails until ctx ends. What is left undone when it
// stops is in the store, and done on the next start.
func (s *Service) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if err := s.applyQueued(ctx); err != nil {
			s.log.Error("applying billing events", "err", err)
		}
		next := s.reconcileDue(ctx)
		if retry := s.sendMails(ctx); !retry.IsZero() && (next.IsZero() || retry.Before(next)) {
			next = retry
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(s.o.Now()), 10*time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// applyQueued applies every queued event, oldest first.
func (s *Service) applyQueued(ctx context.Context) error {
	for ctx.Err() == nil {
		batch, err := s.o.Store.QueuedBillingEvents(100)
		if err != nil || len(batch) == 0 {
			return err
		}
		for _, q := range batch {
			if err := s.apply(ctx, q); err != nil {
				return err
			}
		}
	}
	return nil
}
