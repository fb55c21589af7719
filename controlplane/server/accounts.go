package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/internal/config"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/controlplane/internal/secrets"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	dashboardapi "github.com/stackpro/stackpro/dashboard-api"
)

// audience is the aud of every access token the control plane signs.
const audience = "stackpro-api"

// newAccounts builds the accounts service, its signing keys in st.
func newAccounts(cfg config.Config, st *store.Store, sender mail.Sender, log *slog.Logger) (*accounts.Service, *accounts.Signer, error) {
	signer, err := accounts.NewSigner(st, accounts.SignerOptions{Issuer: cfg.BaseURL(), Audience: audience,
		AccessTTL: cfg.Auth.AccessTTL, RotateEvery: cfg.Auth.KeyRotation})
	if err != nil {
		return nil, nil, err
	}
	svc := accounts.NewService(st, signer, mailer{sender}, accounts.Options{Plans: slices.Sorted(maps.Keys(cfg.Plans)),
		AppURL: cfg.BaseURL(), RefreshTTL: cfg.Auth.RefreshTTL, Log: log.With("component", "accounts")})
	return svc, signer, nil
}

// newMailSender returns an SMTP relay when cfg names one, else a file
// outbox in the data dir.
func newMailSender(ctx context.Context, cfg config.Config, awsConfig func() (aws.Config, error)) (mail.Sender, error) {
	m := cfg.Mail
	if m.SMTP.Addr == "" {
		return mail.NewFileOutbox(filepath.Join(cfg.DataDir, "mail"), m.From)
	}
	var password string
	if m.SMTP.Password != "" {
		p, err := secrets.Resolve(ctx, m.SMTP.Password, awsConfig)
		if err != nil {
			return nil, fmt.Errorf("mail.smtp.password: %w", err)
		}
		password = p.Reveal()
	}
	return mail.NewSMTP(mail.SMTPOptions{Addr: m.SMTP.Addr, From: m.From, Username: m.SMTP.Username, Password: password,
		StartTLS: mail.StartTLS(m.SMTP.StartTLS)})
}

// pruneSessions deletes expired sessions every hour until ctx ends.
func pruneSessions(ctx context.Context, svc *accounts.Service, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := svc.PruneSessions(ctx); err != nil {
				log.Error("pruning expired sessions", "err", err)
			} else if n > 0 {
				log.Info("pruned expired sessions", "sessions", n)
			}
		}
	}
}

// mailer is a mail.Sender as accounts uses it.
type mailer struct{ mail.Sender }

func (m mailer) Send(ctx context.Context, to, subject, text string) error {
	return m.Sender.Send(ctx, mail.Message{To: to, Subject: subject, Text: text})
}

// authAPI serves the accounts service to dashboard-api.
type authAPI struct {
	svc    *accounts.Service
	signer *accounts.Signer
}

func acctMeta(m dashboardapi.Meta) accounts.Meta {
	return accounts.Meta{IP: m.IP, UserAgent: m.UserAgent, Actor: m.Actor}
}

// errTokenUser is what an API token gets for what only a user has.
func errTokenUser(what string) error {
	return fault.New(fault.Forbidden, "an API token has no %s", what)
}

func profile(u accounts.User, c *accounts.Customer) dashboardapi.Profile {
	p := dashboardapi.Profile{ID: u.ID, Email: u.Email, EmailVerified: !u.EmailVerifiedAt.IsZero(), Role: string(u.Role),
		FirstName: u.FirstName, LastName: u.LastName}
	if c != nil {
		p.Customer = &dashboardapi.Customer{ID: c.ID, Company: c.Company, Plan: c.Plan, Status: c.Status, TrialEndsAt: c.TrialEndsAt}
	}
	return p
}

func session(t accounts.Tokens, err error) (dashboardapi.Session, error) {
	if err != nil {
		return dashboardapi.Session{}, err
	}
	return dashboardapi.Session{AccessToken: t.AccessToken, TokenType: "bearer",
		ExpiresIn: int(time.Until(t.ExpiresAt).Round(time.Second).Seconds()), RefreshToken: t.RefreshToken,
		User: profile(t.User, nil)}, nil
}

func (a authAPI) Signup(ctx context.Context, req dashboardapi.SignupRequest, m dashboardapi.Meta) error {
	_, err := a.svc.Signup(ctx, acctMeta(m), accounts.SignupInput{Email: req.Email, Password: req.Password,
		FirstName: req.FirstName, LastName: req.LastName, Company: req.Company, Plan: req.Plan})
	return err
}

func (a authAPI) VerifyEmail(ctx context.Context, token string, m dashboardapi.Meta) error {
	return a.svc.VerifyEmail(ctx, acctMeta(m), token)
}

func (a authAPI) ResendVerification(ctx context.Context, email string, m dashboardapi.Meta) error {
	return a.svc.ResendVerification(ctx, acctMeta(m), email)
}

func (a authAPI) Login(ctx context.Context, email, password string, m dashboardapi.Meta) (dashboardapi.Session, error) {
	return session(a.svc.Login(ctx, acctMeta(m), email, password))
}

