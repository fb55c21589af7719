package dashboardapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/go-chi/chi/v5"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"

	"github.com/stackpro/stackpro/controlplane/fault"
)

// loadOpenAPI loads the embedded document and checks it is valid OpenAPI 3.1.
func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openapiDoc)
	if err != nil {
		t.Fatalf("loading openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi.json is OpenAPI %s, want 3.1", doc.OpenAPI)
	}
	return doc
}

// docPath is the document's path of a chi route pattern: chi's trailing
// wildcard is a {path} parameter in the document.
func docPath(pattern string) string {
	if p, ok := strings.CutSuffix(pattern, "/*"); ok {
		return p + "/{path}"
	}
	return pattern
}

// routesOf is every "METHOD /path" h serves, in the document's spelling.
// A route served for any method (chi's Handle: the console's files) is
// documented as a GET: its handler answers the others 405 itself.
func routesOf(t *testing.T, h http.Handler) map[string]bool {
	t.Helper()
	routes, ok := h.(chi.Routes)
	if !ok {
		t.Fatal("Handler is not a chi router")
	}
	methods := map[string][]string{}
	err := chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		methods[docPath(route)] = append(methods[docPath(route)], method)
		return nil
	})
	if err != nil {
		t.Fatalf("chi.Walk: %v", err)
	}
	anyMethod := []string{"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
	out := map[string]bool{}
	for path, ms := range methods {
		if !slices.ContainsFunc(anyMethod, func(m string) bool { return !slices.Contains(ms, m) }) {
			ms = []string{http.MethodGet}
		}
		for _, m := range ms {
			out[m+" "+path] = true
		}
	}
	return out
}

// problemExceptions are the error answers that are not problem documents.
var problemExceptions = map[string]bool{
	"GET /readyz 503": true, // the readiness document, with the failing check
}

func TestOpenAPIDocument(t *testing.T) {
	doc := loadOpenAPI(t)
	code := routesOf(t, newTestAPI(t, nil).handler)
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			name := method + " " + path
			documented[name] = true
			for status, res := range op.Responses.Map() {
				if status[0] != '4' && status[0] != '5' || problemExceptions[name+" "+status] {
					continue
				}
				if res.Value.Content.Get("application/problem+json") == nil || len(res.Value.Content) != 1 {
					t.Errorf("%s: the %s answer is not only a problem document", name, status)
				}
			}
		}
	}
	for _, route := range slices.Sorted(maps.Keys(code)) {
		if !documented[route] {
			t.Errorf("%s is served but not in openapi.json", route)
		}
	}
	for _, route := range slices.Sorted(maps.Keys(documented)) {
		if !code[route] {
			t.Errorf("%s is in openapi.json but not served", route)
		}
	}
}

// The document's enums of commands and target states are the code's.
func TestOpenAPIEnums(t *testing.T) {
	doc := loadOpenAPI(t)
	enum := func(schema string) []string {
		var out []string
		for _, v := range doc.Components.Schemas[schema].Value.Enum {
			out = append(out, fmt.Sprint(v))
		}
		return out
	}
	if got := enum("Command"); !slices.Equal(got, protocol.OperatorCommands) {
		t.Errorf("Command enum = %v, want %v", got, protocol.OperatorCommands)
	}
	var states []string
	for _, s := range rollout.TargetStates {
		states = append(states, string(s))
	}
	if got := enum("TargetState"); !slices.Equal(got, states) {
		t.Errorf("TargetState enum = %v, want %v", got, states)
	}
}

// apiCall is one request of TestResponsesMatchOpenAPI and the status it
// must get.
type apiCall struct {
	name, method, path, token, body string
	header                          map[string]string
	want                            int
	// offContract marks a request that breaks the document on purpose
	// (no token, a malformed body): only its answer is checked.
	offContract bool
}

