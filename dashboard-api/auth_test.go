package dashboardapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stackpro/stackpro/controlplane/fault"
)

// Bearer tokens of two customers and an operator (fakeTokens knows them).
const (
	tokenCustomerA = "sp_customer_a"
	tokenCustomerB = "sp_customer_b"
	tokenOperator  = "sp_operator"
)

// rightPassword is the one password fakeAuth accepts.
const rightPassword = "correct horse battery staple"

// fakeAuth records what it is asked and answers like the accounts service.
type fakeAuth struct{ recorder }

// recorder keeps the calls a fake was asked, in order.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) record(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf(format, args...))
}

func (r *recorder) called() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

var testSession = Session{AccessToken: "eyJ.access", TokenType: "bearer", ExpiresIn: 900, RefreshToken: "refresh-2",
	User: Profile{ID: "u-a", Email: "ann@a.example", Role: RoleCustomer, Customer: &Customer{ID: "cus_a", Plan: "starter", Status: "trial"}}}

func (f *fakeAuth) Signup(_ context.Context, req SignupRequest, m Meta) error {
	f.record("signup %s %s from %s", req.Email, req.Plan, m.IP)
	if !strings.Contains(req.Email, "@") {
		return fault.New(fault.Invalid, "email: want an address like name@example.com")
	}
	return nil
}

func (f *fakeAuth) VerifyEmail(_ context.Context, token string, _ Meta) error {
	f.record("verify %s", token)
	if token != "verify-1" {
		return fault.New(fault.Unauthorized, "invalid or expired token")
	}
	return nil
}

func (f *fakeAuth) ResendVerification(_ context.Context, email string, _ Meta) error {
	f.record("resend %s", email)
	return nil
}

func (f *fakeAuth) Login(_ context.Context, email, password string, _ Meta) (Session, error) {
	f.record("login %s", email)
	if email == "new@a.example" {
		return Session{}, fault.New(fault.Forbidden, "email address not verified")
	}
	if password != rightPassword {
		return Session{}, fault.New(fault.Unauthorized, "invalid email or password")
	}
	return testSession, nil
}

func (f *fakeAuth) Refresh(_ context.Context, token string, _ Meta) (Session, error) {
	f.record("refresh %s", token)
	if token != "refresh-1" {
		return Session{}, fault.New(fault.Unauthorized, "refresh token already used; session revoked")
	}
	return testSession, nil
}

// Logout knows one session, refresh-1, which is customer A's.
func (f *fakeAuth) Logout(_ context.Context, p Principal, refreshToken string, _ Meta) error {
	f.record("logout %s by %s", refreshToken, p.Name)
	switch {
	case refreshToken != "refresh-1":
		return fault.New(fault.Unauthorized, "invalid or expired token")
	case p.UserID != "u-a" && p.Role != RoleAdmin:
		return fault.New(fault.Forbidden, "the session is another user's: only its user or an admin may end it")
	}
	return nil
}

func (f *fakeAuth) RequestPasswordReset(_ context.Context, email string, _ Meta) error {
	f.record("recover %s", email)
	return nil
}

func (f *fakeAuth) ResetPassword(_ context.Context, token, _ string, _ Meta) error {
	f.record("reset %s", token)
	return nil
}

func (f *fakeAuth) ChangePassword(_ context.Context, p Principal, old, _ string, _ Meta) (Session, error) {
	f.record("password %s", p.UserID)
	if old != rightPassword {
		return Session{}, fault.New(fault.Unauthorized, "invalid email or password")
	}
	return testSession, nil
}

func (f *fakeAuth) Me(_ context.Context, p Principal) (Profile, error) {
	f.record("me %s", p.UserID)
	return Profile{ID: p.UserID, Role: p.Role}, nil
}

func (f *fakeAuth) UpdateMe(_ context.Context, p Principal, patch ProfilePatch) (Profile, error) {
	company := ""
	if patch.Company != nil {
		company = *patch.Company
	}
	f.record("update %s %s", p.UserID, company)
	return Profile{ID: p.UserID, Customer: &Customer{Company: company}}, nil
}

func (f *fakeAuth) JWKS() ([]byte, error) { return []byte(`{"keys":[]}`), nil }

func (f *fakeAuth) CreateOperator(_ context.Context, req OperatorRequest, _ Meta) (Profile, error) {
	f.record("create operator %s %s", req.Email, req.Role)
	return Profile{ID: "u-o", Email: req.Email, Role: req.Role}, nil
}

var testAPIToken = APIToken{ID: "0123456789abcdef", Name: "ci", Role: RoleOperator, CreatedAt: created}

func (f *fakeAuth) CreateAPIToken(_ context.Context, name, role string, _ Meta) (string, APIToken, error) {
	f.record("create token %s %s", name, role)
	return "sp_new", testAPIToken, nil
}

