// Package accounts decides who may use StackPro: users and the customers
// they belong to, passwords, sessions (short-lived signed access tokens and
// refresh tokens that rotate on every use), emailed one-time tokens,
// operator API tokens, and an audit record of every auth event. It does no
// HTTP: dashboard-api serves it, rate limits included.
//
// Supabase Auth (GoTrue) with email confirmations on is the bar; where it
// leaves a choice, this package takes the stricter one:
//
//   - Login needs a verified address. A correct password for an unverified
//     one gets ErrEmailNotVerified; anything else gets ErrInvalidCredentials,
//     as late for an unknown address as for a known one.
//   - Signing up with a taken address answers like a success and stores
//     nothing; the address's owner is emailed a new verification link if
//     they never verified, else a notice that someone tried to sign up.
//   - Password reset and resend always answer nil, whoever the address.
//   - A refresh token is good once. Presenting it again revokes its whole
//     family (the session), with no grace period: two tabs racing to
//     refresh log each other out, which is the price of catching a thief.
//   - Resetting or changing a password revokes every session of the user;
//     a change answers with a fresh session for the caller.
//   - Logging out takes the caller as well as the refresh token: a session
//     is ended by its own user or by an admin, and a refusal is audited.
//   - A refresh token reads spr_<session id>.<32 random bytes, base64url>:
//     the session id finds the family without a scan and grants nothing.
//
// Secrets (refresh, verification and reset tokens) are stored as their
// SHA-256 only, and neither they nor passwords reach the audit log.
package accounts

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/stackpro/stackpro/controlplane/audit"
	"github.com/stackpro/stackpro/controlplane/fault"
)

// Store is what accounts keeps its records in.
type Store interface {
	CreateUser(u User, passwordHash string, c Customer) error
	User(id string) (User, error)
	UserByEmail(email string) (User, error)
	UpdateUser(id string, update func(*User) error) (User, error)
	PasswordHash(userID string) (string, error)
	SetPassword(userID, passwordHash string) error
	Customer(id string) (Customer, error)
	UpdateCustomer(id string, update func(*Customer) error) (Customer, error)

	PutOneTimeToken(token string, t OneTimeToken) error
	OneTimeToken(token, purpose string, now time.Time) (OneTimeToken, error)
	UseOneTimeToken(token, purpose string, now time.Time) (OneTimeToken, error)

	PutRefreshToken(token string, rt RefreshToken) error
	RotateRefreshToken(sessionID, token, next string, now time.Time, ttl time.Duration) (RefreshToken, error)
	RevokeRefreshFamily(sessionID, token string, allow func(RefreshToken) error) (RefreshToken, error)
	PruneSessions(now time.Time) (int, error)

	CreateAPIToken(name string, role Role, now time.Time) (string, error)
	ListAPITokens() ([]APITokenInfo, error)
	RevokeAPIToken(id string) error

	AppendAudit(rec audit.Record) error
}

// Mailer sends a plain-text email.
type Mailer interface {
	Send(ctx context.Context, to, subject, text string) error
}

// Errors callers test for (fault errors: their messages are written for
// a client).
var (
	ErrInvalidCredentials = fault.New(fault.Unauthorized, "invalid email or password")
	ErrEmailNotVerified   = fault.New(fault.Forbidden, "email address not verified")
	// ErrInvalidToken is every refusal of a token: unknown, expired,
	// used, badly signed.
	ErrInvalidToken = fault.New(fault.Unauthorized, "invalid or expired token")
	// ErrTokenReused is a rotated refresh token presented again; its
	// session is revoked. It is an ErrInvalidToken too.
	ErrTokenReused = fault.Wrap(fault.Unauthorized, ErrInvalidToken, "refresh token already used; session revoked")
	// ErrInvalidInput is every refusal of an input; its problems say why.
	ErrInvalidInput = fault.New(fault.Invalid, "invalid input")
	// ErrNotFound is an unknown user or API token.
	ErrNotFound = fault.New(fault.NotFound, "not found")
	// ErrNotSessionOwner is a logout of a session that is neither the
	// caller's own nor asked by an admin.
	ErrNotSessionOwner = fault.New(fault.Forbidden, "the session is another user's: only its user or an admin may end it")
)

