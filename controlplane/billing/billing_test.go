package billing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/internal/stripemock"
)

const whsec = "whsec_test_secret"

var testPlans = map[string]billing.Plan{
	"starter":    {PriceID: "price_starter", MonthlyPrice: 2900},
	"business":   {PriceID: "price_business", MonthlyPrice: 7900},
	"enterprise": {PriceID: "price_enterprise", MonthlyPrice: 19900},
}

// instances stands in for the provisioning service, whose jobs have
// their own tests: each job takes effect at once, and every call is kept.
type instances struct {
	mu    sync.Mutex
	byKey map[string]provision.Job
	insts map[string]*fleet.Instance
	calls []string
}

func newInstances() *instances {
	return &instances{byKey: map[string]provision.Job{}, insts: map[string]*fleet.Instance{}}
}

func (f *instances) ProvisionOnce(key, customer, plan string) (provision.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if job, ok := f.byKey[key]; ok {
		return job, nil
	}
	id := fmt.Sprintf("i-%d", len(f.byKey)+1)
	f.insts[id] = &fleet.Instance{ID: id, Customer: customer, Plan: plan, Lifecycle: fleet.LifecycleActive}
	job := provision.Job{ID: "job-" + id, Kind: "provision", InstanceID: id, Key: key, State: provision.JobSucceeded}
	f.byKey[key] = job
	f.calls = append(f.calls, "provision "+customer+" "+plan)
	return job, nil
}

// lookup is instance id, or false once it is gone.
func (f *instances) lookup(id string) (fleet.Instance, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inst, ok := f.insts[id]
	if !ok {
		return fleet.Instance{}, false
	}
	return *inst, true
}

func (f *instances) Get(id string, _ time.Time) (fleet.Instance, error) {
	if inst, ok := f.lookup(id); ok {
		return inst, nil
	}
	return fleet.Instance{}, fault.New(fault.NotFound, "instance not found")
}

func (f *instances) act(what, id string, fn func(*fleet.Instance)) (provision.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inst, ok := f.insts[id]
	if !ok {
		return provision.Job{}, fmt.Errorf("no instance %s", id)
	}
	f.calls = append(f.calls, what+" "+inst.Customer)
	fn(inst)
	return provision.Job{ID: "job-" + what + "-" + id, Kind: what, InstanceID: id, State: provision.JobSucceeded}, nil
}

func (f *instances) Suspend(id string) (provision.Job, error) {
	return f.act("suspend", id, func(i *fleet.Instance) { i.Lifecycle = fleet.LifecycleSuspended })
}

func (f *instances) Resume(id string) (provision.Job, error) {
	return f.act("resume", id, func(i *fleet.Instance) { i.Lifecycle = fleet.LifecycleActive })
}

func (f *instances) Resize(id, plan string) (provision.Job, error) {
	return f.act("resize", id, func(i *fleet.Instance) { i.Plan = plan })
}

func (f *instances) Terminate(id string) (provision.Job, error) {
	job, err := f.act("terminate", id, func(*fleet.Instance) {})
	f.mu.Lock()
	delete(f.insts, id)
	f.mu.Unlock()
	return job, err
}

func (f *instances) ofCustomer(customer string) []fleet.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fleet.Instance
	for _, inst := range f.insts {
		if inst.Customer == customer {
			out = append(out, *inst)
		}
	}
	return out
}

// stripeRequest is one request the service made of Stripe.
type stripeRequest struct {
	Method, Path string
	Form         url.Values
	Idempotency  string
}

// recorder proxies to stripe-mock and keeps every request.
type recorder struct {
	mu   sync.Mutex
	reqs []stripeRequest
}

func (r *recorder) requests(path string) []stripeRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []stripeRequest
	for _, req := range r.reqs {
		if req.Path == path {
			out = append(out, req)
		}
	}
	return out
}

