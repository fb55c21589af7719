// Package dashboardapi is the HTTP face of the control plane: the REST API
// the web frontend and stackctl use. It declares the small interfaces it
// needs and the control plane's main wires them; no business logic lives here.
package dashboardapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Fleet reads instances with their current status.
type Fleet interface {
	List(now time.Time) []fleet.Instance
	Get(id string, now time.Time) (fleet.Instance, error)
	OfCustomer(customer string, now time.Time) []fleet.Instance
}

// Metrics returns an instance's latest metrics sample and its history.
type Metrics interface {
	LatestMetrics(id string) (protocol.Metrics, bool)
	// MetricsHistory is instance id's metrics from from to to, at the
	// finest resolution still kept for that window.
	MetricsHistory(id string, from, to time.Time) (fleet.MetricsHistory, error)
}

// Events reads what agents reported.
type Events interface {
	// InstanceEvents returns the last limit events of instance id.
	InstanceEvents(id string, limit int) ([]protocol.Event, error)
}

// Jobs starts provisioning jobs and reports on them. Its errors are
// fault errors (Invalid, NotFound, Busy) where those apply; so are every
// interface's here, and the API answers them by kind (see errors.go).
type Jobs interface {
	Provision(customer, plan, subdomain string) (fleet.Instance, provision.Job, error)
	// Start starts a job of kind (terminate, suspend, resume, resize) on
	// instance id.
	Start(kind, id string, params map[string]string) (provision.Job, error)
	Job(id string) (provision.Job, error)
	// InstanceJobs returns every job of instance id.
	InstanceJobs(id string) ([]provision.Job, error)
}

// TargetSpec is a stack an operator wants an instance to run.
type TargetSpec struct {
	Compose string            `json:"compose"`
	Env     map[string]string `json:"env,omitempty"`
	Files   map[string]string `json:"files,omitempty"`
}

// Targets reads and sets the stack each instance should run. SetTarget's
// error is Invalid when the spec is at fault; Target's is NotFound when
// the instance has no target yet.
type Targets interface {
	SetTarget(ctx context.Context, id string, spec TargetSpec) (protocol.Target, error)
	Target(ctx context.Context, id string) (protocol.Target, error)
}

// Commander sends a command to an instance's agent and waits for its
// answer. Its error is Unavailable when no agent is connected.
type Commander interface {
	Command(ctx context.Context, id string, req protocol.CommandRequest) (protocol.CommandReply, error)
}

// Principal is who a bearer token belongs to: an operator's API token, or
// a user's access token.
type Principal struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// UserID and CustomerID (customers only) come with a user's access token.
	UserID     string `json:"user_id,omitempty"`
	CustomerID string `json:"customer_id,omitempty"`
}

// Tokens resolves a bearer token to its principal, or an Unauthorized
// error.
type Tokens interface {
	Principal(token string) (Principal, error)
}

// Check is one readiness check; nil means ready.
type Check func() error

// Options configures the API.
type Options struct {
	Fleet     Fleet
	Feed      Feed
	Metrics   Metrics
	Events    Events
	Jobs      Jobs
	Targets   Targets
	Commander Commander
	Tokens    Tokens
	Auth      Auth
	Limits    AuthLimits
	// Runs are the fleet's command runs; Tags sets the instance tags runs
	// select by.
	Runs Runs
	Tags Tags
	// Billing is the customers' subscriptions and Stripe's webhooks.
	Billing Billing
	// Plans are the plans on offer, cheapest first.
	Plans []Plan
	// Prometheus serves the control plane's metrics at /metrics, to
	// operators; nil leaves /metrics out.
	Prometheus http.Handler
	// Registry takes the API's own metrics (HTTP latency by route); nil
	// keeps them unregistered.
	Registry prometheus.Registerer
	// CORSOrigins are the origins of the web frontends allowed to call the
	// API from a browser; none leaves CORS off.
	CORSOrigins []string
	// Ready maps a dependency's name to its check, for /readyz.
	Ready map[string]Check
	// Ping is how often an idle event stream gets a comment; 15 s if zero.
	Ping time.Duration
	Log  *slog.Logger
}