// apiCalls reach every route: each success, and the errors a client meets.
var apiCalls = []apiCall{
	{name: "healthz", method: "GET", path: "/healthz", want: 200},
	{name: "readyz", method: "GET", path: "/readyz", want: 200},
	{name: "jwks", method: "GET", path: "/.well-known/jwks.json", want: 200},
	{name: "stripe webhook", method: "POST", path: "/webhooks/stripe", body: `{"id":"evt_1","type":"invoice.paid"}`,
		header: map[string]string{"Stripe-Signature": goodSignature}, want: 200},
	{name: "stripe webhook forged", method: "POST", path: "/webhooks/stripe", body: `{"id":"evt_1"}`,
		header: map[string]string{"Stripe-Signature": "t=1,v1=forged"}, want: 400},
	{name: "prometheus", method: "GET", path: "/metrics", token: tokenOperator, want: 200},
	{name: "prometheus as a customer", method: "GET", path: "/metrics", token: tokenCustomerA, want: 403},
	{name: "prometheus without a token", method: "GET", path: "/metrics", want: 401, offContract: true},
	{name: "openapi", method: "GET", path: "/api/v1/openapi.json", want: 200},
	{name: "console", method: "GET", path: "/", want: 200},
	{name: "console asset", method: "GET", path: "/console/api.js", want: 200},
	{name: "console asset unknown", method: "GET", path: "/console/nope.js", want: 404},

	{name: "signup", method: "POST", path: "/api/v1/auth/signup", want: 202,
		body: `{"email":"ann@a.example","password":"x","first_name":"Ann","last_name":"A","company":"A Ltd","plan":"starter"}`},
	{name: "signup refused", method: "POST", path: "/api/v1/auth/signup", body: `{"email":"nope","password":"x"}`, want: 422, offContract: true},
	{name: "signup malformed", method: "POST", path: "/api/v1/auth/signup", body: `{"email":`, want: 400, offContract: true},
	{name: "login", method: "POST", path: "/api/v1/auth/token", want: 200,
		body: `{"grant_type":"password","email":"ann@a.example","password":"` + rightPassword + `"}`},
	{name: "refresh", method: "POST", path: "/api/v1/auth/token", body: `{"grant_type":"refresh_token","refresh_token":"refresh-1"}`, want: 200},
	{name: "login wrong password", method: "POST", path: "/api/v1/auth/token", want: 401,
		body: `{"grant_type":"password","email":"ann@a.example","password":"guess"}`},
	{name: "login unverified", method: "POST", path: "/api/v1/auth/token", want: 403,
		body: `{"grant_type":"password","email":"new@a.example","password":"x"}`},
	{name: "unknown grant", method: "POST", path: "/api/v1/auth/token", body: `{"grant_type":"client_credentials"}`, want: 400, offContract: true},
	{name: "verify", method: "POST", path: "/api/v1/auth/verify", body: `{"token":"verify-1"}`, want: 200},
	{name: "verify forged", method: "POST", path: "/api/v1/auth/verify", body: `{"token":"forged"}`, want: 401},
	{name: "resend", method: "POST", path: "/api/v1/auth/resend", body: `{"email":"ann@a.example"}`, want: 202},
	{name: "recover", method: "POST", path: "/api/v1/auth/recover", body: `{"email":"ann@a.example"}`, want: 202},
	{name: "recover unknown field", method: "POST", path: "/api/v1/auth/recover", body: `{"email":"a@b.c","admin":true}`, want: 400, offContract: true},
	{name: "reset", method: "POST", path: "/api/v1/auth/reset", body: `{"token":"reset-1","password":"new"}`, want: 200},
	{name: "logout", method: "POST", path: "/api/v1/auth/logout", token: tokenCustomerA, body: `{"refresh_token":"refresh-1"}`, want: 204},
	{name: "logout without a token", method: "POST", path: "/api/v1/auth/logout", body: `{"refresh_token":"refresh-1"}`, want: 401, offContract: true},
	{name: "logout of another's session", method: "POST", path: "/api/v1/auth/logout", token: tokenCustomerB, body: `{"refresh_token":"refresh-1"}`, want: 403},
	{name: "change password", method: "POST", path: "/api/v1/auth/password", token: tokenCustomerA, want: 200,
		body: `{"old_password":"` + rightPassword + `","new_password":"another good one"}`},
	{name: "change password wrong", method: "POST", path: "/api/v1/auth/password", token: tokenCustomerA, want: 401,
		body: `{"old_password":"guess","new_password":"x"}`},
	{name: "me", method: "GET", path: "/api/v1/me", token: tokenCustomerA, want: 200},
	{name: "me as an API token", method: "GET", path: "/api/v1/me", token: tokenOperator, want: 200},
	{name: "me with a broken token store", method: "GET", path: "/api/v1/me", token: "sp_broken", want: 500},
	{name: "update me", method: "PATCH", path: "/api/v1/me", token: tokenCustomerA, body: `{"company":"A Group","last_name":null}`, want: 200},
	{name: "update me unknown field", method: "PATCH", path: "/api/v1/me", token: tokenCustomerA, body: `{"role":"admin"}`, want: 400, offContract: true},
	{name: "plans", method: "GET", path: "/api/v1/plans", want: 200},

	{name: "instances", method: "GET", path: "/api/v1/instances", token: goodToken, want: 200},
	{name: "instances of a customer", method: "GET", path: "/api/v1/instances", token: tokenCustomerA, want: 200},
	{name: "instances without a token", method: "GET", path: "/api/v1/instances", want: 401, offContract: true},
	{name: "instances with a wrong token", method: "GET", path: "/api/v1/instances", token: "sp_wrong", want: 401},
	{name: "instance", method: "GET", path: "/api/v1/instances/i-a", token: goodToken, want: 200},
	{name: "instance without metrics", method: "GET", path: "/api/v1/instances/i-b", token: goodToken, want: 200},
	{name: "instance unknown", method: "GET", path: "/api/v1/instances/i-nope", token: goodToken, want: 404},
	{name: "instance of another customer", method: "GET", path: "/api/v1/instances/i-a", token: tokenCustomerB, want: 404},
	{name: "provision", method: "POST", path: "/api/v1/instances", token: goodToken, body: `{"customer":"acme","plan":"starter","subdomain":"shop"}`, want: 202},
	{name: "provision busy", method: "POST", path: "/api/v1/instances", token: goodToken, body: `{"customer":"busy","plan":"starter"}`, want: 409},
	{name: "provision unknown plan", method: "POST", path: "/api/v1/instances", token: goodToken, body: `{"customer":"acme","plan":"gold"}`, want: 422},
	{name: "provision malformed", method: "POST", path: "/api/v1/instances", token: goodToken, body: `{"customer":`, want: 400, offContract: true},
	{name: "provision duplicate key", method: "POST", path: "/api/v1/instances", token: goodToken, body: `{"customer":"acme","plan":"starter","plan":"gold"}`,
		want: 400, offContract: true},
	{name: "provision not JSON", method: "POST", path: "/api/v1/instances", token: goodToken, body: `customer=acme&plan=starter`,
		header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, want: 415, offContract: true},
	{name: "provision as a customer", method: "POST", path: "/api/v1/instances", token: tokenCustomerA, body: `{"customer":"acme","plan":"starter"}`, want: 403},
	{name: "terminate", method: "DELETE", path: "/api/v1/instances/i-a", token: goodToken, want: 202},
	{name: "terminate unknown", method: "DELETE", path: "/api/v1/instances/i-nope", token: goodToken, want: 404},
	{name: "suspend", method: "POST", path: "/api/v1/instances/i-a/suspend", token: tokenOperator, want: 202},
	{name: "suspend busy", method: "POST", path: "/api/v1/instances/i-b/suspend", token: tokenOperator, want: 409},
	{name: "resume", method: "POST", path: "/api/v1/instances/i-a/resume", token: tokenOperator, want: 202},
	{name: "resize", method: "POST", path: "/api/v1/instances/i-a/resize", token: tokenOperator, body: `{"plan":"pro"}`, want: 202},
	{name: "resize unknown plan", method: "POST", path: "/api/v1/instances/i-a/resize", token: tokenOperator, body: `{"plan":"gold"}`, want: 422},
	{name: "resize without a body", method: "POST", path: "/api/v1/instances/i-a/resize", token: tokenOperator, want: 415, offContract: true},
	{name: "resize with an empty body", method: "POST", path: "/api/v1/instances/i-a/resize", token: tokenOperator,
		header: map[string]string{"Content-Type": "application/json"}, want: 400, offContract: true},
	{name: "set target", method: "PUT", path: "/api/v1/instances/i-a/target", token: tokenOperator,
		body: `{"compose":"services: {}\n","env":{"A":"1"},"files":{"conf/x.txt":"x"}}`, want: 200},
	{name: "set target refused", method: "PUT", path: "/api/v1/instances/i-a/target", token: tokenOperator, body: `{"compose":""}`, want: 422},
	{name: "set target unknown field", method: "PUT", path: "/api/v1/instances/i-a/target", token: tokenOperator, body: `{"compose":"x","image":"y"}`, want: 400, offContract: true},
	{name: "target", method: "GET", path: "/api/v1/instances/i-a/target", token: tokenOperator, want: 200},
	{name: "target none yet", method: "GET", path: "/api/v1/instances/i-b/target", token: tokenOperator, want: 404},
	{name: "target as a customer", method: "GET", path: "/api/v1/instances/i-a/target", token: tokenCustomerA, want: 403},
	{name: "command", method: "POST", path: "/api/v1/instances/i-a/commands", token: tokenOperator, body: `{"name":"ping","args":{}}`, want: 200},
	{name: "command unreachable", method: "POST", path: "/api/v1/instances/i-b/commands", token: tokenOperator, body: `{"name":"ping"}`, want: 503},
	{name: "command without a name", method: "POST", path: "/api/v1/instances/i-a/commands", token: tokenOperator, body: `{}`, want: 400, offContract: true},
	{name: "command unknown instance", method: "POST", path: "/api/v1/instances/i-nope/commands", token: tokenOperator, body: `{"name":"ping"}`, want: 404},
	{name: "command not in the catalog", method: "POST", path: "/api/v1/instances/i-a/commands", token: tokenOperator, body: `{"name":"stack.stop"}`, want: 422, offContract: true},
	{name: "command of the control plane", method: "POST", path: "/api/v1/instances/i-a/commands", token: tokenOperator, body: `{"name":"command.result"}`, want: 422, offContract: true},
	{name: "set tags", method: "PUT", path: "/api/v1/instances/i-a/tags", token: tokenOperator, body: `{"tags":{"ring":"canary","team":"eu-1"}}`, want: 200},
	{name: "set tags refused", method: "PUT", path: "/api/v1/instances/i-a/tags", token: tokenOperator, body: `{"tags":{"Ring":"x"}}`, want: 422, offContract: true},
	{name: "set tags too long", method: "PUT", path: "/api/v1/instances/i-a/tags", token: tokenOperator,
		body: `{"tags":{"note":"` + strings.Repeat("é", 128) + `"}}`, want: 422}, // 128 characters, 256 bytes
	{name: "set tags without tags", method: "PUT", path: "/api/v1/instances/i-a/tags", token: tokenOperator, body: `{}`, want: 400, offContract: true},
	{name: "set tags unknown instance", method: "PUT", path: "/api/v1/instances/i-nope/tags", token: tokenOperator, body: `{"tags":{}}`, want: 404},
	{name: "set tags as a customer", method: "PUT", path: "/api/v1/instances/i-a/tags", token: tokenCustomerA, body: `{"tags":{}}`, want: 403},
	{name: "start run", method: "POST", path: "/api/v1/runs", token: tokenOperator, want: 201,
		body: `{"command":"stack.restart","args":{"service":"crm"},"select":{"ids":["i-a"],"tags":{"ring":"canary"}},"max_concurrency":"10%","max_errors":"0","timeout":"2m"}`},
	{name: "start run with defaults", method: "POST", path: "/api/v1/runs", token: goodToken, body: `{"command":"ping","select":{"all":true}}`, want: 201},
	{name: "start run refused", method: "POST", path: "/api/v1/runs", token: tokenOperator, body: `{"command":"ping","select":{"all":true,"plan":"starter"}}`, want: 422},
	{name: "start run matching nothing", method: "POST", path: "/api/v1/runs", token: tokenOperator, body: `{"command":"facts","select":{"plan":"gold"}}`, want: 422},
	{name: "start run unknown command", method: "POST", path: "/api/v1/runs", token: tokenOperator, body: `{"command":"sh","select":{"all":true}}`, want: 422, offContract: true},
	{name: "start run bad limit", method: "POST", path: "/api/v1/runs", token: tokenOperator, body: `{"command":"ping","select":{"all":true},"max_errors":"lots"}`, want: 422, offContract: true},
	{name: "start run unknown field", method: "POST", path: "/api/v1/runs", token: tokenOperator, body: `{"command":"ping","select":{"all":true},"batch":2}`, want: 400, offContract: true},
	{name: "start run too large", method: "POST", path: "/api/v1/runs", token: tokenOperator,
		body: `{"command":"ping","select":{"ids":["` + strings.Repeat("i", maxRunBody) + `"]}}`, want: 413},
	{name: "start run as a customer", method: "POST", path: "/api/v1/runs", token: tokenCustomerA, body: `{"command":"ping","select":{"all":true}}`, want: 403},
	{name: "runs", method: "GET", path: "/api/v1/runs", token: tokenOperator, want: 200},
	{name: "runs paged", method: "GET", path: "/api/v1/runs?limit=1", token: tokenOperator, want: 200},
	{name: "runs bad cursor", method: "GET", path: "/api/v1/runs?cursor=%21", token: tokenOperator, want: 400},
	{name: "runs without a token", method: "GET", path: "/api/v1/runs", want: 401, offContract: true},
	{name: "runs as a customer", method: "GET", path: "/api/v1/runs", token: tokenCustomerA, want: 403},
	{name: "run", method: "GET", path: "/api/v1/runs/run-000", token: tokenOperator, want: 200},
	{name: "run unknown", method: "GET", path: "/api/v1/runs/run-nope", token: tokenOperator, want: 404},
	{name: "run targets", method: "GET", path: "/api/v1/runs/run-000/targets", token: tokenOperator, want: 200},
	{name: "run targets failed", method: "GET", path: "/api/v1/runs/run-000/targets?state=failed&limit=1", token: tokenOperator, want: 200},
	{name: "run targets unknown state", method: "GET", path: "/api/v1/runs/run-000/targets?state=done", token: tokenOperator, want: 400, offContract: true},
	{name: "run targets unknown run", method: "GET", path: "/api/v1/runs/run-nope/targets", token: tokenOperator, want: 404},
	{name: "cancel run", method: "POST", path: "/api/v1/runs/run-001/cancel", token: tokenOperator, want: 200},
	{name: "cancel run finished", method: "POST", path: "/api/v1/runs/run-000/cancel", token: tokenOperator, want: 409},
	{name: "cancel run unknown", method: "POST", path: "/api/v1/runs/run-nope/cancel", token: tokenOperator, want: 404},
	{name: "cancel run as a customer", method: "POST", path: "/api/v1/runs/run-001/cancel", token: tokenCustomerA, want: 403},
	{name: "instances paged", method: "GET", path: "/api/v1/instances?limit=1&status=online", token: goodToken, want: 200},
	{name: "instances bad cursor", method: "GET", path: "/api/v1/instances?cursor=%21", token: goodToken, want: 400},
	{name: "metrics history", method: "GET", path: "/api/v1/instances/i-a/metrics", token: tokenCustomerA, want: 200},
	{name: "metrics history of a window", method: "GET", path: "/api/v1/instances/i-a/metrics?window=7d", token: goodToken, want: 200},
	{name: "metrics history from to", method: "GET", path: "/api/v1/instances/i-b/metrics?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
		token: goodToken, want: 200},
	{name: "metrics history from after to", method: "GET", path: "/api/v1/instances/i-a/metrics?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
		token: goodToken, want: 400},
	{name: "metrics history bad window", method: "GET", path: "/api/v1/instances/i-a/metrics?window=2h", token: goodToken, want: 400, offContract: true},
	{name: "metrics history of another customer", method: "GET", path: "/api/v1/instances/i-a/metrics", token: tokenCustomerB, want: 404},
	{name: "instance jobs", method: "GET", path: "/api/v1/instances/i-a/jobs", token: tokenCustomerA, want: 200},
	{name: "instance jobs none", method: "GET", path: "/api/v1/instances/i-b/jobs?limit=10", token: goodToken, want: 200},
	{name: "instance jobs bad limit", method: "GET", path: "/api/v1/instances/i-a/jobs?limit=0", token: goodToken, want: 400, offContract: true},
	{name: "instance jobs unknown", method: "GET", path: "/api/v1/instances/i-nope/jobs", token: goodToken, want: 404},
	{name: "timeline", method: "GET", path: "/api/v1/instances/i-a/timeline", token: tokenCustomerA, want: 200},
	{name: "timeline paged", method: "GET", path: "/api/v1/instances/i-a/timeline?limit=1", token: tokenCustomerA, want: 200},
	{name: "timeline of another customer", method: "GET", path: "/api/v1/instances/i-a/timeline", token: tokenCustomerB, want: 404},
	{name: "customer status", method: "GET", path: "/api/v1/customers/cus_a/status", token: tokenCustomerA, want: 200},
	{name: "customer status before a sample", method: "GET", path: "/api/v1/customers/cus_b/status", token: tokenOperator, want: 200},
	{name: "customer status of another customer", method: "GET", path: "/api/v1/customers/cus_b/status", token: tokenCustomerA, want: 404},
	{name: "customer status without an instance", method: "GET", path: "/api/v1/customers/cus_c/status", token: tokenOperator, want: 404},
	{name: "fleet", method: "GET", path: "/api/v1/fleet", token: tokenOperator, want: 200},
	{name: "fleet as a customer", method: "GET", path: "/api/v1/fleet", token: tokenCustomerA, want: 403},
	{name: "job", method: "GET", path: "/api/v1/jobs/job-2", token: tokenCustomerA, want: 200},
	{name: "job unknown", method: "GET", path: "/api/v1/jobs/job-nope", token: goodToken, want: 404},

	{name: "subscription", method: "GET", path: "/api/v1/billing", token: tokenCustomerA, want: 200},
	{name: "subscription none", method: "GET", path: "/api/v1/billing", token: tokenCustomerB, want: 404},
	{name: "subscription as an operator", method: "GET", path: "/api/v1/billing", token: tokenOperator, want: 403},
	{name: "checkout", method: "POST", path: "/api/v1/billing/checkout", token: tokenCustomerA, body: `{"plan":"starter"}`, want: 200},
	{name: "checkout unknown plan", method: "POST", path: "/api/v1/billing/checkout", token: tokenCustomerA, body: `{"plan":"gold"}`, want: 422},
	{name: "portal", method: "POST", path: "/api/v1/billing/portal", token: tokenCustomerA, want: 200},
	{name: "portal without a subscription", method: "POST", path: "/api/v1/billing/portal", token: tokenCustomerB, want: 404},
	{name: "billing metrics", method: "GET", path: "/api/v1/admin/billing/metrics", token: tokenOperator, want: 200},
	{name: "billing metrics as a customer", method: "GET", path: "/api/v1/admin/billing/metrics", token: tokenCustomerA, want: 403},

	{name: "create operator", method: "POST", path: "/api/v1/admin/operators", token: goodToken, want: 201,
		body: `{"email":"oscar@example.com","password":"x","first_name":"O","last_name":"O","role":"operator"}`},
	{name: "create operator as an operator", method: "POST", path: "/api/v1/admin/operators", token: tokenOperator, want: 403,
		body: `{"email":"eve@example.com","password":"x","role":"admin"}`},
	{name: "create api token", method: "POST", path: "/api/v1/admin/api-tokens", token: goodToken, body: `{"name":"ci","role":"operator"}`, want: 201},
	{name: "api tokens", method: "GET", path: "/api/v1/admin/api-tokens", token: goodToken, want: 200},
	{name: "revoke api token", method: "DELETE", path: "/api/v1/admin/api-tokens/" + testAPIToken.ID, token: goodToken, want: 204},
	{name: "revoke api token unknown", method: "DELETE", path: "/api/v1/admin/api-tokens/nope", token: goodToken, want: 404},
}

