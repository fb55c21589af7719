package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	netmail "net/mail"
	"net/smtp"
	"time"
)

// StartTLS says when SMTP upgrades its connection with STARTTLS.
type StartTLS string

const (
	// StartTLSRequired refuses to send unless the server offers STARTTLS
	// and the upgrade, certificate checked, succeeds.
	StartTLSRequired StartTLS = "required"
	// StartTLSOpportunistic upgrades when the server offers STARTTLS (and
	// then fails if the upgrade does), and sends in the clear when it
	// does not.
	StartTLSOpportunistic StartTLS = "opportunistic"
	// StartTLSNone never upgrades.
	StartTLSNone StartTLS = "none"
)

// ErrNoStartTLS is returned when StartTLSRequired meets a server that does
// not offer STARTTLS. Nothing was sent.
var ErrNoStartTLS = errors.New("mail: smtp: server does not offer STARTTLS, which is required")

// defaultTimeout bounds a Send whose context has no deadline.
const defaultTimeout = time.Minute

// SMTPOptions configures an SMTP Sender.
type SMTPOptions struct {
	Addr string // host:port of the relay, e.g. "email-smtp.eu-west-1.amazonaws.com:587"
	From string // "no-reply@example.com" or "StackPro <no-reply@example.com>"

	// Username and Password, when Username is set, authenticate with
	// AUTH PLAIN, which is only ever sent over TLS or to localhost.
	Username string
	Password string

	// StartTLS defaults to StartTLSRequired, or StartTLSNone when the host
	// is localhost, 127.0.0.1 or ::1 (a local relay's traffic never leaves
	// the machine, and its certificate is rarely one we could verify).
	StartTLS StartTLS

	// TLSConfig, if set, is used for STARTTLS (tests use it to trust their
	// own certificate). Its ServerName defaults to the host of Addr.
	TLSConfig *tls.Config
}

// SMTP sends each message over its own connection to an SMTP relay.
type SMTP struct {
	addr, host string
	from       *netmail.Address
	startTLS   StartTLS
	tls        *tls.Config
	auth       smtp.Auth // nil without a Username; it alone holds the password
}

var _ Sender = (*SMTP)(nil)

// NewSMTP checks o, reporting every problem at once, and returns an SMTP
// Sender. It does not connect.
func NewSMTP(o SMTPOptions) (*SMTP, error) {
	var errs []error
	host, _, err := net.SplitHostPort(o.Addr)
	if err != nil || host == "" {
		errs = append(errs, fmt.Errorf("addr %q must be host:port", o.Addr))
	}
	from, err := parseFrom(o.From)
	if err != nil {
		errs = append(errs, err)
	}
	local := isLocalhost(host)
	mode := o.StartTLS
	switch {
	case mode == "" && local:
		mode = StartTLSNone
	case mode == "":
		mode = StartTLSRequired
	case mode != StartTLSRequired && mode != StartTLSOpportunistic && mode != StartTLSNone:
		errs = append(errs, fmt.Errorf("starttls %q must be %q, %q or %q",
			o.StartTLS, StartTLSRequired, StartTLSOpportunistic, StartTLSNone))
	}
	if o.Username == "" && o.Password != "" {
		errs = append(errs, errors.New("password is set but username is not"))
	}
	if o.Username != "" && mode == StartTLSNone && !local && host != "" {
		errs = append(errs, fmt.Errorf("username with starttls %q would send the password in the clear to %s", mode, host))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("mail: smtp: %w", errors.Join(errs...))
	}

	cfg := &tls.Config{}
	if o.TLSConfig != nil {
		cfg = o.TLSConfig.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	s := &SMTP{addr: o.Addr, host: host, from: from, startTLS: mode, tls: cfg}
	if o.Username != "" {
		s.auth = smtp.PlainAuth("", o.Username, o.Password, host)
	}
	return s, nil
}

// isLocalhost matches what net/smtp's PlainAuth accepts without TLS.
func isLocalhost(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// Send delivers m over a new connection: EHLO, STARTTLS as configured, AUTH
// PLAIN if there is a username, MAIL, RCPT, DATA, QUIT. The context bounds
// the whole exchange.
func (s *SMTP) Send(ctx context.Context, m Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	if err := s.send(ctx, m); err != nil {
		if ctx.Err() != nil {
			// The deadline or cancellation surfaced as a network error;
			// say what happened in terms the caller can test.
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return fmt.Errorf("mail: smtp: sending to %s via %s: %w", m.To, s.addr, err)
	}
	return nil
}

func (s *SMTP) send(ctx context.Context, m Message) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The end of ctx (which has a deadline) unblocks whatever read or write
	// is under way. A conn deadline of its own could fire before ctx is
	// done and hide why the exchange stopped.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	c, err := smtp.NewClient(conn, s.host) // reads the greeting
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	if offered, _ := c.Extension("STARTTLS"); offered && s.startTLS != StartTLSNone {
		if err := c.StartTLS(s.tls); err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
	} else if s.startTLS == StartTLSRequired {
		return ErrNoStartTLS
	}
	if s.auth != nil {
		if offered, _ := c.Extension("AUTH"); !offered {
			return errors.New("AUTH: the server does not offer it, but a username is configured")
		}
		// net/smtp's errors here are the server's reply or its own refusal
		// ("unencrypted connection"); neither carries the password.
		if err := c.Auth(s.auth); err != nil {
			return fmt.Errorf("AUTH PLAIN: %w", err)
		}
	}
	if err := c.Mail(s.from.Address); err != nil {
		return fmt.Errorf("MAIL FROM: %w", err)
	}
	if err := c.Rcpt(m.To); err != nil {
		return fmt.Errorf("RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(render(s.from, m, time.Now())); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := w.Close(); err != nil { // the server's answer to the message
		return fmt.Errorf("DATA: %w", err)
	}
	_ = c.Quit() // the message was accepted; a failed QUIT does not unsend it
	return nil
}