func startRecorder(t testing.TB, base string) (*recorder, string) {
	target, _ := url.Parse(base)
	proxy := httputil.NewSingleHostReverseProxy(target)
	rec := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, stripeRequest{r.Method, r.URL.Path, form, r.Header.Get("Idempotency-Key")})
		rec.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return rec, srv.URL
}

type harness struct {
	s      *billing.Service
	opts   billing.Options // s's
	st     *store.Store
	path   string // the store's file
	insts  *instances
	outbox *mail.FileOutbox
	stripe *recorder
	mu     sync.Mutex
	now    time.Time
}

func (h *harness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
}

// newHarness returns billing over a real store and outbox, with Stripe
// (stripe-mock behind a recording proxy) unless local.
func newHarness(t testing.TB, local bool) *harness {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "stackpro.db")
	st, err := store.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	outbox, err := mail.NewFileOutbox(filepath.Join(dir, "mail"), "StackPro <billing@stackpro.test>")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{st: st, path: path, insts: newInstances(), outbox: outbox, now: time.Now().UTC()}
	o := billing.Options{Store: st, Plans: testPlans, Currency: "usd", SuccessURL: "https://app.test/billing/success",
		CancelURL: "https://app.test/billing/canceled", PortalReturnURL: "https://app.test/billing",
		GracePeriod: 14 * 24 * time.Hour, Instances: h.insts, Fleet: h.insts, Mail: outbox, BaseURL: "https://app.test", Now: h.clock,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if local {
		// As in the default configuration: no Stripe prices.
		o.Plans = map[string]billing.Plan{}
		for name, p := range testPlans {
			o.Plans[name] = billing.Plan{MonthlyPrice: p.MonthlyPrice}
		}
	} else {
		var base string
		h.stripe, base = startRecorder(t, stripemock.Start(t))
		o.Stripe, o.WebhookSecret = billing.NewStripe("sk_test_123", base), whsec
	}
	h.s, h.opts = billing.New(o), o
	return h
}

// customer signs a customer up, with a trial ending at trialEnd.
func (h *harness) customer(t *testing.T, id string, trialEnd time.Time) {
	t.Helper()
	now := h.clock()
	err := h.st.CreateUser(accounts.User{ID: "u-" + id, Email: id + "@example.com", Role: accounts.RoleCustomer, CustomerID: id,
		CreatedAt: now, UpdatedAt: now}, "hash", accounts.Customer{ID: id, Company: "Company " + id, Plan: "starter",
		Status: "trial", TrialEndsAt: trialEnd, CreatedAt: now, UpdatedAt: now})
	if err != nil {
		t.Fatal(err)
	}
}

// settle applies every queued event and every look that is due.
func (h *harness) settle(t *testing.T) {
	t.Helper()
	for range 10 {
		if err := h.s.Settle(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func (h *harness) subscription(t *testing.T, customer string) billing.Subscription {
	t.Helper()
	sub, err := h.st.Subscription(customer)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

// event is a Stripe event as Stripe sends it: expandable fields as ids.
func event(id, typ string, created time.Time, obj map[string]any) []byte {
	raw, _ := json.Marshal(map[string]any{"id": id, "object": "event", "api_version": stripe.APIVersion,
		"created": created.Unix(), "type": typ, "livemode": false, "pending_webhooks": 1,
		"data": map[string]any{"object": obj}})
	return raw
}

func sign(payload []byte, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: whsec, Timestamp: at}).Header
}

func meta(customer, plan string) map[string]any {
	return map[string]any{billing.MetaCustomer: customer, billing.MetaPlan: plan}
}

func checkoutCompleted(customer, plan, session, sub string) map[string]any {
	return map[string]any{"id": session, "object": "checkout.session", "mode": "subscription", "status": "complete",
		"client_reference_id": customer, "customer": "cus_" + customer, "subscription": sub, "metadata": meta(customer, plan)}
}

func subscriptionObj(customer, sub, status, price string, amount int64, trialEnd time.Time) map[string]any {
	obj := map[string]any{"id": sub, "object": "subscription", "status": status, "customer": "cus_" + customer,
		"metadata": map[string]any{billing.MetaCustomer: customer},
		"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_" + sub, "quantity": 1,
			"price": map[string]any{"id": price, "unit_amount": amount, "currency": "usd",
				"recurring": map[string]any{"interval": "month", "interval_count": 1}}}}}}
	if !trialEnd.IsZero() {
		obj["trial_end"] = trialEnd.Unix()
	}
	return obj
}

