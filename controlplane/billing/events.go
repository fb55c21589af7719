package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// metaCustomer is the metadata key that names our customer on Stripe's
// customers, checkout sessions and subscriptions; metaPlan names the plan.
const (
	metaCustomer = "stackpro_customer"
	metaPlan     = "stackpro_plan"
)

// Mail kinds.
const (
	mailPaymentFailed = "payment_failed"
	mailTrialWillEnd  = "trial_will_end"
)

// maxHistory bounds the transitions a subscription keeps.
const maxHistory = 100

// change is what one event says about a customer's subscription.
type change struct {
	eventID, event string
	at             time.Time // when Stripe created the event
	customer       string
	stripeCustomer string
	subscription   string
	status         SubscriptionStatus // "" says nothing of the status
	plan           string             // "" says nothing of the plan
	amount         int64              // monthly, minor unit; 0 if unknown
	currency       string
	trialEnd       time.Time
	provisionKey   string
	mail           string
	mailData       map[string]string
	// note is what the event could not say (an unknown price).
	note string
}

// apply applies one queued event. An event billing cannot use is recorded
// as ignored, with why; it never blocks the queue.
func (s *Service) apply(ctx context.Context, q QueuedEvent) error {
	var ev stripe.Event
	if err := json.Unmarshal(q.Raw, &ev); err != nil {
		return fmt.Errorf("queued event %d: %w", q.Seq, err) // verified when queued: the store is damaged
	}
	ch, err := s.read(ctx, ev)
	if err != nil {
		s.log.Warn("billing event ignored", "event", ev.ID, "type", ev.Type, "reason", err)
		s.counters.applied.WithLabelValues("ignored").Inc()
		return s.o.Store.ApplyBillingEvent(q.Seq, ev.ID, "", s.now(), func(*Subscription) Effects {
			return Effects{Outcome: "ignored: " + err.Error()}
		})
	}
	var fx Effects
	err = s.o.Store.ApplyBillingEvent(q.Seq, ev.ID, ch.customer, s.now(), func(sub *Subscription) Effects {
		fx = s.merge(sub, ch)
		return fx
	})
	if err == nil {
		s.counters.applied.WithLabelValues(outcomeLabel(fx.Outcome)).Inc()
		s.log.Info("billing event", "event", ev.ID, "type", ev.Type, "customer", ch.customer, "outcome", fx.Outcome)
	}
	return err
}

func outcomeLabel(outcome string) string {
	if outcome == "applied" {
		return outcome
	}
	return "ignored"
}

// read turns an event into a change, or says why it is of no use.
func (s *Service) read(ctx context.Context, ev stripe.Event) (change, error) {
	ch := change{eventID: ev.ID, event: string(ev.Type), at: time.Unix(ev.Created, 0).UTC()}
	var err error
	switch ev.Type {
	case "checkout.session.completed":
		var cs stripe.CheckoutSession
		if err = json.Unmarshal(ev.Data.Raw, &cs); err != nil {
			break
		}
		err = s.readCheckout(ctx, &ch, cs)
	case "invoice.paid", "invoice.payment_failed":
		var in stripe.Invoice
		if err = json.Unmarshal(ev.Data.Raw, &in); err != nil {
			break
		}
		err = s.readInvoice(&ch, in)
	case "customer.subscription.created", "customer.subscription.updated",
		"customer.subscription.deleted", "customer.subscription.trial_will_end":
		var sub stripe.Subscription
		if err = json.Unmarshal(ev.Data.Raw, &sub); err != nil {
			break
		}
		err = s.readSubscription(&ch, sub)
	default:
		return ch, fmt.Errorf("event type %s is not used", ev.Type)
	}
	if err != nil {
		return ch, err
	}
	if ch.customer == "" {
		return ch, errors.New("names no StackPro customer")
	}
	return ch, nil
}

func (s *Service) readCheckout(ctx context.Context, ch *change, cs stripe.CheckoutSession) error {
	if cs.Mode != stripe.CheckoutSessionModeSubscription || cs.Subscription == nil {
		return errors.New("not a subscription checkout")
	}
	ch.customer = cs.ClientReferenceID
	if ch.customer == "" {
		ch.customer = cs.Metadata[metaCustomer]
	}
	ch.subscription = cs.Subscription.ID
	if cs.Customer != nil {
		ch.stripeCustomer = cs.Customer.ID
	}
	ch.plan = cs.Metadata[metaPlan]
	if _, ok := s.o.Plans[ch.plan]; !ok {
		return fmt.Errorf("checkout names unknown plan %q", ch.plan)
	}
	ch.provisionKey = "checkout:" + cs.ID
	// The subscription says whether it starts in a trial, and what it
	// brings in. Without it the status waits for the subscription's own
	// events, which Stripe sends too, and the plan's price stands.
	sub, err := s.pay.subscription(ctx, ch.subscription)
	if err != nil {
		s.log.Warn("reading the subscription of a checkout", "subscription", ch.subscription, "err", err)
	}
	if sub == nil {
		return nil
	}
	ch.status = SubscriptionActive
	if sub.TrialEnd > 0 && time.Unix(sub.TrialEnd, 0).After(ch.at) {
		ch.status, ch.trialEnd = SubscriptionTrialing, time.Unix(sub.TrialEnd, 0).UTC()
	}
	ch.amount, ch.currency = monthlyAmount(sub)
	return nil
}

