package accounts_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/internal/store"
)

// t0 is the start of every test's clock; tests move it by hand, never wait.
var t0 = time.Date(2026, 11, 24, 15, 4, 5, 0, time.UTC)

// testHasher is cheap, so tests hash many passwords fast.
var testHasher = accounts.Hasher{Memory: 64, Time: 1, Threads: 1}

var meta = accounts.Meta{IP: "192.0.2.7", UserAgent: "test"}

// clock is a time the test sets.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type message struct{ To, Subject, Text string }

// mailbox is a Mailer that keeps what it is given.
type mailbox struct {
	mu   sync.Mutex
	msgs []message
}

func (m *mailbox) Send(_ context.Context, to, subject, text string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.msgs = append(m.msgs, message{to, subject, text})
	return nil
}

func (m *mailbox) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.msgs)
}

var tokenInLink = regexp.MustCompile(`\?token=(\S+)`)

// lastToken returns the token linked from the last email to addr.
func (m *mailbox) lastToken(t testing.TB, to string) string {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := len(m.msgs) - 1; i >= 0; i-- {
		if m.msgs[i].To == to {
			match := tokenInLink.FindStringSubmatch(m.msgs[i].Text)
			if match == nil {
				t.Fatalf("the last email to %s has no token link: %q", to, m.msgs[i].Text)
			}
			return match[1]
		}
	}
	t.Fatalf("no email to %s", to)
	return ""
}

type env struct {
	svc    *accounts.Service
	st     *store.Store
	signer *accounts.Signer
	mail   *mailbox
	clock  *clock
	path   string
}

func newEnv(t testing.TB) *env { return newEnvWith(t, testHasher) }

// newEnvWith returns an env whose service hashes new passwords with h.
func newEnvWith(t testing.TB, h accounts.Hasher) *env {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data.db")
	st, err := store.Open(path, time.Second)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	clk := &clock{now: t0}
	signer, err := accounts.NewSigner(st, accounts.SignerOptions{Issuer: "https://cp.test", Audience: "stackpro", Now: clk.Now})
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	mail := &mailbox{}
	svc := accounts.NewService(st, signer, mail, accounts.Options{Hasher: h, Plans: []string{"starter", "business"},
		AppURL: "https://app.test", Now: clk.Now})
	return &env{svc: svc, st: st, signer: signer, mail: mail, clock: clk, path: path}
}

const password = "correct horse battery"

func signupInput(email string) accounts.SignupInput {
	return accounts.SignupInput{Email: email, Password: password, FirstName: "Ada", LastName: "Lovelace",
		Company: "Analytical Engines", Plan: "starter"}
}

func (e *env) signup(t testing.TB, email string) accounts.User {
	t.Helper()
	u, err := e.svc.Signup(t.Context(), meta, signupInput(email))
	if err != nil {
		t.Fatalf("Signup(%s): %v", email, err)
	}
	return u
}

// verifiedUser signs up and verifies the address.
func (e *env) verifiedUser(t testing.TB, email string) accounts.User {
	t.Helper()
	u := e.signup(t, email)
	if err := e.svc.VerifyEmail(t.Context(), meta, e.mail.lastToken(t, email)); err != nil {
		t.Fatalf("VerifyEmail: %v", err)
	}
	return u
}

func (e *env) login(t testing.TB, email, password string) accounts.Tokens {
	t.Helper()
	tokens, err := e.svc.Login(t.Context(), meta, email, password)
	if err != nil {
		t.Fatalf("Login(%s): %v", email, err)
	}
	return tokens
}

func (e *env) auditEvents(t *testing.T) []string {
	t.Helper()
	recs, err := e.st.AuditLog(1000)
	if err != nil {
		t.Fatalf("AuditLog: %v", err)
	}
	var events []string
	for _, r := range recs {
		events = append(events, r.Event)
	}
	return events
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s = %v, want %v", what, err, want)
	}
}