func invoiceObj(customer, sub string, amount int64) map[string]any {
	return map[string]any{"id": "in_" + sub, "object": "invoice", "customer": "cus_" + customer, "subscription": sub,
		"amount_due": amount, "currency": "usd", "hosted_invoice_url": "https://invoice.stripe.test/" + sub,
		"next_payment_attempt": time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC).Unix(),
		"subscription_details": map[string]any{"metadata": map[string]any{billing.MetaCustomer: customer}}}
}

// deliver posts a signed event to the webhook, as Stripe does.
func (h *harness) deliver(t *testing.T, payload []byte) {
	t.Helper()
	if err := h.s.Webhook(payload, sign(payload, time.Now())); err != nil {
		t.Fatalf("Webhook: %v", err)
	}
}

func TestCheckoutThroughStripe(t *testing.T) {
	h := newHarness(t, false)
	trialEnd := h.clock().Add(7 * 24 * time.Hour)
	h.customer(t, "c1", trialEnd)

	url, err := h.s.Checkout(context.Background(), "c1", "business")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(url, "https://") {
		t.Errorf("checkout URL %q", url)
	}
	if _, err := h.s.Checkout(context.Background(), "c1", "business"); err != nil {
		t.Fatal(err)
	}
	customers := h.stripe.requests("/v1/customers")
	if len(customers) != 1 {
		t.Fatalf("%d customers created for two checkouts, want 1", len(customers))
	}
	if c := customers[0]; c.Form.Get("metadata[stackpro_customer]") != "c1" || c.Form.Get("email") != "c1@example.com" ||
		c.Idempotency != "stackpro-customer-c1" {
		t.Errorf("customer request %+v", c)
	}
	sessions := h.stripe.requests("/v1/checkout/sessions")
	if len(sessions) != 2 {
		t.Fatalf("%d checkout sessions, want 2", len(sessions))
	}
	want := map[string]string{"mode": "subscription", "client_reference_id": "c1", "line_items[0][price]": "price_business",
		"line_items[0][quantity]": "1", "success_url": "https://app.test/billing/success", "cancel_url": "https://app.test/billing/canceled",
		"metadata[stackpro_plan]": "business", "subscription_data[metadata][stackpro_customer]": "c1",
		"subscription_data[trial_end]": fmt.Sprint(trialEnd.Unix()), "customer": h.subscription(t, "c1").StripeCustomer}
	for k, v := range want {
		if got := sessions[0].Form.Get(k); got != v {
			t.Errorf("checkout session %s = %q, want %q", k, got, v)
		}
	}

	if _, err := h.s.Checkout(context.Background(), "c1", "gold"); !errors.Is(err, fault.ErrInvalid) {
		t.Errorf("unknown plan: %v, want Invalid", err)
	}
	portal, err := h.s.Portal(context.Background(), "c1")
	if err != nil || !strings.HasPrefix(portal, "https://") {
		t.Fatalf("Portal = %q, %v", portal, err)
	}
	if p := h.stripe.requests("/v1/billing_portal/sessions"); len(p) != 1 || p[0].Form.Get("return_url") != "https://app.test/billing" {
		t.Errorf("portal requests %+v", p)
	}
}

