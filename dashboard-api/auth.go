package dashboardapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/stackpro/stackpro/controlplane/fault"
)

// Roles a principal may have.
const (
	RoleCustomer = "customer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

// Meta is what the accounts service records about a request: where it
// came from and who made it, when someone is signed in.
type Meta struct {
	IP, UserAgent, RequestID, Actor string
}

// SignupRequest is a new customer's sign-up.
type SignupRequest struct {
	Email     string `json:"email"`
	Password  string `json:"password"`
	FirstName string `json:"first_name"`
	LastName  string `json:"last_name"`
	Company   string `json:"company"`
	Plan      string `json:"plan"`
}

// Profile is a user as they see themselves.
type Profile struct {
	ID            string `json:"id"`
	Email         string `json:"email"`
	EmailVerified bool   `json:"email_verified"`
	Role          string `json:"role"`
	FirstName     string `json:"first_name"`
	LastName      string `json:"last_name"`
	// Customer is the customer a customer's user belongs to.
	Customer *Customer `json:"customer,omitempty"`
}

// Customer is a customer's account.
type Customer struct {
	ID          string    `json:"id"`
	Company     string    `json:"company"`
	Plan        string    `json:"plan"`
	Status      string    `json:"status"`
	TrialEndsAt time.Time `json:"trial_ends_at,omitzero"`
}

// ProfilePatch changes the fields that are set.
type ProfilePatch struct {
	FirstName *string `json:"first_name"`
	LastName  *string `json:"last_name"`
	Company   *string `json:"company"`
}

// Session is what a login or a refresh gives, in the OAuth 2 token shape.
type Session struct {
	AccessToken  string  `json:"access_token"`
	TokenType    string  `json:"token_type"`
	ExpiresIn    int     `json:"expires_in"`
	RefreshToken string  `json:"refresh_token"`
	User         Profile `json:"user"`
}

// Auth is the accounts service as the API uses it. Its errors are
// Invalid when the input is at fault, Unauthorized when credentials or a
// token are refused and Forbidden when the account may not do it (yet);
// their client message is shown. Whether an account exists is never told
// apart.
type Auth interface {
	Signup(ctx context.Context, req SignupRequest, m Meta) error
	VerifyEmail(ctx context.Context, token string, m Meta) error
	ResendVerification(ctx context.Context, email string, m Meta) error
	Login(ctx context.Context, email, password string, m Meta) (Session, error)
	Refresh(ctx context.Context, refreshToken string, m Meta) (Session, error)
	// Logout ends the session the refresh token belongs to if p is its
	// user or an admin; for anyone else, its error is Forbidden.
	Logout(ctx context.Context, p Principal, refreshToken string, m Meta) error
	RequestPasswordReset(ctx context.Context, email string, m Meta) error
	ResetPassword(ctx context.Context, token, password string, m Meta) error
	// ChangePassword ends every session of p's user and starts a new one.
	ChangePassword(ctx context.Context, p Principal, oldPassword, newPassword string, m Meta) (Session, error)
	// Me is the profile of p's user; the API asks it only for a
	// principal that has one (not an API token's).
	Me(ctx context.Context, p Principal) (Profile, error)
	UpdateMe(ctx context.Context, p Principal, patch ProfilePatch) (Profile, error)
	// JWKS is the public key set access tokens are verified with.
	JWKS() ([]byte, error)

	// CreateOperator creates an operator's or admin's user, who logs in
	// like anyone else.
	CreateOperator(ctx context.Context, req OperatorRequest, m Meta) (Profile, error)
	// Operators' API tokens: a new one is shown once, then only listed.
	CreateAPIToken(ctx context.Context, name, role string, m Meta) (token string, info APIToken, err error)
	ListAPITokens(ctx context.Context) ([]APIToken, error)
	// RevokeAPIToken's error is NotFound for an unknown id.
	RevokeAPIToken(ctx context.Context, id string, m Meta) error
}

// OperatorRequest is a new operator or admin.
type OperatorRequest struct {
	Email     string `json:"email"`
	Password  string `json:"password"`
	FirstName string `json:"first_name"`
	LastName  string `json:"last_name"`
	Role      string `json:"role"`
}

// APIToken is an operator API token as listed; its id names it without
// granting anything.
type APIToken struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// Limit is n attempts per window.
type Limit struct {
	Attempts int
	Window   time.Duration
}

// AuthLimits bound the attempts at signing up, logging in, resetting a
// password and resending a verification, per client address and per
// account (the email address given), for each of those routes. Both are
// required.
type AuthLimits struct {
	PerIP, PerAccount Limit
}

// authRoutes are the routes anyone may call.
func (a *API) authRoutes(r chi.Router) {
	r.Post("/auth/signup", a.limited(a.signup))
	r.Post("/auth/token", a.limited(a.token))
	r.Post("/auth/verify", a.handle(a.verify))
	r.Post("/auth/resend", a.limited(a.resend))
	r.Post("/auth/recover", a.limited(a.recover))
	r.Post("/auth/reset", a.handle(a.reset))
}

// maxAuthBody bounds an auth request body.
const maxAuthBody = 8 << 10

// emailOnly is the body of the requests that name an account.
type emailOnly struct {
	Email string `json:"email"`
}

// limited rate-limits an auth handler by client address and by the email
// address in its body, before the handler reads it: a correct password
// does not get past the limit. The body is read once here and handed on;
// one that is not JSON gets 415 without counting.
func (a *API) limited(h func(http.ResponseWriter, *http.Request, []byte) error) http.HandlerFunc {
	return a.handle(func(w http.ResponseWriter, r *http.Request) error {
		body, err := readJSON(w, r, maxAuthBody)
		if err != nil {
			return err
		}
		var who emailOnly
		_ = json.Unmarshal(body, &who) // the handler answers a bad body
		route := r.URL.Path
		ok, retry := a.perIP.Allow(route+" "+clientIP(r), time.Now())
		if email := strings.ToLower(strings.TrimSpace(who.Email)); ok && email != "" {
			ok, retry = a.perAccount.Allow(route+" "+email, time.Now())
		}
		if !ok {
			w.Header().Set("Retry-After", strconv.Itoa(max(int(retry.Round(time.Second)/time.Second), 1)))
			a.log.Warn("auth rate limit", "path", route, "ip", clientIP(r), "request_id", middleware.GetReqID(r.Context()))
			return httpError{Code: http.StatusTooManyRequests, Msg: "too many attempts; try again later"}
		}
		return h(w, r, body)
	})
}

// clientIP is the address the request came from. Forwarded headers are
// not trusted: anyone can set them.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func meta(r *http.Request) Meta {
	return Meta{IP: clientIP(r), UserAgent: r.UserAgent(), RequestID: middleware.GetReqID(r.Context()), Actor: principal(r).Name}
}