func TestSignupVerifyLogin(t *testing.T) {
	e := newEnv(t)
	u := e.signup(t, "  Ada@Example.COM ")
	if u.Email != "ada@example.com" || u.Role != accounts.RoleCustomer || u.CustomerID == "" || !u.EmailVerifiedAt.IsZero() {
		t.Fatalf("Signup = %+v, want an unverified customer with a normalized address", u)
	}
	c, err := e.st.Customer(u.CustomerID)
	if err != nil {
		t.Fatalf("Customer: %v", err)
	}
	want := accounts.Customer{ID: u.CustomerID, Company: "Analytical Engines", Plan: "starter", Status: accounts.StatusTrial,
		TrialEndsAt: t0.Add(7 * 24 * time.Hour), CreatedAt: t0, UpdatedAt: t0}
	if c != want {
		t.Errorf("Customer = %+v, want %+v", c, want)
	}

	_, err = e.svc.Login(t.Context(), meta, "ada@example.com", password)
	wantErr(t, "Login before verifying", err, accounts.ErrEmailNotVerified)
	_, err = e.svc.Login(t.Context(), meta, "ada@example.com", "wrong password!")
	wantErr(t, "Login with a wrong password before verifying", err, accounts.ErrInvalidCredentials)

	token := e.mail.lastToken(t, "ada@example.com")
	if err := e.svc.VerifyEmail(t.Context(), meta, token); err != nil {
		t.Fatalf("VerifyEmail: %v", err)
	}
	wantErr(t, "VerifyEmail again", e.svc.VerifyEmail(t.Context(), meta, token), accounts.ErrInvalidToken)

	tokens := e.login(t, "ADA@example.com", password)
	claims, err := e.signer.Verify(tokens.AccessToken)
	if err != nil {
		t.Fatalf("Verify(access token): %v", err)
	}
	if claims.Subject != u.ID || claims.Role != accounts.RoleCustomer || claims.CustomerID != u.CustomerID || claims.SessionID == "" {
		t.Errorf("claims = %+v, want user %s, customer %s, a session", claims, u.ID, u.CustomerID)
	}
	if !tokens.ExpiresAt.Equal(t0.Add(15*time.Minute)) || tokens.RefreshToken == "" || tokens.User.ID != u.ID {
		t.Errorf("Login = %+v, want a 15 min access token, a refresh token and the user", tokens)
	}

	me, err := e.svc.Me(t.Context(), u.ID)
	if err != nil {
		t.Fatalf("Me: %v", err)
	}
	if me.User.EmailVerifiedAt.IsZero() || me.Customer == nil || *me.Customer != want {
		t.Errorf("Me = %+v, want the verified user and customer %+v", me, want)
	}
	wantEvents := []string{accounts.EventSignup, accounts.EventVerificationSent, accounts.EventLoginUnverified,
		accounts.EventLoginFailed, accounts.EventEmailVerified, accounts.EventLogin}
	if got := e.auditEvents(t); !equal(got, wantEvents) {
		t.Errorf("audit = %v, want %v", got, wantEvents)
	}
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

func TestSignupRefusesBadInput(t *testing.T) {
	long := strings.Repeat("x", 101)
	tests := []struct {
		name string
		edit func(*accounts.SignupInput)
		want error
	}{
		{"no address", func(in *accounts.SignupInput) { in.Email = "" }, accounts.ErrInvalidInput},
		{"not an address", func(in *accounts.SignupInput) { in.Email = "ada" }, accounts.ErrInvalidInput},
		{"display name", func(in *accounts.SignupInput) { in.Email = "Ada <ada@example.com>" }, accounts.ErrInvalidInput},
		{"no dot in domain", func(in *accounts.SignupInput) { in.Email = "ada@localhost" }, accounts.ErrInvalidInput},
		{"unknown plan", func(in *accounts.SignupInput) { in.Plan = "platinum" }, accounts.ErrInvalidInput},
		{"long name", func(in *accounts.SignupInput) { in.FirstName = long }, accounts.ErrInvalidInput},
		{"control character", func(in *accounts.SignupInput) { in.Company = "Evil\nCorp" }, accounts.ErrInvalidInput},
		{"short password", func(in *accounts.SignupInput) { in.Password = "short" }, accounts.ErrWeakPassword},
		{"password with the address", func(in *accounts.SignupInput) { in.Password = "my name is ada!" }, accounts.ErrWeakPassword},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			in := signupInput("ada@example.com")
			tt.edit(&in)
			_, err := e.svc.Signup(t.Context(), meta, in)
			wantErr(t, "Signup", err, tt.want)
			if e.mail.count() != 0 {
				t.Errorf("Signup sent %d emails, want none", e.mail.count())
			}
		})
	}
}