// invalid is ErrInvalidInput with problems, nil when there are none.
func invalid(problems ...error) error {
	if err := errors.Join(problems...); err != nil {
		return ErrInvalidInput.With(err)
	}
	return nil
}

// Audit events.
const (
	EventSignup             = "signup"
	EventSignupTaken        = "signup_address_taken"
	EventVerificationSent   = "verification_sent"
	EventEmailVerified      = "email_verified"
	EventLogin              = "login"
	EventLoginFailed        = "login_failed"
	EventLoginUnverified    = "login_unverified"
	EventLogout             = "logout"
	EventLogoutRefused      = "logout_refused"
	EventRefreshReused      = "refresh_token_reused"
	EventResetRequested     = "password_reset_requested"
	EventPasswordReset      = "password_reset"
	EventPasswordChanged    = "password_changed"
	EventPasswordChangeFail = "password_change_failed"
	EventProfileUpdated     = "profile_updated"
	EventOperatorCreated    = "operator_created"
	EventAPITokenCreated    = "api_token_created"
	EventAPITokenRevoked    = "api_token_revoked"
)

// StatusTrial is the status of a customer who signed up and has not paid.
const StatusTrial = "trial"

// Purposes of one-time tokens.
const (
	purposeVerify = "verify_email"
	purposeReset  = "reset_password"
)

// Token prefixes say what a token is, to people and to secret scanners.
// The random part is 32 bytes in base64url.
const (
	prefixRefresh = "spr_"
	prefixVerify  = "spv_"
	prefixReset   = "spw_"
)

// Options configure a Service.
type Options struct {
	// Hasher hashes new passwords; DefaultHasher if zero.
	Hasher Hasher
	// Plans are the plans a signup may choose.
	Plans []string
	// AppURL is the frontend's base URL; emails link to
	// AppURL/verify-email?token=… and AppURL/reset-password?token=….
	AppURL string
	// RefreshTTL is how long a refresh token stays good unused; 30 days if
	// zero. Each rotation starts it again.
	RefreshTTL time.Duration
	// VerifyTTL is a verification link's lifetime; 24 hours if zero.
	VerifyTTL time.Duration
	// ResetTTL is a password reset link's lifetime; 1 hour if zero.
	ResetTTL time.Duration
	// TrialPeriod is how long a new customer's trial lasts; 7 days if zero.
	TrialPeriod time.Duration
	Now         func() time.Time // time.Now if nil
	Log         *slog.Logger     // discarded if nil
}

// Service runs the account flows.
type Service struct {
	st        Store
	signer    *Signer
	mail      Mailer
	o         Options
	dummyHash string
}

// NewService returns a Service keeping its records in st, signing access
// tokens with signer and emailing through mail.
func NewService(st Store, signer *Signer, mail Mailer, o Options) *Service {
	if o.Hasher == (Hasher{}) {
		o.Hasher = DefaultHasher
	}
	o.RefreshTTL = orDefault(o.RefreshTTL, 30*24*time.Hour)
	o.VerifyTTL = orDefault(o.VerifyTTL, 24*time.Hour)
	o.ResetTTL = orDefault(o.ResetTTL, time.Hour)
	o.TrialPeriod = orDefault(o.TrialPeriod, 7*24*time.Hour)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{st: st, signer: signer, mail: mail, o: o, dummyHash: o.Hasher.DummyHash()}
}

// Meta is where a request came from, for the audit log.
type Meta struct {
	IP        string
	UserAgent string
	// Actor is who is authenticated for the request, when someone is (an
	// operator's user id or API token name).
	Actor string
}