func (s *Service) readInvoice(ch *change, in stripe.Invoice) error {
	if in.Subscription == nil {
		return errors.New("not a subscription invoice")
	}
	ch.subscription = in.Subscription.ID
	if in.SubscriptionDetails != nil {
		ch.customer = in.SubscriptionDetails.Metadata[metaCustomer]
	}
	if in.Customer != nil {
		ch.stripeCustomer = in.Customer.ID
		if ch.customer == "" {
			ch.customer, _ = s.o.Store.CustomerByStripe(in.Customer.ID)
		}
	}
	if ch.event == "invoice.paid" {
		ch.status = SubscriptionActive
		return nil
	}
	ch.status, ch.mail = SubscriptionPastDue, mailPaymentFailed
	ch.mailData = map[string]string{"amount": money(in.AmountDue, string(in.Currency)), "invoice_url": in.HostedInvoiceURL}
	if in.NextPaymentAttempt > 0 {
		ch.mailData["next_attempt"] = time.Unix(in.NextPaymentAttempt, 0).UTC().Format("2 January 2006")
	}
	return nil
}

func (s *Service) readSubscription(ch *change, sub stripe.Subscription) error {
	ch.subscription = sub.ID
	ch.customer = sub.Metadata[metaCustomer]
	if sub.Customer != nil {
		ch.stripeCustomer = sub.Customer.ID
		if ch.customer == "" {
			ch.customer, _ = s.o.Store.CustomerByStripe(sub.Customer.ID)
		}
	}
	if sub.TrialEnd > 0 {
		ch.trialEnd = time.Unix(sub.TrialEnd, 0).UTC()
	}
	if ch.event == "customer.subscription.trial_will_end" {
		ch.mail = mailTrialWillEnd
		ch.mailData = map[string]string{"trial_end": ch.trialEnd.Format("2 January 2006")}
		return nil
	}
	ch.status = statusOf(sub.Status)
	if ch.event == "customer.subscription.deleted" {
		ch.status = SubscriptionCanceled
	}
	if sub.Items != nil && len(sub.Items.Data) > 0 && sub.Items.Data[0].Price != nil {
		price := sub.Items.Data[0].Price.ID
		for name, p := range s.o.Plans {
			if price != "" && p.PriceID == price {
				ch.plan = name
			}
		}
		if ch.plan == "" {
			ch.note = fmt.Sprintf("price %s is no plan's", price)
		}
	}
	ch.amount, ch.currency = monthlyAmount(&sub)
	return nil
}

// statusOf folds Stripe's subscription statuses into ours; "" for those
// that change nothing (incomplete: the first payment is under way; paused:
// a trial ended without a payment method, which Stripe settles).
func statusOf(st stripe.SubscriptionStatus) SubscriptionStatus {
	switch st {
	case stripe.SubscriptionStatusTrialing:
		return SubscriptionTrialing
	case stripe.SubscriptionStatusActive:
		return SubscriptionActive
	case stripe.SubscriptionStatusPastDue, stripe.SubscriptionStatusUnpaid:
		return SubscriptionPastDue
	case stripe.SubscriptionStatusCanceled, stripe.SubscriptionStatusIncompleteExpired:
		return SubscriptionCanceled
	}
	return ""
}

// monthlyAmount is what sub brings in a month, in the minor unit, from its
// first item; 0 if it does not say.
func monthlyAmount(sub *stripe.Subscription) (int64, string) {
	if sub.Items == nil || len(sub.Items.Data) == 0 || sub.Items.Data[0].Price == nil {
		return 0, ""
	}
	item := sub.Items.Data[0]
	amount := item.Price.UnitAmount * max(item.Quantity, 1)
	if r := item.Price.Recurring; r != nil {
		n := max(r.IntervalCount, 1)
		switch r.Interval {
		case stripe.PriceRecurringIntervalYear:
			amount /= 12 * n
		case stripe.PriceRecurringIntervalWeek:
			amount = amount * 52 / (12 * n)
		case stripe.PriceRecurringIntervalDay:
			amount = amount * 365 / (12 * n)
		default:
			amount /= n
		}
	}
	return amount, string(item.Price.Currency)
}