// A taken address answers like a success, changes nothing, and tells the
// address's owner.
func TestSignupTakenAddress(t *testing.T) {
	e := newEnv(t)
	owner := e.verifiedUser(t, "ada@example.com")
	before := e.mail.count()

	in := signupInput(" ADA@example.com")
	in.Password = "another good passphrase"
	u, err := e.svc.Signup(t.Context(), meta, in)
	if err != nil {
		t.Fatalf("Signup with a taken address = %v, want a success-shaped answer", err)
	}
	if u.ID == owner.ID || u.Email != owner.Email || u.CustomerID == owner.CustomerID {
		t.Errorf("Signup = %+v: it reveals the owner %+v", u, owner)
	}
	if stored, err := e.st.UserByEmail("ada@example.com"); err != nil || stored.ID != owner.ID {
		t.Errorf("UserByEmail = %+v, %v, want the owner unchanged", stored, err)
	}
	if _, err := e.st.User(u.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("User(%s) = %v, want ErrNotFound: nothing is stored", u.ID, err)
	}
	if e.mail.count() != before+1 || !strings.Contains(e.mail.msgs[before].Subject, "tried to sign up") {
		t.Errorf("emails after = %+v, want one notice to the owner", e.mail.msgs[before:])
	}
	_, err = e.svc.Login(t.Context(), meta, "ada@example.com", in.Password)
	wantErr(t, "Login with the second signup's password", err, accounts.ErrInvalidCredentials)
	e.login(t, "ada@example.com", password)
}

// Signing up again with an unverified address sends a new link and voids
// the old one.
func TestSignupTakenUnverifiedResendsLink(t *testing.T) {
	e := newEnv(t)
	e.signup(t, "ada@example.com")
	first := e.mail.lastToken(t, "ada@example.com")
	e.signup(t, "ada@example.com")
	second := e.mail.lastToken(t, "ada@example.com")
	if first == second {
		t.Fatal("the second signup sent the same link")
	}
	wantErr(t, "VerifyEmail(first link)", e.svc.VerifyEmail(t.Context(), meta, first), accounts.ErrInvalidToken)
	if err := e.svc.VerifyEmail(t.Context(), meta, second); err != nil {
		t.Fatalf("VerifyEmail(second link): %v", err)
	}
}

func TestVerificationLinks(t *testing.T) {
	e := newEnv(t)
	e.signup(t, "ada@example.com")
	expired := e.mail.lastToken(t, "ada@example.com")
	e.clock.Advance(24 * time.Hour)
	wantErr(t, "VerifyEmail(expired)", e.svc.VerifyEmail(t.Context(), meta, expired), accounts.ErrInvalidToken)
	wantErr(t, "VerifyEmail(unknown)", e.svc.VerifyEmail(t.Context(), meta, "spv_nonsense"), accounts.ErrInvalidToken)

	before := e.mail.count()
	for _, email := range []string{"nobody@example.com", "ADA@example.com"} {
		if err := e.svc.ResendVerification(t.Context(), meta, email); err != nil {
			t.Fatalf("ResendVerification(%s): %v", email, err)
		}
	}
	if e.mail.count() != before+1 {
		t.Fatalf("ResendVerification sent %d emails, want 1 (to the known address only)", e.mail.count()-before)
	}
	if err := e.svc.VerifyEmail(t.Context(), meta, e.mail.lastToken(t, "ada@example.com")); err != nil {
		t.Fatalf("VerifyEmail(resent link): %v", err)
	}
	if err := e.svc.ResendVerification(t.Context(), meta, "ada@example.com"); err != nil || e.mail.count() != before+1 {
		t.Errorf("ResendVerification of a verified address = %v and %d emails, want nil and none", err, e.mail.count()-before-1)
	}
}