// Caller is who asks for something only some may do: a user, or an
// operator's API token, which has a role and no user.
type Caller struct {
	UserID string
	Role   Role
}

// Tokens are a session's credentials.
type Tokens struct {
	AccessToken  string    `json:"access_token"`
	ExpiresAt    time.Time `json:"expires_at"` // the access token's
	RefreshToken string    `json:"refresh_token"`
	User         User      `json:"user"`
}

// Profile is what a user sees of themself.
type Profile struct {
	User     User      `json:"user"`
	Customer *Customer `json:"customer,omitempty"` // nil for operators
}

// SignupInput is what a new customer gives.
type SignupInput struct {
	Email     string
	Password  string
	FirstName string
	LastName  string
	Company   string
	Plan      string
}

// ProfilePatch changes the fields it sets.
type ProfilePatch struct {
	FirstName *string
	LastName  *string
	Company   *string
}

// Limits on names, in characters.
const (
	maxNameLen  = 100
	maxEmailLen = 254
)

// Signup creates a user and their customer (on trial) and emails a link
// to verify the address. A taken address answers like a success: the user
// returned is stored nowhere, and the owner is emailed instead.
func (s *Service) Signup(ctx context.Context, meta Meta, in SignupInput) (User, error) {
	in.Email = normalizeEmail(in.Email)
	errs := []error{checkEmail(in.Email), checkName("first_name", in.FirstName), checkName("last_name", in.LastName),
		checkName("company", in.Company)}
	if !slices.Contains(s.o.Plans, in.Plan) {
		errs = append(errs, fmt.Errorf("unknown plan %q", in.Plan))
	}
	if err := invalid(errs...); err != nil {
		return User{}, err
	}
	if err := CheckPassword(in.Password, in.Email); err != nil {
		return User{}, err
	}
	now := s.o.Now()
	u := User{ID: newID("usr-"), Email: in.Email, Role: RoleCustomer, CustomerID: newID("cus-"),
		FirstName: strings.TrimSpace(in.FirstName), LastName: strings.TrimSpace(in.LastName), CreatedAt: now, UpdatedAt: now}
	c := Customer{ID: u.CustomerID, Company: strings.TrimSpace(in.Company), Plan: in.Plan, Status: StatusTrial,
		TrialEndsAt: now.Add(s.o.TrialPeriod), CreatedAt: now, UpdatedAt: now}
	// Hashed even when the address is taken, so both answers take as long.
	err := s.st.CreateUser(u, s.o.Hasher.Hash(in.Password), c)
	if errors.Is(err, ErrEmailTaken) {
		return u, s.signupTaken(ctx, meta, in.Email)
	}
	if err != nil {
		return User{}, fmt.Errorf("accounts: signup: %w", err)
	}
	s.audit(meta, EventSignup, u.ID, u.Email, "plan="+c.Plan)
	return u, s.sendVerification(ctx, meta, u)
}

func (s *Service) signupTaken(ctx context.Context, meta Meta, email string) error {
	owner, err := s.st.UserByEmail(email)
	if err != nil {
		return fmt.Errorf("accounts: signup: %w", err)
	}
	s.audit(meta, EventSignupTaken, owner.ID, email, "")
	if owner.EmailVerifiedAt.IsZero() {
		return s.sendVerification(ctx, meta, owner)
	}
	s.send(ctx, email, "Someone tried to sign up with your address",
		"Someone tried to create a StackPro account with this address, which already has one.\n\n"+
			"If it was you, log in, or reset your password at "+s.o.AppURL+"/reset-password.\n"+
			"If it was not, you can ignore this message.\n")
	return nil
}