// TestResponsesMatchOpenAPI sends real requests to every route and holds
// each answer (and each request meant to be valid) to openapi.json.
func TestResponsesMatchOpenAPI(t *testing.T) {
	v := newOpenAPIChecker(t, newTestAPI(t, openapiFakes))
	for _, c := range apiCalls {
		v.call(t, c)
	}
	v.events(t)

	// Answers that need the API set up otherwise.
	notReady := newTestAPI(t, func(o *Options) {
		openapiFakes(o)
		o.Ready["store"] = func() error { return errors.New("store closed") }
	})
	newOpenAPIChecker(t, notReady).call(t, apiCall{name: "readyz not ready", method: "GET", path: "/readyz", want: 503})
	limited := newOpenAPIChecker(t, newTestAPI(t, func(o *Options) {
		openapiFakes(o)
		o.Limits = AuthLimits{PerIP: Limit{1, time.Hour}, PerAccount: Limit{1, time.Hour}}
	}))
	for _, want := range []int{202, 429} {
		limited.call(t, apiCall{name: "recover rate-limited", method: "POST", path: "/api/v1/auth/recover",
			body: `{"email":"ann@a.example"}`, want: want})
	}

	for _, route := range slices.Sorted(maps.Keys(v.routes)) {
		if !v.covered[route] {
			t.Errorf("%s: no request reached it; add one to apiCalls", route)
		}
	}
}