func TestCheckoutTrialTooShortIsPaidNow(t *testing.T) {
	h := newHarness(t, false)
	h.customer(t, "c1", h.clock().Add(24*time.Hour))
	if _, err := h.s.Checkout(context.Background(), "c1", "starter"); err != nil {
		t.Fatal(err)
	}
	if s := h.stripe.requests("/v1/checkout/sessions"); s[0].Form.Has("subscription_data[trial_end]") {
		t.Errorf("a trial ending in 24 h was passed to Stripe, which refuses one under 48 h")
	}
}

func TestWebhookRefusesBadSignatures(t *testing.T) {
	h := newHarness(t, false)
	h.customer(t, "c1", time.Time{})
	payload := event("evt_1", "checkout.session.completed", h.clock(), checkoutCompleted("c1", "starter", "cs_1", "sub_1"))
	forged := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: "whsec_other"}).Header
	tampered := bytes.Replace(payload, []byte("starter"), []byte("enterprise"), 1)
	for name, tc := range map[string]struct {
		payload []byte
		sig     string
	}{
		"unsigned":      {payload, ""},
		"forged":        {payload, forged},
		"stale":         {payload, sign(payload, time.Now().Add(-6*time.Minute))},
		"tampered body": {tampered, sign(payload, time.Now())},
		"garbage":       {payload, "t=1,v1=zz"},
	} {
		if err := h.s.Webhook(tc.payload, tc.sig); !errors.Is(err, fault.ErrInvalid) {
			t.Errorf("%s: %v, want Invalid", name, err)
		}
	}
	if _, err := h.st.BillingEventRecord("evt_1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused event was recorded: %v", err)
	}
	if q, err := h.st.QueuedBillingEvents(10); err != nil || len(q) != 0 {
		t.Errorf("%d events queued after refusals (%v)", len(q), err)
	}

	old := bytes.Replace(payload, []byte(stripe.APIVersion), []byte("2020-08-27"), 1)
	err := h.s.Webhook(old, sign(old, time.Now()))
	if !errors.Is(err, fault.ErrInvalid) || !strings.Contains(err.Error(), "2020-08-27") || !strings.Contains(err.Error(), stripe.APIVersion) {
		t.Errorf("API version mismatch: %v", err)
	}

	h.deliver(t, payload)
	h.deliver(t, payload) // Stripe redelivers
	if q, err := h.st.QueuedBillingEvents(10); err != nil || len(q) != 1 {
		t.Errorf("%d events queued for one delivered twice (%v)", len(q), err)
	}
}