// sendVerification emails u a new link to verify their address.
func (s *Service) sendVerification(ctx context.Context, meta Meta, u User) error {
	token, err := s.newOneTimeToken(u.ID, purposeVerify, prefixVerify, s.o.VerifyTTL)
	if err != nil {
		return err
	}
	s.audit(meta, EventVerificationSent, u.ID, u.Email, "")
	s.send(ctx, u.Email, "Confirm your email address",
		"Welcome to StackPro. Confirm your email address by opening this link:\n\n"+
			s.o.AppURL+"/verify-email?token="+token+"\n\n"+
			"The link expires in "+s.o.VerifyTTL.String()+". If you did not sign up, ignore this message.\n")
	return nil
}

func (s *Service) newOneTimeToken(userID, purpose, prefix string, ttl time.Duration) (string, error) {
	token := newToken(prefix)
	err := s.st.PutOneTimeToken(token, OneTimeToken{Purpose: purpose, UserID: userID, ExpiresAt: s.o.Now().Add(ttl)})
	if err != nil {
		return "", fmt.Errorf("accounts: %w", err)
	}
	return token, nil
}

// send emails without failing the flow: the records are written by then,
// and an error would tell a caller whether the address has an account.
// The user can ask for the email again.
func (s *Service) send(ctx context.Context, to, subject, text string) {
	if err := s.mail.Send(ctx, to, subject, text); err != nil {
		s.o.Log.Error("sending email", "subject", subject, "err", err)
	}
}

// VerifyEmail marks the address of the token's user verified. The token
// is good once.
func (s *Service) VerifyEmail(ctx context.Context, meta Meta, token string) error {
	t, err := s.useToken(token, purposeVerify)
	if err != nil {
		return err
	}
	now := s.o.Now()
	u, err := s.st.UpdateUser(t.UserID, func(rec *User) error {
		if rec.EmailVerifiedAt.IsZero() {
			rec.EmailVerifiedAt, rec.UpdatedAt = now, now
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("accounts: verifying email: %w", err)
	}
	s.audit(meta, EventEmailVerified, u.ID, u.Email, "")
	return nil
}

// useToken redeems a one-time token; a refusal wraps ErrInvalidToken.
func (s *Service) useToken(token, purpose string) (OneTimeToken, error) {
	t, err := s.st.UseOneTimeToken(token, purpose, s.o.Now())
	return t, tokenErr(err)
}

// tokenErr turns the store's answers for a token the caller holds into
// ErrInvalidToken; other errors say where they came from.
func tokenErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fault.ErrNotFound), errors.Is(err, ErrExpired):
		return fmt.Errorf("%w: %w", ErrInvalidToken, err)
	default:
		return fmt.Errorf("accounts: %w", err)
	}
}

// ResendVerification emails a new verification link if the address
// belongs to an unverified user. It answers nil either way.
func (s *Service) ResendVerification(ctx context.Context, meta Meta, email string) error {
	u, err := s.userByEmail(email)
	if err != nil || u.ID == "" || !u.EmailVerifiedAt.IsZero() {
		return err
	}
	return s.sendVerification(ctx, meta, u)
}

// userByEmail returns the user with the address, or a zero User if there
// is none.
func (s *Service) userByEmail(email string) (User, error) {
	u, err := s.st.UserByEmail(normalizeEmail(email))
	if err != nil && !errors.Is(err, fault.ErrNotFound) {
		return u, fmt.Errorf("accounts: %w", err)
	}
	return u, nil
}

// Login checks an address and password and starts a session.
func (s *Service) Login(ctx context.Context, meta Meta, email, password string) (Tokens, error) {
	u, err := s.userByEmail(email)
	if err != nil {
		return Tokens{}, err
	}
	hash := s.dummyHash
	if u.ID != "" {
		if hash, err = s.st.PasswordHash(u.ID); err != nil {
			return Tokens{}, fmt.Errorf("accounts: login: %w", err)
		}
	}
	ok, err := VerifyPassword(hash, password)
	if err != nil {
		return Tokens{}, fmt.Errorf("accounts: login: %w", err)
	}
	if !ok || u.ID == "" {
		s.audit(meta, EventLoginFailed, u.ID, normalizeEmail(email), "")
		return Tokens{}, ErrInvalidCredentials
	}
	if u.EmailVerifiedAt.IsZero() {
		s.audit(meta, EventLoginUnverified, u.ID, u.Email, "")
		return Tokens{}, ErrEmailNotVerified
	}
	tokens, err := s.startSession(u)
	if err != nil {
		return Tokens{}, err
	}
	s.audit(meta, EventLogin, u.ID, u.Email, "")
	return tokens, nil
}