// openapiFakes completes newTestAPI's options with what the document's
// checks need: plans, a target store and a commander, and jobs as the
// provisioning service answers them.
func openapiFakes(o *Options) {
	o.Plans = []Plan{{Name: "starter", MonthlyPrice: 4900, Currency: "eur", InstanceType: "t3.small", BackupSchedule: "@daily",
		Quotas: Quotas{SMS: 100, WhatsApp: 100, Email: 10000}}}
	o.Jobs = submittedJobs{&fakeJobs{}}
	o.Targets = &memTargets{}
	o.Commander = pongCommander{}
	o.Metrics = fakeMetrics{"i-a": {V: 1, InstanceID: "i-a", At: created, CPUPercent: 12.5, Load: protocol.Load{One: 0.5},
		Memory:  protocol.Memory{TotalBytes: 2 << 30, UsedBytes: 1 << 30, AvailableBytes: 1 << 30},
		Disks:   []protocol.Disk{{Mount: "/", FSType: "ext4", TotalBytes: 20 << 30, UsedBytes: 5 << 30, FreeBytes: 15 << 30}},
		Network: protocol.Network{RxBytes: 1000, TxBytes: 2000}, UptimeSeconds: 3600}}
	// i-a is a customer's running server with a job at work and a stack,
	// so that the answers carry every field.
	tr := o.Fleet.(*fleet.Tracker)
	tr.Update("i-a", func(inst *fleet.Instance) {
		inst.Plan, inst.Subdomain, inst.InstanceType, inst.Region = "starter", "a", "t3.small", "eu-west-1"
		inst.ProviderID, inst.Address, inst.Lifecycle, inst.Job = "local-1", "10.0.0.1", fleet.LifecycleActive, fakeJob.ID
	})
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-a", AgentVersion: "1.0.0", Health: protocol.HealthOK,
		Stack: &protocol.StackStatus{AppliedVersion: 1, Services: []protocol.ServiceState{
			{Service: "crm", State: "running", Health: "healthy", StartedAt: created}, {Service: "files", State: "exited", RestartCount: 2}},
			ComposeTool: "docker compose"}}, time.Now())
}

