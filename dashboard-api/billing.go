package dashboardapi

import (
	"context"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5/middleware"

	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/fault"
)

// Billing is the customers' subscriptions and Stripe's webhooks. Its
// errors are Invalid, NotFound or Conflict where those apply.
type Billing interface {
	// Checkout starts a subscription to plan for a customer and returns
	// the URL to send them to.
	Checkout(ctx context.Context, customerID, plan string) (url string, err error)
	// Portal returns the URL of the customer's billing portal.
	Portal(ctx context.Context, customerID string) (url string, err error)
	// Subscription is the customer's subscription; NotFound if none.
	Subscription(customerID string) (billing.Subscription, error)
	// Webhook verifies a Stripe event on its raw body and queues it. Its
	// error is Invalid when the signature or the event is refused;
	// an event seen before is no error.
	Webhook(payload []byte, signature string) error
	Metrics(now time.Time) (billing.Metrics, error)
}

// Plan is a plan as offered, for pricing pages.
type Plan struct {
	Name string `json:"name"`
	// MonthlyPrice is in the currency's minor unit (cents).
	MonthlyPrice   int64  `json:"monthly_price"`
	Currency       string `json:"currency"`
	InstanceType   string `json:"instance_type"`
	BackupSchedule string `json:"backup_schedule"`
	// Quotas are messages a month, by channel.
	Quotas Quotas `json:"quotas"`
}

// Quotas are messages a month, by channel.
type Quotas struct {
	SMS      int `json:"sms"`
	WhatsApp int `json:"whatsapp"`
	Email    int `json:"email"`
}

func (a *API) plans(w http.ResponseWriter, _ *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string][]Plan{"plans": a.o.Plans})
}

// requireCustomer lets through only a customer's users: billing is a
// customer's own, and its routes take the customer from the token alone.
func (a *API) requireCustomer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if principal(r).CustomerID == "" {
			a.answer(w, r, httpError{Code: http.StatusForbidden, Msg: "billing is per customer; sign in as the customer"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// sendTo answers the URL Billing sends the customer to, or its error.
func sendTo(w http.ResponseWriter, url string, err error) error {
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"url": url})
}

func (a *API) checkout(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Plan string `json:"plan"`
	}
	if err := decodeBody(w, r, maxBody, &req); err != nil {
		return err
	}
	if req.Plan == "" {
		return httpError{Code: http.StatusUnprocessableEntity, Msg: "plan is required"}
	}
	url, err := a.o.Billing.Checkout(r.Context(), principal(r).CustomerID, req.Plan)
	return sendTo(w, url, err)
}

func (a *API) portal(w http.ResponseWriter, r *http.Request) error {
	url, err := a.o.Billing.Portal(r.Context(), principal(r).CustomerID)
	return sendTo(w, url, err)
}

func (a *API) subscription(w http.ResponseWriter, r *http.Request) error {
	sub, err := a.o.Billing.Subscription(principal(r).CustomerID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sub)
}

func (a *API) billingMetrics(w http.ResponseWriter, _ *http.Request) error {
	m, err := a.o.Billing.Metrics(time.Now())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, m)
}

// maxWebhookBody bounds a Stripe event; Stripe's are far smaller.
const maxWebhookBody = 1 << 20

// stripeWebhook hands Billing the event byte for byte, as the signature
// covers it: nothing decodes the body before it is verified. Stripe shows
// the detail of a refusal in its dashboard.
func (a *API) stripeWebhook(w http.ResponseWriter, r *http.Request) error {
	payload, err := readBody(w, r, maxWebhookBody)
	if err != nil {
		return err
	}
	err = a.o.Billing.Webhook(payload, r.Header.Get("Stripe-Signature"))
	if f, ok := fault.As(err); ok && f.Kind == fault.Invalid {
		a.log.Warn("stripe webhook refused", "err", err, "request_id", middleware.GetReqID(r.Context()))
		return httpError{Code: http.StatusBadRequest, Msg: f.Public(), Err: err}
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"received": true})
}
