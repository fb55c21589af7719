package billing

import "time"

// SubscriptionStatus is where a customer's subscription stands. The values
// are Stripe's, folded to the four the control plane acts on.
type SubscriptionStatus string

// Subscription statuses. An empty status means no subscription yet.
const (
	// SubscriptionTrialing: subscribed, in the free trial; the instance runs.
	SubscriptionTrialing SubscriptionStatus = "trialing"
	// SubscriptionActive: paid; the instance runs.
	SubscriptionActive SubscriptionStatus = "active"
	// SubscriptionPastDue: a payment failed and Stripe is retrying; the
	// instance runs while the customer is reminded.
	SubscriptionPastDue SubscriptionStatus = "past_due"
	// SubscriptionCanceled: ended; the instance is suspended, then
	// terminated once the grace period is over.
	SubscriptionCanceled SubscriptionStatus = "canceled"
)

// Paying reports whether the status runs an instance.
func (s SubscriptionStatus) Paying() bool {
	return s == SubscriptionTrialing || s == SubscriptionActive || s == SubscriptionPastDue
}

// Subscription is a customer's subscription as billing knows it, with the
// instance it pays for.
type Subscription struct {
	CustomerID string             `json:"customer_id"`
	Status     SubscriptionStatus `json:"status"`
	Plan       string             `json:"plan,omitempty"`
	// StripeCustomer and StripeSubscription are Stripe's ids (or the local
	// billing's stand-ins).
	StripeCustomer     string `json:"stripe_customer,omitempty"`
	StripeSubscription string `json:"stripe_subscription,omitempty"`
	// MonthlyAmount is what the subscription brings in a month, in the
	// currency's minor unit (cents).
	MonthlyAmount int64     `json:"monthly_amount"`
	Currency      string    `json:"currency,omitempty"`
	TrialEndsAt   time.Time `json:"trial_ends_at,omitzero"`
	// FirstPaidAt is when the subscription was first active: the end of
	// its trial, if it had one.
	FirstPaidAt time.Time `json:"first_paid_at,omitzero"`
	// CanceledAt is when the subscription ended; TerminateAt is when its
	// instance goes for good, after the grace period.
	CanceledAt  time.Time `json:"canceled_at,omitzero"`
	TerminateAt time.Time `json:"terminate_at,omitzero"`
	// CanceledInTrial marks a subscription that ended before it was paid.
	CanceledInTrial bool `json:"canceled_in_trial,omitempty"`
	// ProvisionKey names the checkout that asked for the instance, so that
	// it is provisioned once however often the event comes.
	ProvisionKey string `json:"provision_key,omitempty"`
	InstanceID   string `json:"instance_id,omitempty"`
	// StatusAt and PlanAt are when Stripe created the events that set the
	// status and the plan: an older event never overwrites them.
	StatusAt time.Time `json:"status_at,omitzero"`
	PlanAt   time.Time `json:"plan_at,omitzero"`
	// Note says what billing could not do for the customer, if anything.
	Note      string       `json:"note,omitempty"`
	History   []Transition `json:"history"`
	UpdatedAt time.Time    `json:"updated_at,omitzero"`
}

// Transition is one change of a subscription's status or plan.
type Transition struct {
	At      time.Time          `json:"at"` // when Stripe created the event
	Event   string             `json:"event"`
	EventID string             `json:"event_id"`
	From    SubscriptionStatus `json:"from"`
	To      SubscriptionStatus `json:"to"`
	Plan    string             `json:"plan,omitempty"`
}

// Metrics is the business at a glance, for operators.
type Metrics struct {
	At       time.Time `json:"at"`
	Currency string    `json:"currency"`
	// MRR is the monthly recurring revenue of active and past-due
	// subscriptions, in the currency's minor unit.
	MRR int64 `json:"mrr"`
	// Active counts active and past-due subscriptions by plan.
	Active map[string]int `json:"active_subscriptions"`
	Trials int            `json:"trials"`
	// Converted30d and TrialsLost30d count the trials that turned paid and
	// those canceled in the last 30 days; TrialConversion is the first
	// over both.
	Converted30d    int     `json:"converted_30d"`
	TrialsLost30d   int     `json:"trials_lost_30d"`
	TrialConversion float64 `json:"trial_conversion_30d"`
	// Churned30d counts paid subscriptions canceled in the last 30 days;
	// Churn is the share of the subscriptions paid for 30 days ago that
	// have been canceled since.
	Churned30d int     `json:"churned_30d"`
	Churn      float64 `json:"churn_30d"`
}

// Event is a Stripe event as received: recorded once per id, so a
// redelivered event takes effect once.
type Event struct {
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

// OwedMail is an email billing owes a customer, kept until it is sent.
type OwedMail struct {
	Key        string            `json:"key"` // unique: the event id and kind
	CustomerID string            `json:"customer_id"`
	Kind       string            `json:"kind"`
	Data       map[string]string `json:"data,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
}

// Effects is what applying an event asks of the store besides the
// subscription itself.
type Effects struct {
	// Outcome is recorded with the event: applied, or ignored: <why>.
	Outcome string
	// CustomerStatus and CustomerPlan, when set, become the customer's.
	CustomerStatus, CustomerPlan string
	// Reconcile marks the customer's instance for a look now.
	Reconcile bool
	Mails     []OwedMail
}
