package mail_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/stackpro/stackpro/controlplane/internal/mail"
)

const (
	smtpUser     = "mailer"
	smtpPassword = "correct-horse-battery-staple"
)

// selfSigned returns a server TLS config for 127.0.0.1 and a pool that
// trusts it.
func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stackpro test smtp"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

// smtpServer is a real SMTP server (go-smtp) that records what it is told.
// With a TLS config it offers STARTTLS, and AUTH only after it; with a
// user it refuses MAIL until that user has authenticated.
type smtpServer struct {
	addr       string
	user, pass string

	mu         sync.Mutex
	auths      [][2]string // every AUTH PLAIN attempt: username, password
	deliveries []delivery
}

type delivery struct {
	tls  bool   // the session ran over TLS
	user string // the authenticated user
	from string
	to   []string
	data []byte
}

func runSMTP(t *testing.T, tlsConfig *tls.Config, user, pass string) *smtpServer {
	t.Helper()
	srv := &smtpServer{user: user, pass: pass}
	s := gosmtp.NewServer(srv)
	s.Domain = "localhost"
	s.TLSConfig = tlsConfig
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	s.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.addr = l.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	t.Cleanup(func() {
		_ = s.Close()
		_ = l.Close() // Close misses a listener that Serve has not yet registered
		<-done
	})
	return srv
}

func (srv *smtpServer) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &session{srv: srv, tls: isTLS}, nil
}

func (srv *smtpServer) got() (auths [][2]string, deliveries []delivery) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return slices.Clone(srv.auths), slices.Clone(srv.deliveries)
}

type session struct {
	srv  *smtpServer
	tls  bool
	user string
	from string
	to   []string
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, username, password string) error {
		s.srv.mu.Lock()
		s.srv.auths = append(s.srv.auths, [2]string{username, password})
		s.srv.mu.Unlock()
		if username != s.srv.user || password != s.srv.pass {
			return gosmtp.ErrAuthFailed
		}
		s.user = username
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *gosmtp.MailOptions) error {
	if s.srv.user != "" && s.user == "" {
		return gosmtp.ErrAuthRequired
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	s.srv.deliveries = append(s.srv.deliveries, delivery{tls: s.tls, user: s.user, from: s.from, to: s.to, data: data})
	return nil
}

func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }

func newSMTP(t *testing.T, o mail.SMTPOptions) *mail.SMTP {
	t.Helper()
	if o.From == "" {
		o.From = from
	}
	s, err := mail.NewSMTP(o)
	if err != nil {
		t.Fatalf("NewSMTP: %v", err)
	}
	return s
}

func sendCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var verification = mail.Message{
	To:      "ada@example.com",
	Subject: "Vérifiez votre adresse",
	Text:    "Hello Ada,\n\n.\nOpen https://app.stackpro.test/verify?token=a=b\n",
}

func TestSMTPSendsOverSTARTTLSWithAuthPlain(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	srv := runSMTP(t, serverTLS, smtpUser, smtpPassword)
	s := newSMTP(t, mail.SMTPOptions{
		Addr:      srv.addr,
		Username:  smtpUser,
		Password:  smtpPassword,
		StartTLS:  mail.StartTLSRequired,
		TLSConfig: &tls.Config{RootCAs: pool},
	})
	if err := s.Send(sendCtx(t), verification); err != nil {
		t.Fatalf("Send: %v", err)
	}

	auths, deliveries := srv.got()
	if want := [][2]string{{smtpUser, smtpPassword}}; !slices.Equal(auths, want) {
		t.Errorf("AUTH PLAIN attempts %q, want %q", auths, want)
	}
	if len(deliveries) != 1 {
		t.Fatalf("%d deliveries, want 1", len(deliveries))
	}
	d := deliveries[0]
	if !d.tls || d.user != smtpUser {
		t.Errorf("delivered with TLS %v as %q, want TLS as %q", d.tls, d.user, smtpUser)
	}
	if d.from != "no-reply@stackpro.test" || !slices.Equal(d.to, []string{"ada@example.com"}) {
		t.Errorf("envelope MAIL FROM:<%s> RCPT TO:%v, want <no-reply@stackpro.test> [ada@example.com]", d.from, d.to)
	}
	if _, got := decode(t, d.data); got != verification {
		t.Errorf("received %+v\nwant     %+v", got, verification)
	}
}

func TestSMTPStartTLSModes(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	tests := []struct {
		name      string
		serverTLS bool
		mode      mail.StartTLS
		wantTLS   bool
	}{
		{"opportunistic, offered", true, mail.StartTLSOpportunistic, true},
		{"opportunistic, not offered", false, mail.StartTLSOpportunistic, false},
		{"none, offered", true, mail.StartTLSNone, false},
		{"default on 127.0.0.1 is none", true, "", false},
		{"required, offered", true, mail.StartTLSRequired, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg *tls.Config
			if tt.serverTLS {
				cfg = serverTLS
			}
			srv := runSMTP(t, cfg, "", "")
			s := newSMTP(t, mail.SMTPOptions{Addr: srv.addr, StartTLS: tt.mode, TLSConfig: &tls.Config{RootCAs: pool}})
			if err := s.Send(sendCtx(t), verification); err != nil {
				t.Fatalf("Send: %v", err)
			}
			_, deliveries := srv.got()
			if len(deliveries) != 1 {
				t.Fatalf("%d deliveries, want 1", len(deliveries))
			}
			if got := deliveries[0].tls; got != tt.wantTLS {
				t.Errorf("delivered over TLS: %v, want %v", got, tt.wantTLS)
			}
		})
	}
}