func (f *fakeAuth) ListAPITokens(context.Context) ([]APIToken, error) {
	f.record("list tokens")
	return []APIToken{testAPIToken}, nil
}

func (f *fakeAuth) RevokeAPIToken(_ context.Context, id string, _ Meta) error {
	f.record("revoke token %s", id)
	if id != testAPIToken.ID {
		return fault.New(fault.NotFound, "no such token")
	}
	return nil
}

func TestAuthRoutes(t *testing.T) {
	tests := []struct {
		name, method, path, token, body string
		wantCode                        int
		wantCall                        string
	}{
		{"signup", "POST", "/api/v1/auth/signup", "",
			`{"email":"ann@a.example","password":"x","first_name":"Ann","last_name":"A","company":"A Ltd","plan":"starter"}`,
			http.StatusAccepted, "signup ann@a.example starter from 127.0.0.1"},
		{"password grant", "POST", "/api/v1/auth/token", "", `{"grant_type":"password","email":"ann@a.example","password":"` + rightPassword + `"}`,
			http.StatusOK, "login ann@a.example"},
		{"refresh grant", "POST", "/api/v1/auth/token", "", `{"grant_type":"refresh_token","refresh_token":"refresh-1"}`,
			http.StatusOK, "refresh refresh-1"},
		{"verify", "POST", "/api/v1/auth/verify", "", `{"token":"verify-1"}`, http.StatusOK, "verify verify-1"},
		{"resend", "POST", "/api/v1/auth/resend", "", `{"email":"ann@a.example"}`, http.StatusAccepted, "resend ann@a.example"},
		{"recover", "POST", "/api/v1/auth/recover", "", `{"email":"ann@a.example"}`, http.StatusAccepted, "recover ann@a.example"},
		{"reset", "POST", "/api/v1/auth/reset", "", `{"token":"reset-1","password":"new"}`, http.StatusOK, "reset reset-1"},
		{"logout", "POST", "/api/v1/auth/logout", tokenCustomerA, `{"refresh_token":"refresh-1"}`, http.StatusNoContent,
			"logout refresh-1 by ann@a.example"},
		{"logout by an admin", "POST", "/api/v1/auth/logout", goodToken, `{"refresh_token":"refresh-1"}`, http.StatusNoContent,
			"logout refresh-1 by alice"},
		{"change password", "POST", "/api/v1/auth/password", tokenCustomerA,
			`{"old_password":"` + rightPassword + `","new_password":"another good one"}`, http.StatusOK, "password u-a"},
		{"me", "GET", "/api/v1/me", tokenCustomerA, "", http.StatusOK, "me u-a"},
		{"update me", "PATCH", "/api/v1/me", tokenCustomerA, `{"company":"A Group"}`, http.StatusOK, "update u-a A Group"},
		{"create operator", "POST", "/api/v1/admin/operators", goodToken,
			`{"email":"oscar@example.com","password":"x","first_name":"O","last_name":"O","role":"operator"}`,
			http.StatusCreated, "create operator oscar@example.com operator"},
		{"create api token", "POST", "/api/v1/admin/api-tokens", goodToken, `{"name":"ci","role":"operator"}`,
			http.StatusCreated, "create token ci operator"},
		{"list api tokens", "GET", "/api/v1/admin/api-tokens", goodToken, "", http.StatusOK, "list tokens"},
		{"revoke api token", "DELETE", "/api/v1/admin/api-tokens/" + testAPIToken.ID, goodToken, "", http.StatusNoContent,
			"revoke token " + testAPIToken.ID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			auth := &fakeAuth{}
			ta := newTestAPI(t, func(o *Options) { o.Auth = auth })
			res := ta.send(t, tt.method, tt.path, tt.token, tt.body)
			if res.code != tt.wantCode {
				t.Fatalf("%s %s = %d, want %d (body %s)", tt.method, tt.path, res.code, tt.wantCode, res.body)
			}
			if got := auth.called(); !slices.Equal(got, []string{tt.wantCall}) {
				t.Errorf("calls = %q, want %q", got, tt.wantCall)
			}
			if tt.path == "/api/v1/auth/token" {
				var s Session
				decode(t, res, "application/json", &s)
				if !reflect.DeepEqual(s, testSession) || res.header.Get("Cache-Control") != "no-store" {
					t.Errorf("session %+v (Cache-Control %q), want %+v, no-store", s, res.header.Get("Cache-Control"), testSession)
				}
			}
		})
	}
}