// startSession opens a new refresh token family for u.
func (s *Service) startSession(u User) (Tokens, error) {
	rt := RefreshToken{SessionID: newID("ses-"), UserID: u.ID, ExpiresAt: s.o.Now().Add(s.o.RefreshTTL)}
	refresh := newRefreshToken(rt.SessionID)
	if err := s.st.PutRefreshToken(refresh, rt); err != nil {
		return Tokens{}, fmt.Errorf("accounts: %w", err)
	}
	return s.tokens(u, rt.SessionID, refresh)
}

func (s *Service) tokens(u User, sessionID, refresh string) (Tokens, error) {
	access, exp, err := s.signer.Sign(Claims{Role: u.Role, CustomerID: u.CustomerID, SessionID: sessionID,
		RegisteredClaims: jwt.RegisteredClaims{Subject: u.ID}})
	if err != nil {
		return Tokens{}, err
	}
	return Tokens{AccessToken: access, ExpiresAt: exp, RefreshToken: refresh, User: u}, nil
}

// Refresh trades a refresh token for a new access token and the next
// refresh token of its family. A token presented a second time revokes
// the family and gets ErrTokenReused.
func (s *Service) Refresh(ctx context.Context, meta Meta, refreshToken string) (Tokens, error) {
	sessionID, err := refreshSession(refreshToken)
	if err != nil {
		return Tokens{}, err
	}
	next := newRefreshToken(sessionID)
	rt, err := s.st.RotateRefreshToken(sessionID, refreshToken, next, s.o.Now(), s.o.RefreshTTL)
	if errors.Is(err, ErrTokenReused) {
		s.audit(meta, EventRefreshReused, rt.UserID, "", "session="+rt.SessionID)
		return Tokens{}, ErrTokenReused
	}
	if err != nil {
		return Tokens{}, tokenErr(err)
	}
	u, err := s.st.User(rt.UserID)
	if err != nil {
		return Tokens{}, tokenErr(err)
	}
	return s.tokens(u, rt.SessionID, next)
}

// Logout revokes the session of a refresh token, used or not, if the
// caller is the session's user or an admin (a user's or an API token's
// role); anyone else gets ErrNotSessionOwner and the session goes on.
func (s *Service) Logout(ctx context.Context, meta Meta, caller Caller, refreshToken string) error {
	sessionID, err := refreshSession(refreshToken)
	if err != nil {
		return err
	}
	rt, err := s.st.RevokeRefreshFamily(sessionID, refreshToken, func(rt RefreshToken) error {
		owner := caller.UserID != "" && caller.UserID == rt.UserID
		if !owner && caller.Role != RoleAdmin {
			return ErrNotSessionOwner
		}
		return nil
	})
	if errors.Is(err, ErrNotSessionOwner) {
		s.audit(meta, EventLogoutRefused, rt.UserID, "", "session="+rt.SessionID)
		return ErrNotSessionOwner
	}
	if err != nil {
		return tokenErr(err)
	}
	s.audit(meta, EventLogout, rt.UserID, "", "session="+rt.SessionID)
	return nil
}

// PruneSessions deletes the sessions whose refresh tokens have all
// expired, and returns how many went. The control plane runs it now and
// then; sessions otherwise stay until logout or a password change.
func (s *Service) PruneSessions(ctx context.Context) (int, error) {
	n, err := s.st.PruneSessions(s.o.Now())
	if err != nil {
		return 0, fmt.Errorf("accounts: %w", err)
	}
	return n, nil
}