// API serves dashboard-api.
type API struct {
	o                 Options
	log               *slog.Logger
	perIP, perAccount *limiter
	metrics           *httpMetrics
	ping              time.Duration
}

// New returns the API; Handler serves it. It fails only when the API's
// metrics cannot be registered.
func New(o Options) (*API, error) {
	m, err := newHTTPMetrics(o.Registry)
	if err != nil {
		return nil, fmt.Errorf("dashboard-api: registering metrics: %w", err)
	}
	return &API{o: o, log: o.Log.With("component", "dashboard-api"), metrics: m, ping: cmp.Or(o.Ping, defaultPing),
		perIP:      newLimiter(o.Limits.PerIP.Attempts, o.Limits.PerIP.Window),
		perAccount: newLimiter(o.Limits.PerAccount.Attempts, o.Limits.PerAccount.Window)}, nil
}

// Handler is the router with every route.
func (a *API) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.RequestID, a.requestID, a.observe, middleware.Recoverer)
	if len(a.o.CORSOrigins) > 0 {
		r.Use(corsFor(a.o.CORSOrigins))
	}
	console := a.handle(newConsole())
	r.Get("/", console)
	r.Get("/console/*", console)
	r.Get("/healthz", a.handle(a.healthz))
	r.Get("/readyz", a.handle(a.readyz))
	r.Get("/.well-known/jwks.json", a.handle(a.jwks))
	r.Post("/webhooks/stripe", a.handle(a.stripeWebhook)) // Stripe signs it; no bearer token
	if a.o.Prometheus != nil {
		r.With(a.authenticate, a.requireRole(RoleOperator, RoleAdmin)).Method(http.MethodGet, "/metrics", a.o.Prometheus)
	}
	r.Route("/api/v1", func(r chi.Router) {
		a.authRoutes(r)
		r.Get("/plans", a.handle(a.plans))
		r.Get("/openapi.json", a.handle(a.openapi))
		r.Group(func(r chi.Router) {
			r.Use(a.authenticate)
			// Every signed-in user; customers see only their own.
			r.Post("/auth/logout", a.handle(a.logout))
			r.Post("/auth/password", a.handle(a.changePassword))
			r.Get("/me", a.handle(a.me))
			r.Patch("/me", a.handle(a.updateMe))
			r.Get("/instances", a.handle(a.instances))
			r.Get("/instances/{id}", a.handle(a.instance))
			r.Get("/instances/{id}/metrics", a.handle(a.metricsHistory))
			r.Get("/instances/{id}/jobs", a.handle(a.instanceJobs))
			r.Get("/instances/{id}/timeline", a.handle(a.timeline))
			r.Get("/customers/{id}/status", a.handle(a.customerStatus))
			r.Get("/jobs/{id}", a.handle(a.job))
			r.Get("/events", a.handle(a.events))
			r.Group(func(r chi.Router) {
				r.Use(a.requireCustomer)
				r.Get("/billing", a.handle(a.subscription))
				r.Post("/billing/checkout", a.handle(a.checkout))
				r.Post("/billing/portal", a.handle(a.portal))
			})
			r.Group(func(r chi.Router) {
				r.Use(a.requireRole(RoleOperator, RoleAdmin))
				r.Get("/fleet", a.handle(a.fleetOverview))
				r.Post("/instances", a.handle(a.provision))
				r.Delete("/instances/{id}", a.handle(a.startJob("terminate")))
				r.Post("/instances/{id}/suspend", a.handle(a.startJob("suspend")))
				r.Post("/instances/{id}/resume", a.handle(a.startJob("resume")))
				r.Post("/instances/{id}/resize", a.handle(a.startJob("resize")))
				r.Get("/instances/{id}/target", a.handle(a.target))
				r.Put("/instances/{id}/target", a.handle(a.setTarget))
				r.Post("/instances/{id}/commands", a.handle(a.command))
				r.Put("/instances/{id}/tags", a.handle(a.setTags))
				r.Post("/runs", a.handle(a.startRun))
				r.Get("/runs", a.handle(a.listRuns))
				r.Get("/runs/{id}", a.handle(a.getRun))
				r.Get("/runs/{id}/targets", a.handle(a.runTargets))
				r.Post("/runs/{id}/cancel", a.handle(a.cancelRun))
				r.Get("/admin/billing/metrics", a.handle(a.billingMetrics)) // under /admin, for operators too
			})
			r.Group(func(r chi.Router) {
				r.Use(a.requireRole(RoleAdmin))
				r.Post("/admin/operators", a.handle(a.createOperator))
				r.Post("/admin/api-tokens", a.handle(a.createAPIToken))
				r.Get("/admin/api-tokens", a.handle(a.apiTokens))
				r.Delete("/admin/api-tokens/{id}", a.handle(a.revokeAPIToken))
			})
		})
	})
	r.NotFound(a.handle(func(http.ResponseWriter, *http.Request) error {
		return httpError{Code: http.StatusNotFound, Msg: "no such route"}
	}))
	r.MethodNotAllowed(a.handle(func(http.ResponseWriter, *http.Request) error {
		return httpError{Code: http.StatusMethodNotAllowed, Msg: "method not allowed"}
	}))
	return r
}