// submittedJobs answers jobs as the provisioning service does, pending
// with their steps and first log line, and its errors for the customer
// "busy", the instance i-b and the plan "gold".
type submittedJobs struct{ *fakeJobs }

var (
	errTestBusy = fault.New(fault.Busy, "provision: another job is working on this instance")
	errTestPlan = fault.New(fault.Invalid, "provision: unknown plan %q", "gold")
)

// asSubmitted is job as the provisioning service submits it.
func asSubmitted(job provision.Job, params map[string]string) provision.Job {
	job.State, job.Steps, job.Params = provision.JobPending, []string{"launch", "wait_running"}, params
	job.Log = []provision.JobLog{{At: created, Step: "job", Outcome: "submitted"}}
	job.CreatedAt, job.UpdatedAt = created, created
	return job
}

func (s submittedJobs) Provision(customer, plan, subdomain string) (fleet.Instance, provision.Job, error) {
	switch {
	case customer == "busy":
		return fleet.Instance{}, provision.Job{}, errTestBusy
	case plan == "gold":
		return fleet.Instance{}, provision.Job{}, errTestPlan
	}
	inst, job, err := s.fakeJobs.Provision(customer, plan, subdomain)
	job = asSubmitted(job, map[string]string{"customer": customer, "plan": plan, "subdomain": subdomain})
	inst.Provider, inst.CreatedAt, inst.Lifecycle, inst.Job = "local", created, fleet.LifecycleProvisioning, job.ID
	inst.Status = fleet.StatusProvisioning
	return inst, job, err
}

