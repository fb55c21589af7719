package dashboardapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/fault"
)

// fakeBilling records what it is asked, as "checkout cus_a starter", and
// answers like the billing service: it knows cus_a's subscription, the
// plans starter and pro, and one webhook signature. err, when set, fails
// every call.
type fakeBilling struct {
	recorder
	err error
}

var _ Billing = (*fakeBilling)(nil)

// goodSignature is the one Stripe-Signature fakeBilling accepts.
const goodSignature = "t=1767322245,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"

var testSubscription = billing.Subscription{CustomerID: "cus_a", Status: billing.SubscriptionActive, Plan: "starter",
	StripeCustomer: "cus_Stripe1", StripeSubscription: "sub_1", MonthlyAmount: 4900, Currency: "eur",
	History: []billing.Transition{{At: created, Event: "customer.subscription.created", EventID: "evt_1",
		To: billing.SubscriptionActive, Plan: "starter"}}, UpdatedAt: created}

var testBillingMetrics = billing.Metrics{At: created, Currency: "eur", MRR: 4900,
	Active: map[string]int{"starter": 1}, Trials: 2, Converted30d: 1, TrialsLost30d: 1, TrialConversion: 0.5}

func (f *fakeBilling) Checkout(_ context.Context, customerID, plan string) (string, error) {
	f.record("checkout %s %s", customerID, plan)
	if f.err != nil {
		return "", f.err
	}
	if plan != "starter" && plan != "pro" {
		return "", fault.New(fault.Invalid, "plan: unknown plan %q", plan)
	}
	return "https://checkout.stripe.test/" + customerID + "/" + plan, nil
}

func (f *fakeBilling) Portal(_ context.Context, customerID string) (string, error) {
	f.record("portal %s", customerID)
	if _, err := f.sub(customerID); err != nil {
		return "", err
	}
	return "https://billing.stripe.test/" + customerID, nil
}

func (f *fakeBilling) Subscription(customerID string) (billing.Subscription, error) {
	f.record("subscription %s", customerID)
	return f.sub(customerID)
}

func (f *fakeBilling) sub(customerID string) (billing.Subscription, error) {
	if f.err != nil {
		return billing.Subscription{}, f.err
	}
	if customerID != testSubscription.CustomerID {
		return billing.Subscription{}, fault.New(fault.NotFound, "billing: no subscription for %s", customerID)
	}
	return testSubscription, nil
}

func (f *fakeBilling) Webhook(payload []byte, signature string) error {
	f.record("webhook %s %s", signature, payload)
	if f.err != nil {
		return f.err
	}
	if signature != goodSignature {
		return fault.New(fault.Invalid, "stripe: no signatures found matching the expected signature for payload")
	}
	return nil
}

func (f *fakeBilling) Metrics(time.Time) (billing.Metrics, error) {
	f.record("metrics")
	return testBillingMetrics, f.err
}

// fakePrometheus stands in for the control plane's registry handler.
var fakePrometheus = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	io.WriteString(w, promText)
})

const promText = "# TYPE stackpro_instances gauge\nstackpro_instances 2\n"

var errStripe = errors.New("stripe: api_key_expired: sk_live_1234 expired")