type principalKey struct{}

// authenticate lets through only requests with a known bearer token.
func (a *API) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="stackpro"`)
			a.answer(w, r, httpError{Code: http.StatusUnauthorized, Msg: "missing bearer token"})
			return
		}
		p, err := a.o.Tokens.Principal(token)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="stackpro", error="invalid_token"`)
			if !errors.Is(err, fault.ErrUnauthorized) {
				a.answer(w, r, err)
				return
			}
			a.answer(w, r, httpError{Code: http.StatusUnauthorized, Msg: "invalid bearer token"})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

func (a *API) healthz(w http.ResponseWriter, _ *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *API) readyz(w http.ResponseWriter, _ *http.Request) error {
	checks, ready := map[string]string{}, true
	for name, check := range a.o.Ready {
		checks[name] = "ok"
		if err := check(); err != nil {
			checks[name], ready = err.Error(), false
		}
	}
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	return writeJSON(w, code, map[string]any{"ready": ready, "checks": checks})
}

// instanceView is an instance with its latest metrics.
type instanceView struct {
	fleet.Instance
	Metrics *protocol.Metrics `json:"metrics,omitempty"`
}

func (a *API) instance(w http.ResponseWriter, r *http.Request) error {
	inst, err := a.visibleInstance(r)
	if err != nil {
		return err
	}
	view := instanceView{Instance: inst}
	if m, ok := a.o.Metrics.LatestMetrics(inst.ID); ok {
		view.Metrics = &m
	}
	return writeJSON(w, http.StatusOK, view)
}

// knownInstance answers 404 unless instance id exists.
func (a *API) knownInstance(id string) error {
	if _, err := a.o.Fleet.Get(id, time.Now()); errors.Is(err, fleet.ErrNotFound) {
		return httpError{Code: http.StatusNotFound, Msg: "instance not found", Err: err}
	} else if err != nil {
		return err
	}
	return nil
}

func (a *API) target(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if err := a.knownInstance(id); err != nil {
		return err
	}
	t, err := a.o.Targets.Target(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, t)
}

// maxTargetBody bounds a PUT of a target; the target itself is checked
// against tighter limits.
const maxTargetBody = 2 << 20

