package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stackpro/stackpro/controlplane/billing"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/internal/stripemock"
)

const testWebhookSecret = "whsec_e2e_secret"

// stripeEvent is a signed Stripe event as Stripe posts it.
func stripeEvent(id, typ string, obj map[string]any) ([]byte, string) {
	payload, _ := json.Marshal(map[string]any{"id": id, "object": "event", "api_version": stripe.APIVersion,
		"created": time.Now().Unix(), "type": typ, "data": map[string]any{"object": obj}})
	return payload, webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: testWebhookSecret}).Header
}

func postWebhook(t *testing.T, base string, payload []byte, sig string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/stripe", bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/json; charset=utf-8") // as Stripe sends it
	req.Header.Set("Stripe-Signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// signUp signs a customer up, verifies the address from the outbox and
// logs in; it returns the access token and the customer's id.
func signUp(t *testing.T, base, dataDir, email string) (string, string) {
	t.Helper()
	const password = "a long and unusual passphrase"
	signup := fmt.Sprintf(`{"email":%q,"password":%q,"first_name":"Bo","last_name":"Berg","company":"Berg AB","plan":"starter"}`, email, password)
	if code := call(t, base, "POST", "/api/v1/auth/signup", "", signup, nil); code != http.StatusAccepted {
		t.Fatalf("signup: %d", code)
	}
	outbox, err := mail.NewFileOutbox(filepath.Join(dataDir, "mail"), "test@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if code := call(t, base, "POST", "/api/v1/auth/verify", "", `{"token":"`+linkToken(t, outbox, email)+`"}`, nil); code != http.StatusOK {
		t.Fatalf("verify: %d", code)
	}
	var s session
	login := fmt.Sprintf(`{"grant_type":"password","email":%q,"password":%q}`, email, password)
	if code := call(t, base, "POST", "/api/v1/auth/token", "", login, &s); code != http.StatusOK {
		t.Fatalf("login: %d", code)
	}
	var me struct{ Customer struct{ ID string } }
	call(t, base, "GET", "/api/v1/me", s.AccessToken, "", &me)
	return s.AccessToken, me.Customer.ID
}

// TestBillingEndToEnd runs the real control plane against stripe-mock: a
// customer checks out, Stripe's signed webhooks provision a real instance,
// an upgrade resizes it, a cancellation suspends it and, after the grace
// period, terminates it. Forged webhooks change nothing.
func TestBillingEndToEnd(t *testing.T) {
	t.Parallel()
	stripeURL := stripemock.Start(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	t.Cleanup(func() { destroyInstances(t, data) })
	config := fmt.Sprintf(`
plans:
  starter: {stack: starter, instance_type: t3.small, price_id: price_e2e_starter, monthly_price: 2900}
  business: {stack: starter, instance_type: t3.medium, price_id: price_e2e_business, monthly_price: 7900}
  enterprise: {stack: starter, instance_type: t3.large, price_id: price_e2e_enterprise, monthly_price: 19900}
billing:
  provider: stripe
  secret_key: env:E2E_STRIPE_KEY
  webhook_secret: env:E2E_STRIPE_WEBHOOK_SECRET
  api_base: %s
  grace_period: 2s
`, stripeURL)
	cfgPath := filepath.Join(dir, "stackpro.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := startControlPlane(t, data, proctest.FreeAddr(t), proctest.FreeAddr(t), 0, "--config="+cfgPath,
		"E2E_STRIPE_KEY=sk_test_123", "E2E_STRIPE_WEBHOOK_SECRET="+testWebhookSecret)
	base := "http://" + cp.httpAddr
	var offer struct {
		Plans []struct {
			Name           string
			MonthlyPrice   int64  `json:"monthly_price"`
			BackupSchedule string `json:"backup_schedule"`
		}
	}
	if code := call(t, base, "GET", "/api/v1/plans", "", "", &offer); code != http.StatusOK || len(offer.Plans) != 3 ||
		offer.Plans[0].Name != "starter" || offer.Plans[0].MonthlyPrice != 2900 || offer.Plans[2].Name != "enterprise" ||
		offer.Plans[0].BackupSchedule != "@daily" {
		t.Errorf("plans on offer: %d %+v", code, offer)
	}
	token, customer := signUp(t, base, data, "bo@berg.example")

	var checkout struct{ URL string }
	if code := call(t, base, "POST", "/api/v1/billing/checkout", token, `{"plan":"starter"}`, &checkout); code != http.StatusOK ||
		!strings.HasPrefix(checkout.URL, "https://") {
		t.Fatalf("checkout: %d %+v", code, checkout)
	}
	var sub billing.Subscription
	if code := call(t, base, "GET", "/api/v1/billing", token, "", &sub); code != http.StatusOK || !strings.HasPrefix(sub.StripeCustomer, "cus_") {
		t.Fatalf("subscription after checkout: %d %+v", code, sub)
	}

	meta := map[string]any{"stackpro_customer": customer, "stackpro_plan": "starter"}
	completed, sig := stripeEvent("evt_e2e_1", "checkout.session.completed", map[string]any{"id": "cs_e2e", "object": "checkout.session",
		"mode": "subscription", "client_reference_id": customer, "customer": sub.StripeCustomer, "subscription": "sub_e2e", "metadata": meta})
	forged := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: completed, Secret: "whsec_guess"}).Header
	if code := postWebhook(t, base, completed, forged); code != http.StatusBadRequest {
		t.Fatalf("forged webhook: %d, want 400", code)
	}
	// Queued events are applied in order: once an event sent after the
	// forged one has been (as ignored: nothing uses its type), so would the
	// forged one have been.
	marker, markerSig := stripeEvent("evt_e2e_marker", "invoice.upcoming", map[string]any{"id": "in_e2e", "object": "invoice"})
	if code := postWebhook(t, base, marker, markerSig); code != http.StatusOK {
		t.Fatalf("marker webhook: %d", code)
	}
	ignored := regexp.MustCompile(`stackpro_billing_events_applied_total\{outcome="ignored"\} (\d+)`)
	proctest.Until(t, "the marker event to be applied", func() bool {
		m := ignored.FindStringSubmatch(cp.get("/metrics"))
		return m != nil && m[1] != "0"
	})
	if code := call(t, base, "GET", "/api/v1/billing", token, "", &sub); code != http.StatusOK || sub.InstanceID != "" || sub.Status != "" {
		t.Fatalf("a forged webhook changed the subscription: %+v", sub)
	}
	for range 2 { // Stripe delivers at least once
		if code := postWebhook(t, base, completed, sig); code != http.StatusOK {
			t.Fatalf("webhook: %d", code)
		}
	}

	// The checkout provisions the customer's instance, and only one.
	var inst fleet.Instance
	proctest.Until(t, "the customer's instance to be active and healthy", func() bool {
		var list struct{ Instances []fleet.Instance }
		call(t, base, "GET", "/api/v1/instances", token, "", &list)
		if len(list.Instances) > 1 {
			t.Fatalf("%d instances for one checkout", len(list.Instances))
		}
		if len(list.Instances) == 1 {
			inst = list.Instances[0]
		}
		return inst.Lifecycle == fleet.LifecycleActive && stackHealthy(inst, 1)
	})
	call(t, base, "GET", "/api/v1/billing", token, "", &sub)
	if sub.Status != billing.SubscriptionActive || sub.Plan != "starter" || sub.InstanceID != inst.ID {
		t.Errorf("subscription once provisioned: %+v", sub)
	}

	send := func(id, typ, status, price string) {
		payload, sig := stripeEvent(id, typ, map[string]any{"id": "sub_e2e", "object": "subscription", "status": status,
			"customer": sub.StripeCustomer, "metadata": meta, "items": map[string]any{"object": "list", "data": []any{
				map[string]any{"id": "si_e2e", "quantity": 1, "price": map[string]any{"id": price, "unit_amount": 7900,
					"currency": "usd", "recurring": map[string]any{"interval": "month", "interval_count": 1}}}}}})
		if code := postWebhook(t, base, payload, sig); code != http.StatusOK {
			t.Fatalf("%s webhook: %d", typ, code)
		}
	}
	send("evt_e2e_2", "customer.subscription.updated", "active", "price_e2e_business")
	proctest.Until(t, "the upgrade to resize the instance", func() bool {
		var now fleet.Instance // omitempty fields must not linger from an earlier answer
		call(t, base, "GET", "/api/v1/instances/"+inst.ID, token, "", &now)
		return now.Plan == "business" && now.InstanceType == "t3.medium" && now.Job == ""
	})

	var metrics billing.Metrics
	if code := call(t, base, "GET", "/api/v1/admin/billing/metrics", cp.token(), "", &metrics); code != http.StatusOK ||
		metrics.MRR != 7900 || metrics.Active["business"] != 1 {
		t.Errorf("billing metrics: %d %+v", code, metrics)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+cp.token())
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Error(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Contains(body, []byte(`stackpro_billing_mrr{currency="usd"} 79`)) ||
			!bytes.Contains(body, []byte(`stackpro_billing_webhook_events_total{outcome="duplicate"} 1`)) {
			t.Errorf("/metrics lacks the billing figures:\n%s", body)
		}
	}

	// Cancellation suspends at once and terminates after the grace period.
	send("evt_e2e_3", "customer.subscription.deleted", "canceled", "price_e2e_business")
	var lifecycles []fleet.Lifecycle
	proctest.Until(t, "the canceled subscription's instance to be terminated", func() bool {
		var list struct{ Instances []fleet.Instance }
		call(t, base, "GET", "/api/v1/instances", token, "", &list)
		if len(list.Instances) == 0 {
			return true
		}
		if l := list.Instances[0].Lifecycle; !slices.Contains(lifecycles, l) {
			lifecycles = append(lifecycles, l)
		}
		return false
	})
	if !slices.Contains(lifecycles, fleet.LifecycleSuspended) {
		t.Errorf("the instance went %v: never suspended before terminated", lifecycles)
	}
	call(t, base, "GET", "/api/v1/billing", token, "", &sub)
	var me struct{ Customer struct{ Status, Plan string } }
	call(t, base, "GET", "/api/v1/me", token, "", &me)
	if sub.Status != billing.SubscriptionCanceled || me.Customer.Status != "canceled" || me.Customer.Plan != "business" || len(sub.History) != 3 {
		t.Errorf("after cancellation: %+v, customer status %q", sub, me.Customer.Status)
	}
}