// A reset link works for its own purpose only, and a verification link
// cannot reset a password.
func TestTokensHaveOnePurpose(t *testing.T) {
	e := newEnv(t)
	e.signup(t, "ada@example.com")
	verify := e.mail.lastToken(t, "ada@example.com")
	wantErr(t, "ResetPassword(verification link)", e.svc.ResetPassword(t.Context(), meta, verify, "a brand new passphrase"),
		accounts.ErrInvalidToken)
	if err := e.svc.VerifyEmail(t.Context(), meta, verify); err != nil {
		t.Fatalf("VerifyEmail after a misuse: %v", err)
	}
}

func TestLoginFailuresLookAlike(t *testing.T) {
	e := newEnv(t)
	e.verifiedUser(t, "ada@example.com")
	for _, tt := range []struct{ email, password string }{
		{"ada@example.com", "wrong password!"},
		{"nobody@example.com", password},
		{"", ""},
	} {
		_, err := e.svc.Login(t.Context(), meta, tt.email, tt.password)
		if err != accounts.ErrInvalidCredentials {
			t.Errorf("Login(%q, %q) = %v, want exactly ErrInvalidCredentials", tt.email, tt.password, err)
		}
	}
	recs, err := e.st.AuditLog(3)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Event != accounts.EventLoginFailed || r.IP != meta.IP {
			t.Errorf("audit record %+v, want a failed login from %s", r, meta.IP)
		}
	}
}