// RequestPasswordReset emails a single-use reset link if the address has
// an account. It answers nil either way.
func (s *Service) RequestPasswordReset(ctx context.Context, meta Meta, email string) error {
	u, err := s.userByEmail(email)
	if err != nil {
		return err
	}
	s.audit(meta, EventResetRequested, u.ID, normalizeEmail(email), "")
	if u.ID == "" {
		return nil
	}
	token, err := s.newOneTimeToken(u.ID, purposeReset, prefixReset, s.o.ResetTTL)
	if err != nil {
		return err
	}
	s.send(ctx, u.Email, "Reset your password",
		"Someone asked to reset the password of your StackPro account. To choose a new one, open this link:\n\n"+
			s.o.AppURL+"/reset-password?token="+token+"\n\n"+
			"The link works once and expires in "+s.o.ResetTTL.String()+". If you did not ask, ignore this message.\n")
	return nil
}

// ResetPassword sets a new password with a reset token and revokes every
// session of the user. The link proves the address, so an unverified one
// becomes verified. A password the policy refuses leaves the token good.
func (s *Service) ResetPassword(ctx context.Context, meta Meta, token, newPassword string) error {
	t, err := s.st.OneTimeToken(token, purposeReset, s.o.Now())
	if err != nil {
		return tokenErr(err)
	}
	u, err := s.st.User(t.UserID)
	if err != nil {
		return tokenErr(err)
	}
	if err := CheckPassword(newPassword, u.Email); err != nil {
		return err
	}
	hash := s.o.Hasher.Hash(newPassword)
	if _, err := s.useToken(token, purposeReset); err != nil {
		return err
	}
	if err := s.st.SetPassword(u.ID, hash); err != nil {
		return fmt.Errorf("accounts: resetting password: %w", err)
	}
	now := s.o.Now()
	_, err = s.st.UpdateUser(u.ID, func(rec *User) error {
		if rec.EmailVerifiedAt.IsZero() {
			rec.EmailVerifiedAt = now
		}
		rec.UpdatedAt = now
		return nil
	})
	if err != nil {
		return fmt.Errorf("accounts: resetting password: %w", err)
	}
	s.audit(meta, EventPasswordReset, u.ID, u.Email, "")
	return nil
}

// ChangePassword replaces the password of user id after checking the old
// one, revokes every session of the user and starts a new one.
func (s *Service) ChangePassword(ctx context.Context, meta Meta, userID, oldPassword, newPassword string) (Tokens, error) {
	u, err := s.user(userID)
	if err != nil {
		return Tokens{}, err
	}
	hash, err := s.st.PasswordHash(u.ID)
	if err != nil {
		return Tokens{}, fmt.Errorf("accounts: changing password: %w", err)
	}
	ok, err := VerifyPassword(hash, oldPassword)
	if err != nil {
		return Tokens{}, fmt.Errorf("accounts: changing password: %w", err)
	}
	if !ok {
		s.audit(meta, EventPasswordChangeFail, u.ID, u.Email, "")
		return Tokens{}, ErrInvalidCredentials
	}
	if err := CheckPassword(newPassword, u.Email); err != nil {
		return Tokens{}, err
	}
	if err := s.st.SetPassword(u.ID, s.o.Hasher.Hash(newPassword)); err != nil {
		return Tokens{}, fmt.Errorf("accounts: changing password: %w", err)
	}
	s.audit(meta, EventPasswordChanged, u.ID, u.Email, "")
	return s.startSession(u)
}

// user returns user id, or ErrNotFound.
func (s *Service) user(id string) (User, error) {
	u, err := s.st.User(id)
	if errors.Is(err, fault.ErrNotFound) {
		return u, fmt.Errorf("%w: user %s", ErrNotFound, id)
	}
	if err != nil {
		return u, fmt.Errorf("accounts: %w", err)
	}
	return u, nil
}