func (s submittedJobs) Start(kind, id string, params map[string]string) (provision.Job, error) {
	switch {
	case id == "i-b":
		return provision.Job{}, errTestBusy
	case params["plan"] == "gold":
		return provision.Job{}, errTestPlan
	}
	job, err := s.fakeJobs.Start(kind, id, params)
	return asSubmitted(job, params), err
}

// memTargets keeps targets in memory; an empty compose file is refused.
type memTargets struct {
	mu sync.Mutex
	m  map[string]protocol.Target
}

func (f *memTargets) SetTarget(_ context.Context, id string, spec TargetSpec) (protocol.Target, error) {
	if spec.Compose == "" {
		return protocol.Target{}, fault.New(fault.Invalid, "targets: compose is empty")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]protocol.Target{}
	}
	t := protocol.Target{V: 1, InstanceID: id, Version: f.m[id].Version + 1, Compose: spec.Compose, Env: spec.Env, Files: spec.Files}
	f.m[id] = t
	return t, nil
}

func (f *memTargets) Target(_ context.Context, id string) (protocol.Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.m[id]
	if !ok {
		return t, fault.New(fault.NotFound, "targets: no target for %s", id)
	}
	return t, nil
}

// pongCommander answers every command of i-a; i-b's agent is not connected.
type pongCommander struct{}