func TestRefreshRotatesAndCatchesReuse(t *testing.T) {
	e := newEnv(t)
	e.verifiedUser(t, "ada@example.com")
	first := e.login(t, "ada@example.com", password)
	other := e.login(t, "ada@example.com", password) // another device

	e.clock.Advance(10 * time.Minute)
	second, err := e.svc.Refresh(t.Context(), meta, first.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	c1, _ := e.signer.Verify(first.AccessToken)
	c2, err := e.signer.Verify(second.AccessToken)
	if err != nil || c2.SessionID != c1.SessionID || second.RefreshToken == first.RefreshToken {
		t.Fatalf("Refresh = %+v (claims %+v, %v), want a new refresh token in session %s", second, c2, err, c1.SessionID)
	}
	third, err := e.svc.Refresh(t.Context(), meta, second.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh(second): %v", err)
	}

	// A thief replays the first token: the whole family goes.
	_, err = e.svc.Refresh(t.Context(), meta, first.RefreshToken)
	wantErr(t, "Refresh(used token)", err, accounts.ErrTokenReused)
	_, err = e.svc.Refresh(t.Context(), meta, third.RefreshToken)
	wantErr(t, "Refresh(latest token of the revoked family)", err, accounts.ErrInvalidToken)
	if _, err := e.svc.Refresh(t.Context(), meta, other.RefreshToken); err != nil {
		t.Errorf("Refresh(another session) = %v, want it untouched", err)
	}
	if events := e.auditEvents(t); !strings.Contains(strings.Join(events, " "), accounts.EventRefreshReused) {
		t.Errorf("audit = %v, want %s", events, accounts.EventRefreshReused)
	}
}

func TestRefreshExpires(t *testing.T) {
	e := newEnv(t)
	e.verifiedUser(t, "ada@example.com")
	tokens := e.login(t, "ada@example.com", password)
	e.clock.Advance(30 * 24 * time.Hour)
	_, err := e.svc.Refresh(t.Context(), meta, tokens.RefreshToken)
	wantErr(t, "Refresh(after 30 days unused)", err, accounts.ErrInvalidToken)
	if n, err := e.svc.PruneSessions(t.Context()); err != nil || n != 1 {
		t.Errorf("PruneSessions = %d, %v, want the expired session pruned", n, err)
	}
	for _, token := range []string{"", "spr_malformed", "spr_ses-0.unknown", tokens.AccessToken} {
		_, err = e.svc.Refresh(t.Context(), meta, token)
		wantErr(t, "Refresh("+token+")", err, accounts.ErrInvalidToken)
	}
}

func TestLogout(t *testing.T) {
	e := newEnv(t)
	u := e.verifiedUser(t, "ada@example.com")
	ada := accounts.Caller{UserID: u.ID, Role: u.Role}
	a := e.login(t, "ada@example.com", password)
	b := e.login(t, "ada@example.com", password)
	next, err := e.svc.Refresh(t.Context(), meta, a.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Logout(t.Context(), meta, ada, a.RefreshToken); err != nil { // an already rotated token names the session too
		t.Fatalf("Logout: %v", err)
	}
	_, err = e.svc.Refresh(t.Context(), meta, next.RefreshToken)
	wantErr(t, "Refresh after logout", err, accounts.ErrInvalidToken)
	wantErr(t, "Logout again", e.svc.Logout(t.Context(), meta, ada, a.RefreshToken), accounts.ErrInvalidToken)
	if _, err := e.svc.Refresh(t.Context(), meta, b.RefreshToken); err != nil {
		t.Errorf("Refresh(another session) = %v, want it untouched", err)
	}
}

// A session ends when its user asks, or an admin, with a user's access
// token or an API token; anyone else is refused and audited, and the
// session goes on.
func TestLogoutOwnSessionOrAdmin(t *testing.T) {
	e := newEnv(t)
	ann := e.verifiedUser(t, "ann@example.com")
	bob := e.verifiedUser(t, "bob@example.com")
	session := e.login(t, "ann@example.com", password)
	refused := []struct {
		actor  string
		caller accounts.Caller
	}{
		{"bob", accounts.Caller{UserID: bob.ID, Role: accounts.RoleCustomer}},
		{"oscar", accounts.Caller{UserID: "usr-oscar", Role: accounts.RoleOperator}},
		{"ci", accounts.Caller{Role: accounts.RoleOperator}}, // an operator's API token
		{"", accounts.Caller{}},
	}
	for _, tt := range refused {
		err := e.svc.Logout(t.Context(), accounts.Meta{IP: meta.IP, Actor: tt.actor}, tt.caller, session.RefreshToken)
		wantErr(t, fmt.Sprintf("Logout(ann's session) by %+v", tt.caller), err, accounts.ErrNotSessionOwner)
		next, err := e.svc.Refresh(t.Context(), meta, session.RefreshToken)
		if err != nil {
			t.Fatalf("Refresh(ann's session) after %+v tried to end it: %v, want it going on", tt.caller, err)
		}
		session = next
	}
	recs, err := e.st.AuditLog(100)
	if err != nil {
		t.Fatal(err)
	}
	var actors []string
	for _, r := range recs {
		if r.Event == accounts.EventLogoutRefused && r.UserID == ann.ID && strings.HasPrefix(r.Detail, "session=ses-") {
			actors = append(actors, r.Actor)
		}
	}
	if want := []string{"bob", "oscar", "ci", ""}; !equal(actors, want) {
		t.Errorf("%s audited by %q, want %q", accounts.EventLogoutRefused, actors, want)
	}

	for _, caller := range []accounts.Caller{
		{UserID: ann.ID, Role: accounts.RoleCustomer},
		{UserID: "usr-ada", Role: accounts.RoleAdmin},
		{Role: accounts.RoleAdmin}, // an admin's API token
	} {
		session := e.login(t, "ann@example.com", password)
		if err := e.svc.Logout(t.Context(), meta, caller, session.RefreshToken); err != nil {
			t.Errorf("Logout(ann's session) by %+v: %v", caller, err)
		}
		_, err := e.svc.Refresh(t.Context(), meta, session.RefreshToken)
		wantErr(t, fmt.Sprintf("Refresh after %+v ended the session", caller), err, accounts.ErrInvalidToken)
	}
}

func TestPasswordReset(t *testing.T) {
	e := newEnv(t)
	e.verifiedUser(t, "ada@example.com")
	sessions := []accounts.Tokens{e.login(t, "ada@example.com", password), e.login(t, "ada@example.com", password)}

	before := e.mail.count()
	if err := e.svc.RequestPasswordReset(t.Context(), meta, "nobody@example.com"); err != nil {
		t.Fatalf("RequestPasswordReset(unknown) = %v, want nil", err)
	}
	if e.mail.count() != before {
		t.Fatal("RequestPasswordReset(unknown) sent an email")
	}
	if err := e.svc.RequestPasswordReset(t.Context(), meta, "Ada@example.com"); err != nil {
		t.Fatalf("RequestPasswordReset: %v", err)
	}
	older := e.mail.lastToken(t, "ada@example.com")
	if err := e.svc.RequestPasswordReset(t.Context(), meta, "ada@example.com"); err != nil {
		t.Fatalf("RequestPasswordReset: %v", err)
	}
	token := e.mail.lastToken(t, "ada@example.com")
	wantErr(t, "ResetPassword(superseded link)", e.svc.ResetPassword(t.Context(), meta, older, "a brand new passphrase"),
		accounts.ErrInvalidToken)

	wantErr(t, "ResetPassword(weak)", e.svc.ResetPassword(t.Context(), meta, token, "1234567890"), accounts.ErrWeakPassword)
	if err := e.svc.ResetPassword(t.Context(), meta, token, "a brand new passphrase"); err != nil {
		t.Fatalf("ResetPassword after a refused password: %v", err)
	}
	wantErr(t, "ResetPassword(used link)", e.svc.ResetPassword(t.Context(), meta, token, "yet another passphrase"),
		accounts.ErrInvalidToken)

	for _, s := range sessions {
		_, err := e.svc.Refresh(t.Context(), meta, s.RefreshToken)
		wantErr(t, "Refresh(session from before the reset)", err, accounts.ErrInvalidToken)
	}
	_, err := e.svc.Login(t.Context(), meta, "ada@example.com", password)
	wantErr(t, "Login(old password)", err, accounts.ErrInvalidCredentials)
	e.login(t, "ada@example.com", "a brand new passphrase")

	if err := e.svc.RequestPasswordReset(t.Context(), meta, "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	expired := e.mail.lastToken(t, "ada@example.com")
	e.clock.Advance(time.Hour)
	wantErr(t, "ResetPassword(expired link)", e.svc.ResetPassword(t.Context(), meta, expired, "yet another passphrase"),
		accounts.ErrInvalidToken)
}

// A reset link proves the address: an unverified user can log in after it.
func TestPasswordResetVerifiesAddress(t *testing.T) {
	e := newEnv(t)
	e.signup(t, "ada@example.com")
	if err := e.svc.RequestPasswordReset(t.Context(), meta, "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.ResetPassword(t.Context(), meta, e.mail.lastToken(t, "ada@example.com"), "a brand new passphrase"); err != nil {
		t.Fatalf("ResetPassword: %v", err)
	}
	e.login(t, "ada@example.com", "a brand new passphrase")
}

func TestChangePassword(t *testing.T) {
	e := newEnv(t)
	u := e.verifiedUser(t, "ada@example.com")
	old := e.login(t, "ada@example.com", password)

	_, err := e.svc.ChangePassword(t.Context(), meta, u.ID, "wrong password!", "a brand new passphrase")
	wantErr(t, "ChangePassword(wrong old password)", err, accounts.ErrInvalidCredentials)
	_, err = e.svc.ChangePassword(t.Context(), meta, u.ID, password, "qwertyuiop")
	wantErr(t, "ChangePassword(weak)", err, accounts.ErrWeakPassword)
	_, err = e.svc.ChangePassword(t.Context(), meta, "usr-nobody", password, "a brand new passphrase")
	wantErr(t, "ChangePassword(unknown user)", err, accounts.ErrNotFound)

	fresh, err := e.svc.ChangePassword(t.Context(), meta, u.ID, password, "a brand new passphrase")
	if err != nil {
		t.Fatalf("ChangePassword: %v", err)
	}
	_, err = e.svc.Refresh(t.Context(), meta, old.RefreshToken)
	wantErr(t, "Refresh(session from before the change)", err, accounts.ErrInvalidToken)
	if _, err := e.svc.Refresh(t.Context(), meta, fresh.RefreshToken); err != nil {
		t.Errorf("Refresh(session the change returned) = %v", err)
	}
	e.login(t, "ada@example.com", "a brand new passphrase")
}

func ptr(s string) *string { return &s }

func TestUpdateMe(t *testing.T) {
	e := newEnv(t)
	u := e.verifiedUser(t, "ada@example.com")
	e.clock.Advance(time.Minute)

	got, err := e.svc.UpdateMe(t.Context(), meta, u.ID, accounts.ProfilePatch{FirstName: ptr(" Augusta "), Company: ptr("Babbage & Co")})
	if err != nil {
		t.Fatalf("UpdateMe: %v", err)
	}
	if got.User.FirstName != "Augusta" || got.User.LastName != "Lovelace" || got.Customer.Company != "Babbage & Co" ||
		!got.User.UpdatedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("UpdateMe = %+v, want first name and company changed, last name kept", got)
	}
	if me, _ := e.svc.Me(t.Context(), u.ID); me.User != got.User || *me.Customer != *got.Customer {
		t.Errorf("Me = %+v, want %+v", me, got)
	}
	_, err = e.svc.UpdateMe(t.Context(), meta, u.ID, accounts.ProfilePatch{LastName: ptr(strings.Repeat("x", 101))})
	wantErr(t, "UpdateMe(long name)", err, accounts.ErrInvalidInput)
	_, err = e.svc.UpdateMe(t.Context(), meta, "usr-nobody", accounts.ProfilePatch{})
	wantErr(t, "UpdateMe(unknown user)", err, accounts.ErrNotFound)
	_, err = e.svc.Me(t.Context(), "usr-nobody")
	wantErr(t, "Me(unknown user)", err, accounts.ErrNotFound)
}

func TestAPITokens(t *testing.T) {
	e := newEnv(t)
	op := accounts.Meta{IP: meta.IP, Actor: "alice"}
	_, _, err := e.svc.CreateAPIToken(t.Context(), op, "ci", accounts.RoleCustomer)
	wantErr(t, "CreateAPIToken(customer role)", err, accounts.ErrInvalidInput)
	_, _, err = e.svc.CreateAPIToken(t.Context(), op, " ", accounts.RoleOperator)
	wantErr(t, "CreateAPIToken(no name)", err, accounts.ErrInvalidInput)

	token, info, err := e.svc.CreateAPIToken(t.Context(), op, "ci", accounts.RoleOperator)
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	if rec, err := e.st.LookupAPIToken(token); err != nil || rec != info.APIToken {
		t.Errorf("LookupAPIToken = %+v, %v, want %+v", rec, err, info.APIToken)
	}
	list, err := e.svc.ListAPITokens(t.Context())
	if err != nil || len(list) != 1 || list[0] != info {
		t.Errorf("ListAPITokens = %+v, %v, want [%+v]", list, err, info)
	}
	if err := e.svc.RevokeAPIToken(t.Context(), op, info.ID); err != nil {
		t.Fatalf("RevokeAPIToken: %v", err)
	}
	if _, err := e.st.LookupAPIToken(token); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LookupAPIToken(revoked) = %v, want ErrNotFound", err)
	}
	wantErr(t, "RevokeAPIToken again", e.svc.RevokeAPIToken(t.Context(), op, info.ID), accounts.ErrNotFound)

	recs, err := e.st.AuditLog(10)
	if err != nil || len(recs) != 2 || recs[0].Event != accounts.EventAPITokenCreated || recs[1].Event != accounts.EventAPITokenRevoked ||
		recs[0].Actor != "alice" || !strings.Contains(recs[0].Detail, info.ID) {
		t.Errorf("audit = %+v, %v, want created and revoked by alice, naming %s", recs, err, info.ID)
	}
}

func TestCreateOperator(t *testing.T) {
	e := newEnv(t)
	op := accounts.Meta{IP: meta.IP, Actor: "alice"}
	_, err := e.svc.CreateOperator(t.Context(), op, "oscar@stackpro.example", password, "Oscar", "O", accounts.RoleCustomer)
	wantErr(t, "CreateOperator(customer role)", err, accounts.ErrInvalidInput)
	_, err = e.svc.CreateOperator(t.Context(), op, "oscar@stackpro.example", "short", "Oscar", "O", accounts.RoleOperator)
	wantErr(t, "CreateOperator(weak password)", err, accounts.ErrWeakPassword)

	u, err := e.svc.CreateOperator(t.Context(), op, " Oscar@StackPro.example", password, "Oscar", "O", accounts.RoleOperator)
	if err != nil {
		t.Fatalf("CreateOperator: %v", err)
	}
	if u.Role != accounts.RoleOperator || u.CustomerID != "" || u.Email != "oscar@stackpro.example" {
		t.Errorf("operator = %+v", u)
	}
	tokens := e.login(t, "oscar@stackpro.example", password) // verified: logs in at once
	if tokens.User.ID != u.ID {
		t.Errorf("logged in as %s, want %s", tokens.User.ID, u.ID)
	}
	if me, err := e.svc.Me(t.Context(), u.ID); err != nil || me.Customer != nil {
		t.Errorf("Me(operator) = %+v, %v, want no customer", me, err)
	}
	_, err = e.svc.CreateOperator(t.Context(), op, "oscar@stackpro.example", password, "Oscar", "O", accounts.RoleAdmin)
	wantErr(t, "CreateOperator(taken)", err, accounts.ErrInvalidInput)
}

// After every flow, the data file holds no password and no token in clear.
func TestNoSecretsInStore(t *testing.T) {
	e := newEnv(t)
	u := e.verifiedUser(t, "ada@example.com")
	tokens := e.login(t, "ada@example.com", password)
	next, err := e.svc.Refresh(t.Context(), meta, tokens.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = e.svc.Login(t.Context(), meta, "ada@example.com", "a mistyped passphrase")
	if err := e.svc.RequestPasswordReset(t.Context(), meta, "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	reset := e.mail.lastToken(t, "ada@example.com")
	apiToken, _, err := e.svc.CreateAPIToken(t.Context(), meta, "ci", accounts.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	changed, err := e.svc.ChangePassword(t.Context(), meta, u.ID, password, "a brand new passphrase")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{password, "a mistyped passphrase", "a brand new passphrase", tokens.RefreshToken,
		next.RefreshToken, reset, apiToken, changed.RefreshToken} {
		body := secret
		if _, random, ok := strings.Cut(secret, "_"); ok {
			body = random // the prefix alone is no secret
		}
		if bytes.Contains(raw, []byte(body)) {
			t.Errorf("the data file holds %q in clear", secret)
		}
	}
}

// BenchmarkLogin shows that a login for an unknown address costs what one
// for a known address does, with the production hasher: the answer's
// timing tells nothing.
func BenchmarkLogin(b *testing.B) {
	e := newEnvWith(b, accounts.DefaultHasher)
	e.verifiedUser(b, "ada@example.com")
	for _, bb := range []struct{ name, email, password string }{
		{"known", "ada@example.com", password},
		{"known-wrong-password", "ada@example.com", "wrong password!"},
		{"unknown", "nobody@example.com", password},
	} {
		b.Run(bb.name, func(b *testing.B) {
			for b.Loop() {
				_, _ = e.svc.Login(b.Context(), meta, bb.email, bb.password)
			}
		})
	}
}