// An operator's API token has no user: /me answers its name and role
// without asking the accounts service.
func TestMeAsAPIToken(t *testing.T) {
	auth := &fakeAuth{}
	ta := newTestAPI(t, func(o *Options) { o.Auth = auth })
	res := ta.send(t, "GET", "/api/v1/me", tokenOperator, "")
	if res.code != http.StatusOK {
		t.Fatalf("GET /api/v1/me = %d, want 200 (body %s)", res.code, res.body)
	}
	var got map[string]any
	decode(t, res, "application/json", &got)
	if want := map[string]any{"name": "oscar", "role": RoleOperator}; !reflect.DeepEqual(got, want) {
		t.Errorf("GET /api/v1/me = %v, want %v", got, want)
	}
	if calls := auth.called(); len(calls) != 0 {
		t.Errorf("calls = %q, want none", calls)
	}
}

func TestAuthErrors(t *testing.T) {
	tests := []struct {
		name, path, token, body string
		wantCode                int
		wantDetail              string
	}{
		{"invalid signup", "/api/v1/auth/signup", "", `{"email":"nope","password":"x"}`,
			http.StatusUnprocessableEntity, "email: want an address like name@example.com"},
		{"wrong password", "/api/v1/auth/token", "", `{"grant_type":"password","email":"ann@a.example","password":"guess"}`,
			http.StatusUnauthorized, "invalid email or password"},
		{"unverified", "/api/v1/auth/token", "", `{"grant_type":"password","email":"new@a.example","password":"x"}`,
			http.StatusForbidden, "email address not verified"},
		{"reused refresh token", "/api/v1/auth/token", "", `{"grant_type":"refresh_token","refresh_token":"refresh-0"}`,
			http.StatusUnauthorized, "refresh token already used; session revoked"},
		{"unknown grant", "/api/v1/auth/token", "", `{"grant_type":"client_credentials"}`,
			http.StatusBadRequest, `grant_type must be "password" or "refresh_token"`},
		{"malformed", "/api/v1/auth/signup", "", `{"email":`, http.StatusBadRequest, "malformed body: unexpected EOF"},
		{"unknown field", "/api/v1/auth/recover", "", `{"email":"a@b.c","admin":true}`,
			http.StatusBadRequest, `malformed body: json: unknown field "admin"`},
		{"too large", "/api/v1/auth/signup", "", `{"email":"` + strings.Repeat("a", maxAuthBody) + `"}`,
			http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", maxAuthBody)},
		{"bad verification token", "/api/v1/auth/verify", "", `{"token":"forged"}`, http.StatusUnauthorized, "invalid or expired token"},
		{"logout needs a token", "/api/v1/auth/logout", "", "", http.StatusUnauthorized, "missing bearer token"},
		{"logout of another's session", "/api/v1/auth/logout", tokenCustomerB, `{"refresh_token":"refresh-1"}`,
			http.StatusForbidden, "the session is another user's: only its user or an admin may end it"},
		{"logout naming someone else", "/api/v1/auth/logout", tokenCustomerB, `{"refresh_token":"refresh-1","user_id":"u-a"}`,
			http.StatusBadRequest, `malformed body: json: unknown field "user_id"`},
		{"duplicate key", "/api/v1/auth/recover", "", `{"email":"a@b.c","email":"d@e.f"}`,
			http.StatusBadRequest, `malformed body: duplicate key "email"`},
		{"operator may not mint tokens", "/api/v1/admin/api-tokens", tokenOperator, `{"name":"x","role":"admin"}`,
			http.StatusForbidden, "this needs the admin role"},
		{"wrong old password", "/api/v1/auth/password", tokenCustomerA, `{"old_password":"guess","new_password":"x"}`,
			http.StatusUnauthorized, "invalid email or password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAPI(t, nil)
			wantProblem(t, ta.send(t, http.MethodPost, tt.path, tt.token, tt.body), tt.wantCode, tt.wantDetail)
		})
	}
}

func TestJWKS(t *testing.T) {
	ta := newTestAPI(t, nil)
	res := ta.do(t, http.MethodGet, "/.well-known/jwks.json", "")
	if res.code != http.StatusOK || res.header.Get("Content-Type") != "application/jwk-set+json" || string(res.body) != `{"keys":[]}` {
		t.Errorf("GET jwks = %d %q %s", res.code, res.header.Get("Content-Type"), res.body)
	}
}