func (pongCommander) Command(_ context.Context, id string, req protocol.CommandRequest) (protocol.CommandReply, error) {
	if id != "i-a" {
		return protocol.CommandReply{}, fault.New(fault.Unavailable, "broker: no agent")
	}
	return protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: id, OK: true, Result: json.RawMessage(`{"pong":true}`)}, nil
}

// openapiChecker sends requests to an API and checks them and their
// answers against openapi.json, noting the chi route each one reached.
type openapiChecker struct {
	ta      *testAPI
	doc     *openapi3.T
	srv     *httptest.Server
	router  routers.Router
	opts    *openapi3filter.Options
	routes  map[string]bool // every route served
	covered map[string]bool // the routes a request reached

	// reached holds, by X-Test-Call header, a channel that gets the chi
	// route of the call once it is served.
	reached sync.Map
	calls   atomic.Int64
}

func newOpenAPIChecker(t *testing.T, ta *testAPI) *openapiChecker {
	t.Helper()
	doc := loadOpenAPI(t)
	doc.Servers = nil // match paths on any host: the test server's
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("gorillamux.NewRouter: %v", err)
	}
	v := &openapiChecker{ta: ta, doc: doc, router: router, routes: routesOf(t, ta.handler), covered: map[string]bool{},
		opts: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true,
			AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
				if !strings.HasPrefix(in.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ") {
					return errors.New("no bearer token")
				}
				return nil
			}}}
	routes := ta.handler.(chi.Routes)
	v.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rctx := chi.NewRouteContext()
		rctx.Routes = routes
		ta.handler.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), chi.RouteCtxKey, rctx)))
		if ch, ok := v.reached.Load(r.Header.Get("X-Test-Call")); ok {
			ch.(chan string) <- r.Method + " " + docPath(rctx.RoutePattern())
		}
	}))
	t.Cleanup(v.srv.Close)
	return v
}

// request builds c's request to the test server.
func (v *openapiChecker) request(t *testing.T, ctx context.Context, c apiCall) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, c.method, v.srv.URL+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatalf("http.NewRequest: %v", err)
	}
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, val := range c.header {
		req.Header.Set(k, val)
	}
	return req
}

// route finds c's operation in the document, with the path's parameters.
func (v *openapiChecker) route(t *testing.T, c apiCall, req *http.Request) *openapi3filter.RequestValidationInput {
	t.Helper()
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s is not in openapi.json: %v", c.method, c.path, err)
	}
	return &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: v.opts}
}

// send sends req; the channel gets the chi route it reached once served.
func (v *openapiChecker) send(t *testing.T, req *http.Request) (*http.Response, <-chan string) {
	t.Helper()
	id := strconv.FormatInt(v.calls.Add(1), 10)
	ch := make(chan string, 1)
	v.reached.Store(id, ch)
	req.Header.Set("X-Test-Call", id)
	res, err := v.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res, ch
}