func TestSMTPRequiredSTARTTLSFailsWithoutIt(t *testing.T) {
	srv := runSMTP(t, nil, smtpUser, smtpPassword)
	s := newSMTP(t, mail.SMTPOptions{
		Addr:     srv.addr,
		Username: smtpUser,
		Password: smtpPassword,
		StartTLS: mail.StartTLSRequired,
	})
	err := s.Send(sendCtx(t), verification)
	if !errors.Is(err, mail.ErrNoStartTLS) {
		t.Fatalf("Send to a server without STARTTLS: %v, want ErrNoStartTLS", err)
	}
	if !strings.Contains(err.Error(), "STARTTLS") {
		t.Errorf("error %q does not mention STARTTLS", err)
	}
	assertNoPassword(t, err, smtpPassword)
	if auths, deliveries := srv.got(); len(auths) != 0 || len(deliveries) != 0 {
		t.Errorf("server saw %d AUTH attempts and %d deliveries, want none", len(auths), len(deliveries))
	}
}

func TestSMTPRefusesAnUntrustedCertificate(t *testing.T) {
	serverTLS, _ := selfSigned(t)
	srv := runSMTP(t, serverTLS, smtpUser, smtpPassword)
	s := newSMTP(t, mail.SMTPOptions{Addr: srv.addr, Username: smtpUser, Password: smtpPassword, StartTLS: mail.StartTLSRequired})
	var unknown x509.UnknownAuthorityError
	if err := s.Send(sendCtx(t), verification); !errors.As(err, &unknown) {
		t.Fatalf("Send to a server with a self-signed certificate: %v, want x509.UnknownAuthorityError", err)
	}
	if auths, deliveries := srv.got(); len(auths) != 0 || len(deliveries) != 0 {
		t.Errorf("server saw %d AUTH attempts and %d deliveries, want none", len(auths), len(deliveries))
	}
}

func TestSMTPWrongPassword(t *testing.T) {
	const wrong = "wrong-but-still-secret-7f3a"
	serverTLS, pool := selfSigned(t)
	srv := runSMTP(t, serverTLS, smtpUser, smtpPassword)
	s := newSMTP(t, mail.SMTPOptions{
		Addr:      srv.addr,
		Username:  smtpUser,
		Password:  wrong,
		StartTLS:  mail.StartTLSRequired,
		TLSConfig: &tls.Config{RootCAs: pool},
	})
	err := s.Send(sendCtx(t), verification)
	var reply *textproto.Error
	if !errors.As(err, &reply) || reply.Code != 535 {
		t.Fatalf("Send with a wrong password: %v, want the server's 535", err)
	}
	assertNoPassword(t, err, wrong)
	auths, deliveries := srv.got()
	if want := [][2]string{{smtpUser, wrong}}; !slices.Equal(auths, want) {
		t.Errorf("AUTH PLAIN attempts %q, want %q", auths, want)
	}
	if len(deliveries) != 0 {
		t.Errorf("%d deliveries, want none", len(deliveries))
	}
}

func assertNoPassword(t *testing.T, err error, password string) {
	t.Helper()
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + smtpUser + "\x00" + password))
	for _, s := range []string{password, plain} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q reveals the password", err)
		}
	}
}

func TestSMTPHonoursTheContext(t *testing.T) {
	// A server that accepts connections (the kernel does) but never greets.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	s := newSMTP(t, mail.SMTPOptions{Addr: l.Addr().String()})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Send(ctx, verification) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Send to a silent server: %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send to a silent server did not return 10s after its deadline")
	}

	ctx, cancel = context.WithCancel(context.Background())
	go func() { done <- s.Send(ctx, verification) }()
	time.AfterFunc(100*time.Millisecond, cancel)
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Send: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send did not return 10s after its context was cancelled")
	}
}

func TestSMTPRefusesInvalidMessages(t *testing.T) {
	srv := runSMTP(t, nil, "", "")
	s := newSMTP(t, mail.SMTPOptions{Addr: srv.addr})
	m := verification
	m.Subject = "Hi\r\nBcc: eve@example.com"
	if err := s.Send(sendCtx(t), m); !errors.Is(err, mail.ErrInvalidMessage) {
		t.Errorf("Send with an injected header: %v, want ErrInvalidMessage", err)
	}
	if _, deliveries := srv.got(); len(deliveries) != 0 {
		t.Errorf("%d deliveries, want none", len(deliveries))
	}
}

func TestNewSMTPChecksOptions(t *testing.T) {
	tests := []struct {
		name string
		o    mail.SMTPOptions
		want []string // each in the error; none means valid
	}{
		{"relay with auth, STARTTLS by default", mail.SMTPOptions{Addr: "smtp.example.com:587", From: from, Username: "u", Password: smtpPassword}, nil},
		{"local relay in the clear", mail.SMTPOptions{Addr: "localhost:25", From: from, Username: "u", Password: smtpPassword, StartTLS: mail.StartTLSNone}, nil},
		{"password in the clear", mail.SMTPOptions{Addr: "smtp.example.com:25", From: from, Username: "u", Password: smtpPassword, StartTLS: mail.StartTLSNone}, []string{"in the clear"}},
		{"password without username", mail.SMTPOptions{Addr: "smtp.example.com:587", From: from, Password: smtpPassword}, []string{"username"}},
		{"every problem at once", mail.SMTPOptions{Addr: "smtp.example.com", From: "nobody", StartTLS: "sometimes"}, []string{"addr", "from", "starttls"}},
		{"header injection in From", mail.SMTPOptions{Addr: "smtp.example.com:587", From: "a@example.com\r\nBcc: eve@example.com"}, []string{"CR or LF"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mail.NewSMTP(tt.o)
			if len(tt.want) == 0 {
				if err != nil {
					t.Errorf("NewSMTP: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewSMTP succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), smtpPassword) {
				t.Errorf("error %q reveals the password", err)
			}
		})
	}
}