func TestWebhooksOffWithLocalBilling(t *testing.T) {
	h := newHarness(t, true)
	if err := h.s.Webhook([]byte("{}"), "t=1,v1=00"); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("local billing took a webhook: %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	h := newHarness(t, false)
	h.customer(t, "c1", time.Time{})
	at := h.clock().Add(-time.Hour)
	tick := func() time.Time { at = at.Add(time.Second); return at }

	h.deliver(t, event("evt_1", "checkout.session.completed", tick(), checkoutCompleted("c1", "starter", "cs_1", "sub_1")))
	h.deliver(t, event("evt_2", "invoice.paid", tick(), invoiceObj("c1", "sub_1", 2900)))
	h.settle(t)
	sub := h.subscription(t, "c1")
	if sub.Status != billing.SubscriptionActive || sub.Plan != "starter" || sub.InstanceID == "" {
		t.Fatalf("after checkout and payment: %+v", sub)
	}
	if got := h.stripe.requests("/v1/subscriptions/sub_1"); len(got) != 1 {
		t.Errorf("the checkout's subscription was read %d times, want 1", len(got))
	}
	if c, err := h.st.Customer("c1"); err != nil || c.Status != "active" {
		t.Errorf("customer status %q (%v), want active", c.Status, err)
	}

	h.deliver(t, event("evt_3", "invoice.payment_failed", tick(), invoiceObj("c1", "sub_1", 2900)))
	h.settle(t)
	if sub := h.subscription(t, "c1"); sub.Status != billing.SubscriptionPastDue {
		t.Fatalf("after a failed payment: %s", sub.Status)
	}
	m, err := h.outbox.Latest("c1@example.com")
	if err != nil || m.Subject != "Your StackPro payment failed" || !strings.Contains(m.Text, "29.00 USD") ||
		!strings.Contains(m.Text, "https://invoice.stripe.test/sub_1") || !strings.Contains(m.Text, "3 December 2026") {
		t.Errorf("dunning email: %+v, %v", m, err)
	}

	h.deliver(t, event("evt_4", "customer.subscription.updated", tick(), subscriptionObj("c1", "sub_1", "active", "price_business", 7900, time.Time{})))
	h.settle(t)
	sub = h.subscription(t, "c1")
	inst, _ := h.insts.lookup(sub.InstanceID)
	if sub.Status != billing.SubscriptionActive || sub.Plan != "business" || inst.Plan != "business" || sub.MonthlyAmount != 7900 {
		t.Fatalf("after an upgrade: %+v, instance plan %s", sub, inst.Plan)
	}

	h.deliver(t, event("evt_5", "customer.subscription.deleted", tick(), subscriptionObj("c1", "sub_1", "canceled", "price_business", 7900, time.Time{})))
	h.settle(t)
	if inst, _ := h.insts.lookup(sub.InstanceID); inst.Lifecycle != fleet.LifecycleSuspended {
		t.Fatalf("after cancellation the instance is %s, want suspended", inst.Lifecycle)
	}
	h.advance(13 * 24 * time.Hour)
	h.settle(t)
	if _, ok := h.insts.lookup(sub.InstanceID); !ok {
		t.Fatal("terminated within the grace period")
	}
	h.advance(2 * 24 * time.Hour)
	h.settle(t)
	if _, ok := h.insts.lookup(sub.InstanceID); ok {
		t.Fatal("not terminated after the grace period")
	}
	want := []string{"provision c1 starter", "resize c1", "suspend c1", "terminate c1"}
	if fmt.Sprint(h.insts.calls) != fmt.Sprint(want) {
		t.Errorf("jobs %q, want %q", h.insts.calls, want)
	}
	sub = h.subscription(t, "c1")
	var steps []string
	for _, tr := range sub.History {
		steps = append(steps, fmt.Sprintf("%s→%s %s", tr.From, tr.To, tr.Plan))
	}
	if got := strings.Join(steps, ", "); got != "→active starter, active→past_due starter, past_due→active business, active→canceled business" {
		t.Errorf("history: %s", got)
	}
	if c, err := h.st.Customer("c1"); err != nil || c.Status != "canceled" {
		t.Errorf("customer status %q (%v), want canceled", c.Status, err)
	}
}

func TestTrialWillEndEmailsOnce(t *testing.T) {
	h := newHarness(t, false)
	h.customer(t, "c1", time.Time{})
	end := time.Date(2026, 12, 9, 12, 0, 0, 0, time.UTC)
	ev := event("evt_t", "customer.subscription.trial_will_end", h.clock(), subscriptionObj("c1", "sub_1", "trialing", "price_starter", 2900, end))
	h.deliver(t, ev)
	h.deliver(t, ev)
	h.settle(t)
	m, err := h.outbox.Latest("c1@example.com")
	if err != nil || !strings.Contains(m.Text, "9 December 2026") {
		t.Fatalf("trial email: %+v, %v", m, err)
	}
	if mails, err := h.st.BillingMails(); err != nil || len(mails) != 0 {
		t.Errorf("%d emails still owed after sending (%v)", len(mails), err)
	}
}

func TestLocalCheckoutProvisions(t *testing.T) {
	h := newHarness(t, true)
	h.customer(t, "c1", h.clock().Add(7*24*time.Hour))
	h.customer(t, "c2", time.Time{})
	plans := map[string]string{"c1": "starter", "c2": "business"}
	for _, c := range []string{"c1", "c2"} {
		url, err := h.s.Checkout(context.Background(), c, plans[c])
		if err != nil || url != "https://app.test/billing/success" {
			t.Fatalf("local checkout = %q, %v", url, err)
		}
	}
	h.settle(t)
	for c, want := range map[string]billing.SubscriptionStatus{"c1": billing.SubscriptionTrialing, "c2": billing.SubscriptionActive} {
		sub := h.subscription(t, c)
		insts := h.insts.ofCustomer(c)
		if sub.Status != want || sub.Plan != plans[c] || len(insts) != 1 || insts[0].Plan != plans[c] ||
			sub.MonthlyAmount != testPlans[plans[c]].MonthlyPrice {
			t.Errorf("%s after local checkout: %+v, instances %+v", c, sub, insts)
		}
	}
	if _, err := h.s.Checkout(context.Background(), "c2", "starter"); !errors.Is(err, fault.ErrConflict) {
		t.Errorf("second checkout of a paying customer: %v, want Conflict", err)
	}
	if _, err := h.s.Portal(context.Background(), "c2"); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("local portal: %v, want ErrNotFound", err)
	}
	m, err := h.s.Metrics(h.clock())
	if err != nil || m.MRR != 7900 || m.Active["business"] != 1 || m.Trials != 1 {
		t.Errorf("metrics %+v, %v", m, err)
	}
}

