package billing

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/fault"
)

// payments is where customers pay: Stripe, or the local stand-in.
type payments interface {
	// customer creates the payer for customer c and returns its id.
	customer(ctx context.Context, c accounts.Customer, email string) (string, error)
	// checkout returns the page where sub's customer pays for plan, with a
	// trial until trialEnd unless it is zero.
	checkout(ctx context.Context, sub Subscription, plan string, trialEnd time.Time) (string, error)
	portal(ctx context.Context, stripeCustomer string) (string, error)
	// subscription reads a subscription as it is now; nil if the payments
	// keep none.
	subscription(ctx context.Context, id string) (*stripe.Subscription, error)
}

// NewStripe returns a Stripe API client with key; apiBase, if set,
// replaces Stripe's URL (stripe-mock's, in tests).
func NewStripe(key, apiBase string) *client.API {
	cfg := &stripe.BackendConfig{HTTPClient: &http.Client{Timeout: 30 * time.Second},
		LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull}}
	if apiBase != "" {
		cfg.URL = stripe.String(apiBase)
	}
	return client.New(key, stripe.NewBackendsWithConfig(cfg))
}

// stripePayments is Stripe through stripe-go.
type stripePayments struct {
	api *client.API
	o   *Options
}

func (p stripePayments) customer(ctx context.Context, c accounts.Customer, email string) (string, error) {
	params := &stripe.CustomerParams{Name: stripe.String(c.Company), Metadata: map[string]string{metaCustomer: c.ID}}
	if email != "" {
		params.Email = stripe.String(email)
	}
	params.Context = ctx
	// Stripe keeps an idempotency key for a day: a retry after a crash
	// gets the same customer, not a second one.
	params.SetIdempotencyKey("stackpro-customer-" + c.ID)
	cus, err := p.api.Customers.New(params)
	if err != nil {
		return "", fmt.Errorf("stripe: creating the customer: %w", err)
	}
	return cus.ID, nil
}

func (p stripePayments) checkout(ctx context.Context, sub Subscription, plan string, trialEnd time.Time) (string, error) {
	meta := map[string]string{metaCustomer: sub.CustomerID, metaPlan: plan}
	params := &stripe.CheckoutSessionParams{
		Mode:              stripe.String(string(stripe.CheckoutSessionModeSubscription)),
		Customer:          stripe.String(sub.StripeCustomer),
		ClientReferenceID: stripe.String(sub.CustomerID),
		LineItems:         []*stripe.CheckoutSessionLineItemParams{{Price: stripe.String(p.o.Plans[plan].PriceID), Quantity: stripe.Int64(1)}},
		SuccessURL:        stripe.String(p.o.SuccessURL),
		CancelURL:         stripe.String(p.o.CancelURL),
		Metadata:          meta,
		SubscriptionData:  &stripe.CheckoutSessionSubscriptionDataParams{Metadata: meta},
	}
	if !trialEnd.IsZero() {
		params.SubscriptionData.TrialEnd = stripe.Int64(trialEnd.Unix())
	}
	params.Context = ctx
	cs, err := p.api.CheckoutSessions.New(params)
	if err != nil {
		return "", fmt.Errorf("stripe: creating the checkout session: %w", err)
	}
	return cs.URL, nil
}

func (p stripePayments) portal(ctx context.Context, stripeCustomer string) (string, error) {
	params := &stripe.BillingPortalSessionParams{Customer: stripe.String(stripeCustomer), ReturnURL: stripe.String(p.o.PortalReturnURL)}
	params.Context = ctx
	ps, err := p.api.BillingPortalSessions.New(params)
	if err != nil {
		return "", fmt.Errorf("stripe: creating the portal session: %w", err)
	}
	return ps.URL, nil
}

func (p stripePayments) subscription(ctx context.Context, id string) (*stripe.Subscription, error) {
	params := &stripe.SubscriptionParams{}
	params.Context = ctx
	sub, err := p.api.Subscriptions.Get(id, params)
	if err != nil {
		return nil, fmt.Errorf("stripe: reading subscription %s: %w", id, err)
	}
	return sub, nil
}

// localPayments completes every checkout at once: it queues the events
// Stripe would send (checkout.session.completed, customer.subscription.
// created, and invoice.paid unless the subscription starts in a trial),
// which billing then applies like any other.
type localPayments struct{ s *Service }

func localID(prefix string) string { return prefix + rand.Text()[:16] }

func (p localPayments) customer(_ context.Context, c accounts.Customer, _ string) (string, error) {
	return "cus_local_" + c.ID, nil
}

func (p localPayments) checkout(_ context.Context, sub Subscription, plan string, trialEnd time.Time) (string, error) {
	s := p.s
	now := s.now()
	meta := map[string]string{metaCustomer: sub.CustomerID, metaPlan: plan}
	subID, sessionID := localID("sub_local_"), localID("cs_local_")
	price := &stripe.Price{ID: s.o.Plans[plan].PriceID, UnitAmount: s.o.Plans[plan].MonthlyPrice,
		Currency: stripe.Currency(s.o.Currency), Recurring: &stripe.PriceRecurring{Interval: stripe.PriceRecurringIntervalMonth, IntervalCount: 1}}
	status := stripe.SubscriptionStatusActive
	if !trialEnd.IsZero() {
		status = stripe.SubscriptionStatusTrialing
	}
	objects := []struct {
		typ string
		obj any
	}{
		{"checkout.session.completed", stripe.CheckoutSession{ID: sessionID, Mode: stripe.CheckoutSessionModeSubscription,
			ClientReferenceID: sub.CustomerID, Customer: &stripe.Customer{ID: sub.StripeCustomer},
			Subscription: &stripe.Subscription{ID: subID}, Metadata: meta}},
		{"customer.subscription.created", stripe.Subscription{ID: subID, Status: status, Metadata: meta,
			Customer: &stripe.Customer{ID: sub.StripeCustomer}, TrialEnd: unix(trialEnd),
			Items: &stripe.SubscriptionItemList{Data: []*stripe.SubscriptionItem{{Price: price, Quantity: 1}}}}},
	}
	if trialEnd.IsZero() {
		objects = append(objects, struct {
			typ string
			obj any
		}{"invoice.paid", stripe.Invoice{ID: localID("in_local_"), Subscription: &stripe.Subscription{ID: subID},
			Customer: &stripe.Customer{ID: sub.StripeCustomer}, SubscriptionDetails: &stripe.InvoiceSubscriptionDetails{Metadata: meta},
			AmountPaid: price.UnitAmount, Currency: price.Currency}})
	}
	for _, o := range objects {
		raw, err := json.Marshal(o.obj)
		if err != nil {
			return "", err
		}
		ev := stripe.Event{ID: localID("evt_local_"), Type: stripe.EventType(o.typ), Created: now.Unix(),
			APIVersion: stripe.APIVersion, Data: &stripe.EventData{Raw: raw}}
		payload, err := json.Marshal(ev)
		if err != nil {
			return "", err
		}
		if err := s.ingest(ev, payload); err != nil {
			return "", err
		}
	}
	return s.o.SuccessURL, nil
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func (p localPayments) portal(context.Context, string) (string, error) {
	return "", fault.New(fault.NotFound, "local billing has no billing portal; set billing.provider: stripe")
}

func (p localPayments) subscription(context.Context, string) (*stripe.Subscription, error) {
	return nil, nil
}