// Me returns the profile of user id.
func (s *Service) Me(ctx context.Context, userID string) (Profile, error) {
	u, err := s.user(userID)
	if err != nil || u.CustomerID == "" {
		return Profile{User: u}, err
	}
	c, err := s.st.Customer(u.CustomerID)
	if err != nil {
		return Profile{}, fmt.Errorf("accounts: %w", err)
	}
	return Profile{User: u, Customer: &c}, nil
}

// UpdateMe changes the names of user id and the company of their
// customer, and returns the profile.
func (s *Service) UpdateMe(ctx context.Context, meta Meta, userID string, p ProfilePatch) (Profile, error) {
	p = ProfilePatch{FirstName: trimmed(p.FirstName), LastName: trimmed(p.LastName), Company: trimmed(p.Company)}
	err := invalid(checkName("first_name", deref(p.FirstName)), checkName("last_name", deref(p.LastName)),
		checkName("company", deref(p.Company)))
	if err != nil {
		return Profile{}, err
	}
	now := s.o.Now()
	u, err := s.st.UpdateUser(userID, func(rec *User) error {
		setIf(&rec.FirstName, p.FirstName)
		setIf(&rec.LastName, p.LastName)
		rec.UpdatedAt = now
		return nil
	})
	if errors.Is(err, fault.ErrNotFound) {
		return Profile{}, fmt.Errorf("%w: user %s", ErrNotFound, userID)
	}
	if err != nil {
		return Profile{}, fmt.Errorf("accounts: %w", err)
	}
	if p.Company != nil && u.CustomerID != "" {
		_, err := s.st.UpdateCustomer(u.CustomerID, func(c *Customer) error {
			c.Company, c.UpdatedAt = *p.Company, now
			return nil
		})
		if err != nil {
			return Profile{}, fmt.Errorf("accounts: %w", err)
		}
	}
	s.audit(meta, EventProfileUpdated, u.ID, u.Email, "")
	return s.Me(ctx, userID)
}

func trimmed(v *string) *string {
	if v == nil {
		return nil
	}
	t := strings.TrimSpace(*v)
	return &t
}

func deref(v *string) string {
	if v == nil {
		return ""
	}
	return *v
}

func setIf(dst *string, v *string) {
	if v != nil {
		*dst = *v
	}
}

// CreateOperator creates an operator's or an admin's user: no customer,
// the address taken as verified (an admin vouches for it), the password
// held to the same policy as everyone's.
func (s *Service) CreateOperator(ctx context.Context, meta Meta, email, password, firstName, lastName string, role Role) (User, error) {
	email = normalizeEmail(email)
	errs := []error{checkEmail(email), checkName("first_name", firstName), checkName("last_name", lastName)}
	if role != RoleOperator && role != RoleAdmin {
		errs = append(errs, fmt.Errorf("role must be %s or %s", RoleOperator, RoleAdmin))
	}
	if err := invalid(errs...); err != nil {
		return User{}, err
	}
	if err := CheckPassword(password, email); err != nil {
		return User{}, err
	}
	now := s.o.Now()
	u := User{ID: newID("usr-"), Email: email, Role: role, FirstName: strings.TrimSpace(firstName),
		LastName: strings.TrimSpace(lastName), EmailVerifiedAt: now, CreatedAt: now, UpdatedAt: now}
	err := s.st.CreateUser(u, s.o.Hasher.Hash(password), Customer{})
	if errors.Is(err, ErrEmailTaken) {
		return User{}, invalid(fmt.Errorf("%s already has an account", email))
	}
	if err != nil {
		return User{}, fmt.Errorf("accounts: creating an operator: %w", err)
	}
	s.audit(meta, EventOperatorCreated, u.ID, u.Email, "role="+string(role))
	return u, nil
}