// served notes the route a request reached once the server is done with
// it, and checks the document routed it to the same one.
func (v *openapiChecker) served(t *testing.T, c apiCall, in *openapi3filter.RequestValidationInput, route <-chan string) {
	t.Helper()
	var reached string
	select {
	case reached = <-route:
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not finish the request")
	}
	v.covered[reached] = true
	if doc := c.method + " " + in.Route.Path; reached != doc {
		t.Errorf("chi served %s, openapi.json routes it to %s", reached, doc)
	}
}

// call sends c and checks the request (unless off contract) and the answer.
func (v *openapiChecker) call(t *testing.T, c apiCall) {
	t.Run(c.name, func(t *testing.T) {
		ctx := context.Background()
		in := v.route(t, c, v.request(t, ctx, c))
		if !c.offContract {
			if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
				t.Errorf("the request does not match openapi.json: %v", err)
			}
		}
		res, route := v.send(t, v.request(t, ctx, c))
		data, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		v.served(t, c, in, route)
		if res.StatusCode != c.want {
			t.Errorf("%s %s = %d, want %d (body %s)", c.method, c.path, res.StatusCode, c.want, data)
		}
		err = openapi3filter.ValidateResponse(ctx, &openapi3filter.ResponseValidationInput{RequestValidationInput: in,
			Status: res.StatusCode, Header: res.Header, Body: io.NopCloser(bytes.NewReader(data)), Options: v.opts})
		if err != nil {
			t.Errorf("the %d answer does not match openapi.json: %v\nbody: %s", res.StatusCode, err, data)
		}
	})
}

// eventSchemas are the schemas of the data of each kind of event.
var eventSchemas = map[string]string{"instance": "Instance", "job": "Job", "agent_event": "AgentEvent", "reset": "ResetEvent"}

// events opens the event stream, asking to resume from an id the feed
// never gave (which earns a reset), has the feed publish a change of each
// kind and checks the answer's status, type and headers, and each frame's
// data, against the document.
func (v *openapiChecker) events(t *testing.T) {
	c := apiCall{name: "events", method: "GET", path: "/api/v1/events", token: tokenCustomerA,
		header: map[string]string{"Last-Event-ID": "gone-1"}, want: 200}
	t.Run(c.name, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		in := v.route(t, c, v.request(t, ctx, c))
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			t.Errorf("the request does not match openapi.json: %v", err)
		}
		res, route := v.send(t, v.request(t, ctx, c))
		defer res.Body.Close()
		if res.StatusCode != c.want {
			t.Fatalf("GET /api/v1/events = %d, want %d", res.StatusCode, c.want)
		}
		if doc := in.Route.Operation.Responses.Status(res.StatusCode); doc == nil || doc.Value.Content.Get(res.Header.Get("Content-Type")) == nil {
			t.Errorf("openapi.json has no %d answer of type %q", res.StatusCode, res.Header.Get("Content-Type"))
		}
		headersOnly := *v.opts
		headersOnly.ExcludeResponseBody = true
		err := openapi3filter.ValidateResponse(ctx, &openapi3filter.ResponseValidationInput{RequestValidationInput: in,
			Status: res.StatusCode, Header: res.Header, Body: io.NopCloser(strings.NewReader("")), Options: &headersOnly})
		if err != nil {
			t.Errorf("the answer's headers do not match openapi.json: %v", err)
		}

		inst, err := v.ta.tracker.Get("i-a", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for kind, data := range map[string]any{"instance": inst, "job": fakeJob, "agent_event": fakeEvent} {
			if err := v.ta.feed.Publish(kind, inst.Customer, inst.ID, data); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[string]bool{}
		frames := bufio.NewReader(res.Body)
		for len(seen) < len(eventSchemas) {
			kind, data, err := readFrame(frames)
			if err != nil {
				t.Fatalf("reading the stream (kinds seen: %v): %v", slices.Sorted(maps.Keys(seen)), err)
			}
			if kind == "" {
				continue // retry, a comment
			}
			seen[kind] = true
			name, ok := eventSchemas[kind]
			if !ok {
				t.Errorf("an event of kind %q, which openapi.json does not describe", kind)
				continue
			}
			var value any
			if err := json.Unmarshal([]byte(data), &value); err != nil {
				t.Errorf("%s event: data %q is not JSON: %v", kind, data, err)
				continue
			}
			if err := v.doc.Components.Schemas[name].Value.VisitJSON(value, openapi3.EnableJSONSchema2020()); err != nil {
				t.Errorf("%s event: data does not match %s: %v\ndata: %s", kind, name, err, data)
			}
		}
		cancel() // the client leaves; the server ends the stream
		v.served(t, c, in, route)
	})
}

// readFrame reads one Server-Sent Events frame: its event kind and data,
// "" for a frame with no event (retry, a comment).
func readFrame(r *bufio.Reader) (kind, data string, err error) {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", "", err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			return kind, data, nil
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			kind = value
		case "data":
			if data != "" {
				data += "\n"
			}
			data += value
		}
	}
}