func (a *API) setTarget(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if err := a.knownInstance(id); err != nil {
		return err
	}
	var spec TargetSpec
	if err := decodeBody(w, r, maxTargetBody, &spec); err != nil {
		return err
	}
	t, err := a.o.Targets.SetTarget(r.Context(), id, spec)
	if err != nil {
		return err
	}
	a.audit(r, "target set", "instance", id, "version", t.Version)
	return writeJSON(w, http.StatusOK, t)
}

// commandRequest is the body of POST /api/v1/instances/{id}/commands.
type commandRequest struct {
	Name string          `json:"name"`
	Args json.RawMessage `json:"args,omitempty"`
}

// commandTimeout is how long the API waits for an agent's answer; a pull
// may take minutes, anything else seconds.
func commandTimeout(name string) time.Duration {
	if name == protocol.CommandStackPull {
		return 10 * time.Minute
	}
	return time.Minute
}

func (a *API) command(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if err := a.knownInstance(id); err != nil {
		return err
	}
	var body commandRequest
	if err := decodeBody(w, r, maxBody, &body); err != nil {
		return err
	}
	if body.Name == "" {
		return httpError{Code: http.StatusBadRequest, Msg: "want a JSON body {\"name\": ..., \"args\": {...}}"}
	}
	if err := checkCommand(body.Name); err != nil {
		return refused(err)
	}
	reqID := middleware.GetReqID(r.Context())
	a.audit(r, "command sent", "instance", id, "command", body.Name)
	ctx, cancel := context.WithTimeout(r.Context(), commandTimeout(body.Name))
	defer cancel()
	reply, err := a.o.Commander.Command(ctx, id, protocol.CommandRequest{V: protocol.Version, ID: reqID, Name: body.Name, Args: body.Args})
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return httpError{Code: http.StatusGatewayTimeout, Msg: "the agent did not answer in time", Err: err}
	case err != nil:
		return err
	}
	return writeJSON(w, http.StatusOK, reply)
}

// checkCommand refuses a command outside protocol.OperatorCommands.
func checkCommand(name string) error {
	if !slices.Contains(protocol.OperatorCommands, name) {
		return fmt.Errorf("command %q: want one of %s", name, strings.Join(protocol.OperatorCommands, ", "))
	}
	return nil
}

// maxBody bounds a request body; a target may be larger (maxTargetBody).
const maxBody = 64 << 10

// decodeBody reads a JSON body of at most limit bytes strictly into v.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := readJSON(w, r, limit)
	if err != nil {
		return err
	}
	return decodeStrict(body, v)
}

// readJSON reads a JSON body of at most limit bytes, refusing with 415
// one whose Content-Type says it is anything else. Every JSON body is
// read here (decodeBody, and limited's before it rate-limits); only a
// body taken raw, as Stripe's webhook is, is read with readBody alone.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if err := jsonContent(r.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	return readBody(w, r, limit)
}

// jsonContent accepts a Content-Type of application/json, with no charset
// or UTF-8, the only one JSON between systems may use (RFC 8259). A form
// or a text/plain body, which a browser sends cross-site without asking
// first, never reaches a decoder.
func jsonContent(contentType string) error {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/json" {
		return httpError{Code: http.StatusUnsupportedMediaType, Msg: "Content-Type must be application/json", Err: err}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return httpError{Code: http.StatusUnsupportedMediaType, Msg: "Content-Type must be application/json with no charset or charset=utf-8"}
	}
	return nil
}

// readBody reads a request body of at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if tooBig := new(http.MaxBytesError); errors.As(err, &tooBig) {
		return nil, httpError{Code: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf("body larger than %d bytes", limit), Err: err}
	}
	if err != nil {
		return nil, httpError{Code: http.StatusBadRequest, Msg: "reading body: " + err.Error(), Err: err}
	}
	return body, nil
}

// decodeStrict decodes body, one JSON value with no unknown fields and no
// key twice in any of its objects, into v.
func decodeStrict(body []byte, v any) error {
	if err := uniqueKeys(body); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return httpError{Code: http.StatusBadRequest, Msg: "malformed body: " + err.Error(), Err: err}
	}
	if _, err := dec.Token(); err != io.EOF {
		return httpError{Code: http.StatusBadRequest, Msg: "malformed body: want one JSON value", Err: err}
	}
	return nil
}