// CreateAPIToken mints an operator API token and returns it with its
// listing; the token itself is shown this once.
func (s *Service) CreateAPIToken(ctx context.Context, meta Meta, name string, role Role) (string, APITokenInfo, error) {
	name = strings.TrimSpace(name)
	var errs []error
	if name == "" {
		errs = append(errs, errors.New("name is required"))
	}
	errs = append(errs, checkName("name", name))
	if role != RoleOperator && role != RoleAdmin {
		errs = append(errs, fmt.Errorf("role must be %s or %s", RoleOperator, RoleAdmin))
	}
	if err := invalid(errs...); err != nil {
		return "", APITokenInfo{}, err
	}
	now := s.o.Now()
	token, err := s.st.CreateAPIToken(name, role, now)
	if err != nil {
		return "", APITokenInfo{}, fmt.Errorf("accounts: %w", err)
	}
	info := APITokenInfo{ID: APITokenID(token), APIToken: APIToken{Name: name, Role: role, CreatedAt: now}}
	s.audit(meta, EventAPITokenCreated, "", "", fmt.Sprintf("id=%s name=%q role=%s", info.ID, name, role))
	return token, info, nil
}

// ListAPITokens returns every API token's listing, oldest first.
func (s *Service) ListAPITokens(ctx context.Context) ([]APITokenInfo, error) {
	tokens, err := s.st.ListAPITokens()
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	return tokens, nil
}

// RevokeAPIToken deletes the API token listed as id.
func (s *Service) RevokeAPIToken(ctx context.Context, meta Meta, id string) error {
	err := s.st.RevokeAPIToken(id)
	if errors.Is(err, fault.ErrNotFound) {
		return fmt.Errorf("%w: API token %s", ErrNotFound, id)
	}
	if err != nil {
		return fmt.Errorf("accounts: %w", err)
	}
	s.audit(meta, EventAPITokenRevoked, "", "", "id="+id)
	return nil
}

// audit appends an event to the audit log. A failure is logged and does
// not fail the flow: the store failing will fail the next write anyway.
func (s *Service) audit(meta Meta, event, userID, email, detail string) {
	rec := audit.Record{Time: s.o.Now(), Event: event, UserID: userID, Email: email,
		Actor: meta.Actor, IP: meta.IP, UserAgent: meta.UserAgent, Detail: detail}
	if err := s.st.AppendAudit(rec); err != nil {
		s.o.Log.Error("appending auth audit record", "event", event, "user", userID, "err", err)
	}
}

func normalizeEmail(email string) string { return strings.ToLower(strings.TrimSpace(email)) }

// checkEmail accepts a bare address (no display name) of sane length; its
// error is a problem for invalid.
func checkEmail(email string) error {
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || len(email) > maxEmailLen || !strings.Contains(email[strings.LastIndex(email, "@"):], ".") {
		return errors.New("email is not a valid address")
	}
	return nil
}

func checkName(field, v string) error {
	if utf8.RuneCountInString(v) > maxNameLen || !utf8.ValidString(v) || strings.ContainsFunc(v, isControl) {
		return fmt.Errorf("%s must be at most %d printable characters", field, maxNameLen)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// newID returns a random id with a readable prefix.
func newID(prefix string) string {
	var b [8]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// newToken returns 32 random bytes in base64url after a prefix that says
// what the token is.
func newToken(prefix string) string {
	var b [32]byte
	rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// newRefreshToken returns a refresh token of session id: spr_<id>.<random>.
// The session id finds the family without a scan; it grants nothing alone.
func newRefreshToken(sessionID string) string { return newToken(prefixRefresh + sessionID + ".") }

// refreshSession returns the session id a refresh token names.
func refreshSession(token string) (string, error) {
	rest, ok := strings.CutPrefix(token, prefixRefresh)
	sessionID, _, found := strings.Cut(rest, ".")
	if !ok || !found || sessionID == "" {
		return "", fmt.Errorf("%w: malformed refresh token", ErrInvalidToken)
	}
	return sessionID, nil
}