// accepted is the answer of requests that must not tell whether an
// account exists.
func accepted(w http.ResponseWriter, what string) error {
	return writeJSON(w, http.StatusAccepted, map[string]string{"status": what})
}

func (a *API) signup(w http.ResponseWriter, r *http.Request, body []byte) error {
	var req SignupRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := a.o.Auth.Signup(r.Context(), req, meta(r)); err != nil {
		return err
	}
	return accepted(w, "check your email to confirm your address")
}

// tokenRequest is the body of POST /auth/token: grant_type password with
// email and password, or refresh_token with refresh_token.
type tokenRequest struct {
	GrantType    string `json:"grant_type"`
	Email        string `json:"email"`
	Password     string `json:"password"`
	RefreshToken string `json:"refresh_token"`
}

func (a *API) token(w http.ResponseWriter, r *http.Request, body []byte) error {
	var req tokenRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	var (
		s   Session
		err error
	)
	switch req.GrantType {
	case "password":
		s, err = a.o.Auth.Login(r.Context(), req.Email, req.Password, meta(r))
	case "refresh_token":
		s, err = a.o.Auth.Refresh(r.Context(), req.RefreshToken, meta(r))
	default:
		return httpError{Code: http.StatusBadRequest, Msg: `grant_type must be "password" or "refresh_token"`}
	}
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, s)
}

func (a *API) verify(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Token string `json:"token"`
	}
	if err := decodeBody(w, r, maxAuthBody, &req); err != nil {
		return err
	}
	if err := a.o.Auth.VerifyEmail(r.Context(), req.Token, meta(r)); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"status": "email confirmed"})
}