// Brute force: past the per-account limit even the right password gets
// 429, from any address; other accounts are not held up until the
// address's own limit.
func TestLoginRateLimit(t *testing.T) {
	auth := &fakeAuth{}
	ta := newTestAPI(t, func(o *Options) {
		o.Auth = auth
		o.Limits = AuthLimits{PerIP: Limit{6, time.Hour}, PerAccount: Limit{3, time.Hour}}
	})
	login := func(email, password string) response {
		return ta.send(t, http.MethodPost, "/api/v1/auth/token", "",
			fmt.Sprintf(`{"grant_type":"password","email":%q,"password":%q}`, email, password))
	}
	for i := range 3 {
		if res := login("ann@a.example", "guess"); res.code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i+1, res.code)
		}
	}
	res := login("ANN@a.example ", rightPassword)
	wantProblem(t, res, http.StatusTooManyRequests, "too many attempts; try again later")
	if res.header.Get("Retry-After") != "1200" {
		t.Errorf("Retry-After = %q, want 1200 (an hour / 3)", res.header.Get("Retry-After"))
	}
	if got := len(auth.called()); got != 3 {
		t.Errorf("%d logins reached the service, want 3", got)
	}
	// The address has used 4 of its 6.
	for _, email := range []string{"bob@b.example", "cy@c.example"} {
		if res := login(email, rightPassword); res.code != http.StatusOK {
			t.Errorf("login of %s: %d, want 200", email, res.code)
		}
	}
	wantProblem(t, login("dan@d.example", rightPassword), http.StatusTooManyRequests, "too many attempts; try again later")
}

// TestTenantIsolation walks every route the router has, not a list kept by
// hand, as customer B and asks for customer A's instance and job: no
// answer may carry A's data. Customers get 403 on operator routes and
// /metrics; an operator gets 403 on admin routes (bar the billing
// metrics) and on billing, which is a customer's own.
func TestTenantIsolation(t *testing.T) {
	ta := newTestAPI(t, nil)
	routes, ok := ta.handler.(chi.Routes)
	if !ok {
		t.Fatal("Handler is not a chi router")
	}
	customerRoutes := []string{"GET /api/v1/plans", "GET /api/v1/openapi.json", "GET /api/v1/instances", "GET /api/v1/instances/{id}",
		"GET /api/v1/instances/{id}/metrics", "GET /api/v1/instances/{id}/jobs", "GET /api/v1/instances/{id}/timeline",
		"GET /api/v1/customers/{id}/status", "GET /api/v1/jobs/{id}",
		"GET /api/v1/me", "PATCH /api/v1/me", "POST /api/v1/auth/logout", "POST /api/v1/auth/password"}
	billingRoutes := []string{"GET /api/v1/billing", "POST /api/v1/billing/checkout", "POST /api/v1/billing/portal"}
	walked := 0
	err := chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		walked++
		name := method + " " + route
		path := strings.NewReplacer("{id}", "i-a", "/customers/{id}", "/customers/cus_a", "*", "app.js").Replace(route)
		if strings.HasPrefix(route, "/api/v1/jobs/") {
			path = "/api/v1/jobs/" + fakeJob.ID // a job on i-a
		}
		if route == "/api/v1/events" {
			return nil // a stream: TestEventsTenantIsolation
		}
		body := "{}"
		asB := ta.send(t, method, path, tokenCustomerB, body)
		if asB.code/100 == 2 && (strings.Contains(string(asB.body), "i-a") || strings.Contains(string(asB.body), "cus_a")) {
			t.Errorf("%s as customer B answered %d with A's data: %s", name, asB.code, asB.body)
		}
		if strings.HasPrefix(route, "/api/v1/") && !strings.HasPrefix(route, "/api/v1/auth/") || route == "/api/v1/auth/logout" || route == "/api/v1/auth/password" || route == "/metrics" {
			customerRoute := slices.Contains(customerRoutes, name) || slices.Contains(billingRoutes, name)
			if !customerRoute && asB.code != http.StatusForbidden {
				t.Errorf("%s as a customer: %d, want 403", name, asB.code)
			}
			notForOperators := strings.HasPrefix(route, "/api/v1/admin/") && name != "GET /api/v1/admin/billing/metrics" ||
				slices.Contains(billingRoutes, name)
			if op := ta.send(t, method, path, tokenOperator, body); (op.code == http.StatusForbidden) != notForOperators {
				t.Errorf("%s as an operator: %d", name, op.code)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if walked < 20 {
		t.Errorf("walked %d routes; the walk missed some", walked)
	}
	// Customer A does see their own, and only that.
	var list struct{ Instances []struct{ ID string } }
	if err := json.Unmarshal(ta.do(t, http.MethodGet, "/api/v1/instances", tokenCustomerA).body, &list); err != nil ||
		len(list.Instances) != 1 || list.Instances[0].ID != "i-a" {
		t.Errorf("customer A's instances: %+v (%v), want only i-a", list.Instances, err)
	}
	if res := ta.do(t, http.MethodGet, "/api/v1/jobs/"+fakeJob.ID, tokenCustomerA); res.code != http.StatusOK {
		t.Errorf("customer A's job: %d, want 200", res.code)
	}
}