func TestBillingRoutes(t *testing.T) {
	tests := []struct {
		name, method, path, token, body string
		want                            any // the decoded answer
		wantCall                        string
	}{
		{"checkout", "POST", "/api/v1/billing/checkout", tokenCustomerA, `{"plan": "starter"}`,
			map[string]string{"url": "https://checkout.stripe.test/cus_a/starter"}, "checkout cus_a starter"},
		{"checkout of another customer", "POST", "/api/v1/billing/checkout", tokenCustomerB, `{"plan": "pro"}`,
			map[string]string{"url": "https://checkout.stripe.test/cus_b/pro"}, "checkout cus_b pro"},
		{"portal", "POST", "/api/v1/billing/portal", tokenCustomerA, "",
			map[string]string{"url": "https://billing.stripe.test/cus_a"}, "portal cus_a"},
		{"subscription", "GET", "/api/v1/billing", tokenCustomerA, "", testSubscription, "subscription cus_a"},
		{"metrics as an operator", "GET", "/api/v1/admin/billing/metrics", tokenOperator, "", testBillingMetrics, "metrics"},
		{"metrics as an admin", "GET", "/api/v1/admin/billing/metrics", goodToken, "", testBillingMetrics, "metrics"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			res := ta.send(t, tt.method, tt.path, tt.token, tt.body)
			if res.code != http.StatusOK {
				t.Fatalf("%s %s = %d, want 200 (body %s)", tt.method, tt.path, res.code, res.body)
			}
			got := reflect.New(reflect.TypeOf(tt.want))
			decode(t, res, "application/json", got.Interface())
			if !reflect.DeepEqual(got.Elem().Interface(), tt.want) {
				t.Errorf("body = %+v, want %+v", got.Elem().Interface(), tt.want)
			}
			if got := ta.billing.called(); !slices.Equal(got, []string{tt.wantCall}) {
				t.Errorf("calls = %q, want %q", got, tt.wantCall)
			}
		})
	}
}

func TestBillingErrors(t *testing.T) {
	const notCustomer = "billing is per customer; sign in as the customer"
	tests := []struct {
		name, method, path, token, body string
		billingErr                      error
		wantCode                        int
		wantDetail                      string
		wantCalls                       []string
	}{
		{"no token", "POST", "/api/v1/billing/checkout", "", `{"plan": "starter"}`, nil,
			http.StatusUnauthorized, "missing bearer token", nil},
		{"checkout as an operator", "POST", "/api/v1/billing/checkout", tokenOperator, `{"plan": "starter"}`, nil,
			http.StatusForbidden, notCustomer, nil},
		{"portal as an operator", "POST", "/api/v1/billing/portal", tokenOperator, "", nil,
			http.StatusForbidden, notCustomer, nil},
		{"subscription as an admin", "GET", "/api/v1/billing", goodToken, "", nil, http.StatusForbidden, notCustomer, nil},
		{"metrics as a customer", "GET", "/api/v1/admin/billing/metrics", tokenCustomerA, "", nil,
			http.StatusForbidden, "this needs the operator or admin role", nil},
		{"no plan", "POST", "/api/v1/billing/checkout", tokenCustomerA, `{}`, nil,
			http.StatusUnprocessableEntity, "plan is required", nil},
		{"unknown field", "POST", "/api/v1/billing/checkout", tokenCustomerA, `{"plan": "pro", "customer": "cus_b"}`, nil,
			http.StatusBadRequest, `malformed body: json: unknown field "customer"`, nil},
		{"unknown plan", "POST", "/api/v1/billing/checkout", tokenCustomerA, `{"plan": "gold"}`, nil,
			http.StatusUnprocessableEntity, `plan: unknown plan "gold"`, []string{"checkout cus_a gold"}},
		{"stripe failing", "POST", "/api/v1/billing/checkout", tokenCustomerA, `{"plan": "pro"}`, errStripe,
			http.StatusInternalServerError, "internal error", []string{"checkout cus_a pro"}},
		{"no subscription", "GET", "/api/v1/billing", tokenCustomerB, "", nil,
			http.StatusNotFound, "billing: no subscription for cus_b", []string{"subscription cus_b"}},
		{"portal without a subscription", "POST", "/api/v1/billing/portal", tokenCustomerB, "", nil,
			http.StatusNotFound, "billing: no subscription for cus_b", []string{"portal cus_b"}},
		{"metrics failing", "GET", "/api/v1/admin/billing/metrics", tokenOperator, "", errStore,
			http.StatusInternalServerError, "internal error", []string{"metrics"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			ta.billing.err = tt.billingErr
			res := ta.send(t, tt.method, tt.path, tt.token, tt.body)
			wantProblem(t, res, tt.wantCode, tt.wantDetail)
			if got := ta.billing.called(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("calls = %q, want %q", got, tt.wantCalls)
			}
			if bytes.Contains(res.body, []byte("sk_live")) || bytes.Contains(res.body, []byte("disk full")) {
				t.Errorf("body %s shows Billing's error", res.body)
			}
		})
	}
}