func (a *API) resend(w http.ResponseWriter, r *http.Request, body []byte) error {
	var req emailOnly
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := a.o.Auth.ResendVerification(r.Context(), req.Email, meta(r)); err != nil {
		return err
	}
	return accepted(w, "if the address needs confirming, an email is on its way")
}

func (a *API) recover(w http.ResponseWriter, r *http.Request, body []byte) error {
	var req emailOnly
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := a.o.Auth.RequestPasswordReset(r.Context(), req.Email, meta(r)); err != nil {
		return err
	}
	return accepted(w, "if the address has an account, a reset link is on its way")
}

func (a *API) reset(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Token    string `json:"token"`
		Password string `json:"password"`
	}
	if err := decodeBody(w, r, maxAuthBody, &req); err != nil {
		return err
	}
	if err := a.o.Auth.ResetPassword(r.Context(), req.Token, req.Password, meta(r)); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"status": "password changed; log in again"})
}

func (a *API) logout(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := decodeBody(w, r, maxAuthBody, &req); err != nil {
		return err
	}
	if err := a.o.Auth.Logout(r.Context(), principal(r), req.RefreshToken, meta(r)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) changePassword(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		OldPassword string `json:"old_password"`
		NewPassword string `json:"new_password"`
	}
	if err := decodeBody(w, r, maxAuthBody, &req); err != nil {
		return err
	}
	s, err := a.o.Auth.ChangePassword(r.Context(), principal(r), req.OldPassword, req.NewPassword, meta(r))
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, s)
}

// me answers who the token is: a user's profile, or an operator's API
// token, which has no user, as its principal (name and role).
func (a *API) me(w http.ResponseWriter, r *http.Request) error {
	who := principal(r)
	if who.UserID == "" {
		return writeJSON(w, http.StatusOK, who)
	}
	p, err := a.o.Auth.Me(r.Context(), who)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}

func (a *API) updateMe(w http.ResponseWriter, r *http.Request) error {
	var patch ProfilePatch
	if err := decodeBody(w, r, maxAuthBody, &patch); err != nil {
		return err
	}
	p, err := a.o.Auth.UpdateMe(r.Context(), principal(r), patch)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}

func (a *API) createOperator(w http.ResponseWriter, r *http.Request) error {
	var req OperatorRequest
	if err := decodeBody(w, r, maxAuthBody, &req); err != nil {
		return err
	}
	p, err := a.o.Auth.CreateOperator(r.Context(), req, meta(r))
	if err != nil {
		return err
	}
	a.audit(r, "operator created", "user", p.ID, "role", p.Role)
	return writeJSON(w, http.StatusCreated, p)
}

func (a *API) createAPIToken(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := decodeBody(w, r, maxAuthBody, &req); err != nil {
		return err
	}
	token, info, err := a.o.Auth.CreateAPIToken(r.Context(), req.Name, req.Role, meta(r))
	if err != nil {
		return err
	}
	a.audit(r, "api token created", "token_id", info.ID, "name", info.Name, "role", info.Role)
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusCreated, map[string]any{"token": token, "api_token": info})
}

func (a *API) apiTokens(w http.ResponseWriter, r *http.Request) error {
	list, err := a.o.Auth.ListAPITokens(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"api_tokens": list})
}

func (a *API) revokeAPIToken(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if err := a.o.Auth.RevokeAPIToken(r.Context(), id, meta(r)); errors.Is(err, fault.ErrNotFound) {
		return httpError{Code: http.StatusNotFound, Msg: "api token not found", Err: err}
	} else if err != nil {
		return err
	}
	a.audit(r, "api token revoked", "token_id", id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) jwks(w http.ResponseWriter, _ *http.Request) error {
	keys, err := a.o.Auth.JWKS()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, err = w.Write(keys)
	return err
}

// requireRole lets through only principals with one of roles.
func (a *API) requireRole(roles ...string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p := principal(r)
			for _, role := range roles {
				if p.Role == role {
					next.ServeHTTP(w, r)
					return
				}
			}
			a.answer(w, r, httpError{Code: http.StatusForbidden, Msg: "this needs the " + strings.Join(roles, " or ") + " role"})
		})
	}
}

// sees reports whether p may see what belongs to customer: operators and
// admins see everything, a customer only their own.
func sees(p Principal, customer string) bool {
	return p.Role == RoleOperator || p.Role == RoleAdmin || (p.CustomerID != "" && p.CustomerID == customer)
}