func TestOutOfOrderEventsKeepTheNewerState(t *testing.T) {
	h := newHarness(t, false)
	h.customer(t, "c1", time.Time{})
	t0 := h.clock().Add(-time.Hour)
	failed := event("evt_f", "invoice.payment_failed", t0.Add(3*time.Second), invoiceObj("c1", "sub_1", 2900))
	paid := event("evt_p", "invoice.paid", t0.Add(2*time.Second), invoiceObj("c1", "sub_1", 2900))
	upgrade := event("evt_u", "customer.subscription.updated", t0.Add(4*time.Second), subscriptionObj("c1", "sub_1", "past_due", "price_business", 7900, time.Time{}))
	downgrade := event("evt_d", "customer.subscription.updated", t0.Add(1*time.Second), subscriptionObj("c1", "sub_1", "active", "price_starter", 2900, time.Time{}))
	for _, ev := range [][]byte{upgrade, failed, paid, downgrade} {
		h.deliver(t, ev)
	}
	h.settle(t)
	sub := h.subscription(t, "c1")
	if sub.Status != billing.SubscriptionPastDue || sub.Plan != "business" {
		t.Errorf("older events overwrote newer ones: %s on %s", sub.Status, sub.Plan)
	}
	// An old subscription's late event does not touch the new one.
	h.deliver(t, event("evt_x", "customer.subscription.deleted", t0.Add(5*time.Second), subscriptionObj("c1", "sub_0", "canceled", "price_starter", 2900, time.Time{})))
	h.settle(t)
	if sub := h.subscription(t, "c1"); sub.Status != billing.SubscriptionPastDue {
		t.Errorf("another subscription's event changed the status to %s", sub.Status)
	}
	if rec, err := h.st.BillingEventRecord("evt_x"); err != nil || !strings.HasPrefix(rec.Outcome, "ignored: subscription sub_0") {
		t.Errorf("outcome %q (%v)", rec.Outcome, err)
	}
	// A second checkout (another tab) makes a second subscription: it
	// provisions nothing, and operators are told.
	h.deliver(t, event("evt_y", "checkout.session.completed", t0.Add(6*time.Second), checkoutCompleted("c1", "starter", "cs_2", "sub_2")))
	h.settle(t)
	if sub := h.subscription(t, "c1"); !strings.Contains(sub.Note, "second subscription, sub_2") || len(h.insts.ofCustomer("c1")) > 1 {
		t.Errorf("second checkout: note %q, %d instances", sub.Note, len(h.insts.ofCustomer("c1")))
	}
}