// rank breaks a tie between two statuses set in the same second: the
// later in a subscription's life wins, whatever order they come in.
func rank(st SubscriptionStatus) int {
	return slices.Index([]SubscriptionStatus{"", SubscriptionTrialing, SubscriptionActive,
		SubscriptionPastDue, SubscriptionCanceled}, st)
}

// customerStatus is the customer's status for a subscription status.
func customerStatus(st SubscriptionStatus) string {
	if st == SubscriptionTrialing {
		return "trial"
	}
	return string(st)
}

// merge applies ch to sub and says what else must happen.
func (s *Service) merge(sub *Subscription, ch change) Effects {
	fx := Effects{Outcome: "applied"}
	if ch.subscription != "" && sub.StripeSubscription != "" && ch.subscription != sub.StripeSubscription {
		// Another subscription than the customer's: a new one after a
		// cancellation, or a late event of an old one.
		if sub.Status != SubscriptionCanceled || ch.at.Before(sub.StatusAt) {
			fx.Outcome = fmt.Sprintf("ignored: subscription %s is not the customer's (%s)", ch.subscription, sub.StripeSubscription)
			if ch.provisionKey != "" {
				// Two checkouts completed (two tabs): the customer pays twice
				// for one instance until someone cancels one.
				sub.Note = fmt.Sprintf("checkout %s created a second subscription, %s: cancel and refund it in Stripe",
					strings.TrimPrefix(ch.provisionKey, "checkout:"), ch.subscription)
				s.log.Error("billing: a customer subscribed twice", "customer", sub.CustomerID,
					"subscription", sub.StripeSubscription, "second", ch.subscription)
			}
			return fx
		}
		*sub = Subscription{CustomerID: sub.CustomerID, StripeCustomer: sub.StripeCustomer, InstanceID: sub.InstanceID,
			History: sub.History, Currency: sub.Currency}
	}
	if sub.StripeSubscription == "" {
		sub.StripeSubscription = ch.subscription
	}
	if sub.StripeCustomer == "" {
		sub.StripeCustomer = ch.stripeCustomer
	}
	if !ch.trialEnd.IsZero() {
		sub.TrialEndsAt = ch.trialEnd
	}
	if ch.provisionKey != "" && sub.ProvisionKey == "" {
		sub.ProvisionKey, fx.Reconcile = ch.provisionKey, true
	}
	if ch.note != "" {
		sub.Note = ch.note
	}
	from, oldPlan := sub.Status, sub.Plan
	if ch.plan != "" && !ch.at.Before(sub.PlanAt) {
		sub.Plan = ch.plan
	}
	if (ch.plan != "" || ch.amount > 0) && !ch.at.Before(sub.PlanAt) {
		sub.PlanAt = ch.at
		if ch.amount > 0 {
			sub.MonthlyAmount, sub.Currency = ch.amount, ch.currency
		}
	}
	newer := ch.at.After(sub.StatusAt) || ch.at.Equal(sub.StatusAt) && rank(ch.status) > rank(sub.Status)
	if ch.status != "" && sub.Status != SubscriptionCanceled && newer {
		if ch.status == SubscriptionCanceled {
			sub.CanceledAt, sub.TerminateAt = ch.at, ch.at.Add(s.o.GracePeriod)
			sub.CanceledInTrial = from == SubscriptionTrialing
		}
		sub.Status, sub.StatusAt = ch.status, ch.at
	}
	if sub.Status != from || sub.Plan != oldPlan {
		sub.History = append(sub.History, Transition{At: ch.at, Event: ch.event, EventID: ch.eventID,
			From: from, To: sub.Status, Plan: sub.Plan})
		slices.SortStableFunc(sub.History, func(a, b Transition) int { return a.At.Compare(b.At) })
		sub.History = sub.History[max(0, len(sub.History)-maxHistory):]
		fx.Reconcile = true
	}
	if sub.Status == SubscriptionActive && sub.FirstPaidAt.IsZero() {
		sub.FirstPaidAt = sub.StatusAt
	}
	if sub.MonthlyAmount == 0 {
		sub.MonthlyAmount, sub.Currency = s.o.Plans[sub.Plan].MonthlyPrice, s.o.Currency
	}
	if ch.mail != "" && sub.Status != SubscriptionCanceled {
		fx.Mails = append(fx.Mails, OwedMail{Key: ch.eventID + "/" + ch.mail, CustomerID: sub.CustomerID,
			Kind: ch.mail, Data: ch.mailData, CreatedAt: s.now()})
	}
	fx.CustomerStatus, fx.CustomerPlan = customerStatus(sub.Status), sub.Plan
	return fx
}

// money formats an amount in the minor unit, as "29.00 USD".
func money(amount int64, currency string) string {
	return fmt.Sprintf("%d.%02d %s", amount/100, amount%100, strings.ToUpper(currency))
}