func (a authAPI) Refresh(ctx context.Context, refreshToken string, m dashboardapi.Meta) (dashboardapi.Session, error) {
	return session(a.svc.Refresh(ctx, acctMeta(m), refreshToken))
}

func (a authAPI) Logout(ctx context.Context, p dashboardapi.Principal, refreshToken string, m dashboardapi.Meta) error {
	caller := accounts.Caller{UserID: p.UserID, Role: accounts.Role(p.Role)}
	return a.svc.Logout(ctx, acctMeta(m), caller, refreshToken)
}

func (a authAPI) RequestPasswordReset(ctx context.Context, email string, m dashboardapi.Meta) error {
	return a.svc.RequestPasswordReset(ctx, acctMeta(m), email)
}

func (a authAPI) ResetPassword(ctx context.Context, token, password string, m dashboardapi.Meta) error {
	return a.svc.ResetPassword(ctx, acctMeta(m), token, password)
}

func (a authAPI) ChangePassword(ctx context.Context, p dashboardapi.Principal, oldPassword, newPassword string, m dashboardapi.Meta) (dashboardapi.Session, error) {
	if p.UserID == "" {
		return dashboardapi.Session{}, errTokenUser("password")
	}
	return session(a.svc.ChangePassword(ctx, acctMeta(m), p.UserID, oldPassword, newPassword))
}

func (a authAPI) Me(ctx context.Context, p dashboardapi.Principal) (dashboardapi.Profile, error) {
	if p.UserID == "" {
		return dashboardapi.Profile{}, errTokenUser("profile")
	}
	prof, err := a.svc.Me(ctx, p.UserID)
	if err != nil {
		return dashboardapi.Profile{}, err
	}
	return profile(prof.User, prof.Customer), nil
}

func (a authAPI) UpdateMe(ctx context.Context, p dashboardapi.Principal, patch dashboardapi.ProfilePatch) (dashboardapi.Profile, error) {
	if p.UserID == "" {
		return dashboardapi.Profile{}, errTokenUser("profile")
	}
	prof, err := a.svc.UpdateMe(ctx, accounts.Meta{Actor: p.UserID}, p.UserID,
		accounts.ProfilePatch{FirstName: patch.FirstName, LastName: patch.LastName, Company: patch.Company})
	if err != nil {
		return dashboardapi.Profile{}, err
	}
	return profile(prof.User, prof.Customer), nil
}

func (a authAPI) JWKS() ([]byte, error) { return a.signer.JWKS() }

func (a authAPI) CreateOperator(ctx context.Context, req dashboardapi.OperatorRequest, m dashboardapi.Meta) (dashboardapi.Profile, error) {
	u, err := a.svc.CreateOperator(ctx, acctMeta(m), req.Email, req.Password, req.FirstName, req.LastName, accounts.Role(req.Role))
	if err != nil {
		return dashboardapi.Profile{}, err
	}
	return profile(u, nil), nil
}

func apiToken(info accounts.APITokenInfo) dashboardapi.APIToken {
	return dashboardapi.APIToken{ID: info.ID, Name: info.Name, Role: string(info.Role), CreatedAt: info.CreatedAt}
}

func (a authAPI) CreateAPIToken(ctx context.Context, name, role string, m dashboardapi.Meta) (string, dashboardapi.APIToken, error) {
	token, info, err := a.svc.CreateAPIToken(ctx, acctMeta(m), name, accounts.Role(role))
	if err != nil {
		return "", dashboardapi.APIToken{}, err
	}
	return token, apiToken(info), nil
}

func (a authAPI) ListAPITokens(ctx context.Context) ([]dashboardapi.APIToken, error) {
	infos, err := a.svc.ListAPITokens(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]dashboardapi.APIToken, len(infos))
	for i, info := range infos {
		out[i] = apiToken(info)
	}
	return out, nil
}

func (a authAPI) RevokeAPIToken(ctx context.Context, id string, m dashboardapi.Meta) error {
	return a.svc.RevokeAPIToken(ctx, acctMeta(m), id)
}

// tokens resolves a bearer token: a user's access token (a JWT, verified
// with the signer) or an operator's API token (looked up by its hash).
type tokens struct {
	st     *store.Store
	signer *accounts.Signer
}

func (t tokens) Principal(token string) (dashboardapi.Principal, error) {
	if strings.Count(token, ".") == 2 {
		c, err := t.signer.Verify(token)
		if err != nil {
			return dashboardapi.Principal{}, err
		}
		return dashboardapi.Principal{Name: c.Subject, Role: string(c.Role), UserID: c.Subject, CustomerID: c.CustomerID}, nil
	}
	rec, err := t.st.LookupAPIToken(token)
	if errors.Is(err, store.ErrNotFound) {
		return dashboardapi.Principal{}, fault.Wrap(fault.Unauthorized, err, "unknown token")
	}
	if err != nil {
		return dashboardapi.Principal{}, err
	}
	return dashboardapi.Principal{Name: rec.Name, Role: string(rec.Role)}, nil
}