// postWebhook posts payload to /webhooks/stripe as Stripe does: no bearer
// token, the signature in its header.
func (ta *testAPI) postWebhook(t *testing.T, payload, signature string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ta.srv.URL+"/webhooks/stripe", strings.NewReader(payload))
	if err != nil {
		t.Fatalf("http.NewRequest: %v", err)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Stripe-Signature", signature)
	return ta.roundTrip(t, req)
}

func TestStripeWebhook(t *testing.T) {
	// Odd whitespace, escapes and unicode: re-encoding would change the
	// bytes the signature covers.
	const event = "{\n  \"id\":\t\"evt_1\" ,\r\n  \"type\" :\"checkout.session.completed\",  " +
		"\"data\": {\"name\": \"Zoë Ångström 🚀\", \"note\": \"caf\\u00e9 \\\"quoted\\\"\", \"n\": 1.50}\n}\n\n"
	tests := []struct {
		name, payload, signature string
		billingErr               error
		wantCode                 int
		wantDetail               string // for a problem
		wantCalled               bool
	}{
		{"signed", event, goodSignature, nil, http.StatusOK, "", true},
		{"bad signature", event, "t=1,v1=forged", nil, http.StatusBadRequest,
			"stripe: no signatures found matching the expected signature for payload", true},
		{"no signature", event, "", nil, http.StatusBadRequest,
			"stripe: no signatures found matching the expected signature for payload", true},
		{"webhooks not enabled", event, goodSignature, fault.New(fault.NotFound, "billing: no webhook secret"),
			http.StatusNotFound, "billing: no webhook secret", true},
		{"billing failing", event, goodSignature, errStore, http.StatusInternalServerError, "internal error", true},
		{"too large", strings.Repeat(" ", maxWebhookBody+1), goodSignature, nil, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("body larger than %d bytes", maxWebhookBody), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			ta.billing.err = tt.billingErr
			res := ta.postWebhook(t, tt.payload, tt.signature)
			if tt.wantCode == http.StatusOK {
				var got map[string]bool
				decode(t, res, "application/json", &got)
				if res.code != http.StatusOK || !got["received"] {
					t.Errorf("POST /webhooks/stripe = %d %s, want 200 received", res.code, res.body)
				}
			} else {
				wantProblem(t, res, tt.wantCode, tt.wantDetail)
			}
			var want []string
			if tt.wantCalled {
				want = []string{"webhook " + tt.signature + " " + tt.payload} // byte for byte
			}
			if got := ta.billing.called(); !slices.Equal(got, want) {
				t.Errorf("calls = %q, want %q", got, want)
			}
			if refused := strings.Contains(ta.log.String(), "stripe webhook refused"); refused != (tt.wantCode == http.StatusBadRequest) {
				t.Errorf("log = %q; want a refusal logged only for a 400", ta.log.String())
			}
		})
	}
}

func TestPrometheusMetrics(t *testing.T) {
	tests := []struct {
		name, token string
		wantCode    int
		wantDetail  string // for a problem
	}{
		{"operator", tokenOperator, http.StatusOK, ""},
		{"admin", goodToken, http.StatusOK, ""},
		{"no token", "", http.StatusUnauthorized, "missing bearer token"},
		{"customer", tokenCustomerA, http.StatusForbidden, "this needs the operator or admin role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			res := ta.do(t, http.MethodGet, "/metrics", tt.token)
			if tt.wantCode != http.StatusOK {
				wantProblem(t, res, tt.wantCode, tt.wantDetail)
				return
			}
			if res.code != http.StatusOK || string(res.body) != promText ||
				res.header.Get("Content-Type") != "text/plain; version=0.0.4" {
				t.Errorf("GET /metrics = %d %q %q, want 200 and the registry's text", res.code, res.header.Get("Content-Type"), res.body)
			}
		})
	}
}

func TestPrometheusMetricsNotMounted(t *testing.T) {
	ta := newTestAPI(t, func(o *Options) { o.Prometheus = nil })
	wantProblem(t, ta.do(t, http.MethodGet, "/metrics", tokenOperator), http.StatusNotFound, "no such route")
}