// uniqueKeys refuses the first JSON value of body if an object in it, at
// any depth, has a key twice: encoding/json would keep the last, where
// another reader of the same body may take the first. jsontext refuses
// duplicate names by default. Other faults are left to decodeStrict's
// decoder, which words them; invalid UTF-8, which that decoder replaces,
// does not end the search.
func uniqueKeys(body []byte) error {
	_, err := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowInvalidUTF8(true)).ReadValue()
	var serr *jsontext.SyntacticError
	if !errors.As(err, &serr) || !errors.Is(serr.Err, jsontext.ErrDuplicateName) {
		return nil
	}
	msg := fmt.Sprintf("malformed body: duplicate key %q", serr.JSONPointer.LastToken())
	if in := serr.JSONPointer.Parent(); in != "" {
		msg += " in " + string(in)
	}
	return httpError{Code: http.StatusBadRequest, Msg: msg, Err: err}
}

// provisionRequest is the body of POST /api/v1/instances.
type provisionRequest struct {
	Customer  string `json:"customer"`
	Plan      string `json:"plan"`
	Subdomain string `json:"subdomain,omitempty"`
}

func (a *API) provision(w http.ResponseWriter, r *http.Request) error {
	var body provisionRequest
	if err := decodeBody(w, r, maxBody, &body); err != nil {
		return err
	}
	inst, job, err := a.o.Jobs.Provision(body.Customer, body.Plan, body.Subdomain)
	if err != nil {
		return err
	}
	a.audit(r, "provision job started", "instance", inst.ID, "job", job.ID, "customer", body.Customer, "plan", body.Plan)
	w.Header().Set("Location", "/api/v1/jobs/"+job.ID)
	return writeJSON(w, http.StatusAccepted, map[string]any{"instance": inst, "job": job})
}

// startJob starts a job of kind on the instance of the route.
func (a *API) startJob(kind string) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		id := chi.URLParam(r, "id")
		if err := a.knownInstance(id); err != nil {
			return err
		}
		var params map[string]string
		if kind == "resize" {
			var body struct {
				Plan string `json:"plan"`
			}
			if err := decodeBody(w, r, maxBody, &body); err != nil {
				return err
			}
			params = map[string]string{"plan": body.Plan}
		}
		job, err := a.o.Jobs.Start(kind, id, params)
		if err != nil {
			return err
		}
		a.audit(r, kind+" job started", "instance", id, "job", job.ID)
		w.Header().Set("Location", "/api/v1/jobs/"+job.ID)
		return writeJSON(w, http.StatusAccepted, job)
	}
}

func (a *API) job(w http.ResponseWriter, r *http.Request) error {
	job, err := a.o.Jobs.Job(chi.URLParam(r, "id"))
	if errors.Is(err, fault.ErrNotFound) || err == nil && !a.seesJob(principal(r), job) {
		return httpError{Code: http.StatusNotFound, Msg: "job not found", Err: err}
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, job)
}

// seesJob reports whether p may see job: the customer of its instance,
// or of the instance it was to provision.
func (a *API) seesJob(p Principal, job provision.Job) bool {
	if inst, err := a.o.Fleet.Get(job.InstanceID, time.Now()); err == nil {
		return sees(p, inst.Customer)
	}
	return sees(p, job.Params["customer"])
}

// principal is who the request is from; authenticate put it there.
func principal(r *http.Request) Principal {
	p, _ := r.Context().Value(principalKey{}).(Principal)
	return p
}

// audit logs what an operator did, with who and the request id.
func (a *API) audit(r *http.Request, msg string, args ...any) {
	a.log.Info(msg, append(args, "by", principal(r).Name, "request_id", middleware.GetReqID(r.Context()))...)
}
