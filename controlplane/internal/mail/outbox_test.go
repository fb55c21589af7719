package mail_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime"
	"mime/quotedprintable"
	netmail "net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/internal/mail"
)

const from = "StackPro <no-reply@stackpro.test>"

func newOutbox(t *testing.T) (*mail.FileOutbox, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "outbox")
	o, err := mail.NewFileOutbox(dir, from)
	if err != nil {
		t.Fatalf("NewFileOutbox: %v", err)
	}
	return o, dir
}

// emlFiles lists the messages in dir, oldest first.
func emlFiles(t *testing.T, dir string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// decode parses raw as an RFC 5322 message and checks what every rendered
// message must have, independently of the package's own parser.
func decode(t *testing.T, raw []byte) (netmail.Header, mail.Message) {
	t.Helper()
	for i, line := range bytes.SplitAfter(raw, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !bytes.HasSuffix(line, []byte("\r\n")) {
			t.Errorf("line %d %q does not end in CRLF", i+1, line)
		}
		if len(line) > 78+2 || (bytes.Contains(line, []byte("=?")) && len(line) > 76+2) {
			t.Errorf("line %d %q is %d characters long, want at most 78 (76 with encoded-words)", i+1, line, len(line)-2)
		}
		for _, c := range line {
			if c >= 0x80 {
				t.Errorf("line %d %q is not 7-bit", i+1, line)
				break
			}
		}
	}
	msg, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("ReadMessage: %v\n%s", err, raw)
	}
	h := msg.Header
	for _, name := range []string{"Date", "From", "To", "Subject", "Message-Id", "Mime-Version", "Content-Type", "Content-Transfer-Encoding"} {
		if n := len(h[name]); n != 1 {
			t.Errorf("%d %s fields, want 1", n, name)
		}
	}
	if got := h.Get("MIME-Version"); got != "1.0" {
		t.Errorf("MIME-Version = %q, want 1.0", got)
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "text/plain" || params["charset"] != "utf-8" {
		t.Errorf("Content-Type = %q, want text/plain; charset=utf-8", h.Get("Content-Type"))
	}
	if got := h.Get("Content-Transfer-Encoding"); got != "quoted-printable" {
		t.Errorf("Content-Transfer-Encoding = %q, want quoted-printable", got)
	}
	if ok, _ := regexp.MatchString(`^<[a-z0-9]{20,}@stackpro\.test>$`, h.Get("Message-ID")); !ok {
		t.Errorf("Message-ID = %q, want <random@stackpro.test>", h.Get("Message-ID"))
	}
	if date, err := h.Date(); err != nil || time.Since(date).Abs() > time.Minute {
		t.Errorf("Date = %q (%v), want about now", h.Get("Date"), err)
	}
	sender, err := h.AddressList("From")
	if err != nil || len(sender) != 1 || sender[0].Name != "StackPro" || sender[0].Address != "no-reply@stackpro.test" {
		t.Errorf("From = %q, want %q", h.Get("From"), from)
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(h.Get("Subject"))
	if err != nil {
		t.Errorf("decoding Subject %q: %v", h.Get("Subject"), err)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
	if err != nil {
		t.Errorf("decoding body: %v", err)
	}
	return h, mail.Message{
		To:      h.Get("To"),
		Subject: subject,
		Text:    strings.ReplaceAll(string(body), "\r\n", "\n"),
	}
}

func TestFileOutboxWritesAMessage(t *testing.T) {
	o, dir := newOutbox(t)
	want := mail.Message{
		To:      "ada@example.com",
		Subject: "Verify your email address",
		Text:    "Hello Ada,\n\nOpen https://app.stackpro.test/verify?token=abc=def to verify.\n",
	}
	if err := o.Send(context.Background(), want); err != nil {
		t.Fatalf("Send: %v", err)
	}

	if fi, err := os.Stat(dir); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o700 {
		t.Errorf("outbox dir mode %v, want 0700", fi.Mode().Perm())
	}
	paths := emlFiles(t, dir)
	if len(paths) != 1 {
		t.Fatalf("%d files in the outbox, want 1", len(paths))
	}
	name := filepath.Base(paths[0])
	if ok, _ := regexp.MatchString(`^\d{8}T\d{6}\.\d{9}Z-[a-z0-9]{8}\.eml$`, name); !ok {
		t.Errorf("file name %q, want <yyyymmddThhmmss.nnnnnnnnnZ>-<random>.eml", name)
	}
	fi, err := os.Stat(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	raw, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	h, got := decode(t, raw)
	if got != want {
		t.Errorf("read back %+v, want %+v", got, want)
	}
	if h.Get("Subject") != want.Subject {
		t.Errorf("ASCII Subject rendered as %q, want it as is", h.Get("Subject"))
	}
}

func TestFileOutboxRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    mail.Message
	}{
		{"non-ASCII", mail.Message{
			To:      "zoe@example.com",
			Subject: "Vérifiez votre adresse — 確認してください",
			Text:    "Bonjour Zoë,\n\nVotre lien : https://app.stackpro.test/v?t=a=b\n確認してください。\n",
		}},
		{"no final newline, trailing space", mail.Message{
			To:      "ada@example.com",
			Subject: "Payment failed",
			Text:    "Your card was declined. ",
		}},
		{"long lines and dots", mail.Message{
			To:      "ada@example.com",
			Subject: strings.Repeat("Long subject words ", 20) + strings.Repeat("é", 60),
			Text:    strings.Repeat("x", 300) + "\n.\n..leading dots\nFrom the start\n\ttab\n",
		}},
		{"empty text", mail.Message{To: "ada@example.com", Subject: "Nothing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, dir := newOutbox(t)
			if err := o.Send(context.Background(), tt.m); err != nil {
				t.Fatalf("Send: %v", err)
			}
			got, err := o.Latest(tt.m.To)
			if err != nil {
				t.Fatalf("Latest: %v", err)
			}
			if got != tt.m {
				t.Errorf("Latest = %+v\nwant     %+v", got, tt.m)
			}
			raw, err := os.ReadFile(emlFiles(t, dir)[0])
			if err != nil {
				t.Fatal(err)
			}
			if _, decoded := decode(t, raw); decoded != tt.m {
				t.Errorf("decoded %+v\nwant    %+v", decoded, tt.m)
			}
		})
	}
}

func TestFileOutboxLatest(t *testing.T) {
	o, _ := newOutbox(t)
	ctx := context.Background()
	send := func(to, subject string) {
		t.Helper()
		if err := o.Send(ctx, mail.Message{To: to, Subject: subject, Text: subject + "\n"}); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	if _, err := o.Latest("ada@example.com"); !errors.Is(err, mail.ErrNoMessage) {
		t.Errorf("Latest on an empty outbox: %v, want ErrNoMessage", err)
	}
	send("ada@example.com", "first")
	send("bob@example.com", "for bob")
	send("ada@example.com", "second")
	send("ada@example.com", "third")
	send("carol@example.com", "for carol")

	tests := []struct {
		to, want string
	}{
		{"ada@example.com", "third"},
		{"ADA@Example.com", "third"},
		{"bob@example.com", "for bob"},
		{"carol@example.com", "for carol"},
	}
	for _, tt := range tests {
		got, err := o.Latest(tt.to)
		if err != nil {
			t.Errorf("Latest(%q): %v", tt.to, err)
			continue
		}
		if got.Subject != tt.want {
			t.Errorf("Latest(%q).Subject = %q, want %q", tt.to, got.Subject, tt.want)
		}
	}
	if _, err := o.Latest("dave@example.com"); !errors.Is(err, mail.ErrNoMessage) {
		t.Errorf("Latest for an address never written to: %v, want ErrNoMessage", err)
	}
}

func TestSendRefusesInvalidMessages(t *testing.T) {
	valid := mail.Message{To: "ada@example.com", Subject: "Hi", Text: "Hello\n"}
	tests := []struct {
		name string
		edit func(*mail.Message)
		want string // in the error
	}{
		{"header injection in To", func(m *mail.Message) { m.To = "ada@example.com\r\nBcc: eve@example.com" }, "CR or LF"},
		{"LF in To", func(m *mail.Message) { m.To = "ada@example.com\nBcc: eve@example.com" }, "CR or LF"},
		{"header injection in Subject", func(m *mail.Message) { m.Subject = "Hi\r\nBcc: eve@example.com" }, "CR or LF"},
		{"CR in Subject", func(m *mail.Message) { m.Subject = "Hi\rthere" }, "CR or LF"},
		{"LF in Subject", func(m *mail.Message) { m.Subject = "Hi\n\nbody" }, "CR or LF"},
		{"display name", func(m *mail.Message) { m.To = "Ada <ada@example.com>" }, "bare address"},
		{"brackets", func(m *mail.Message) { m.To = "<ada@example.com>" }, "bare address"},
		{"two recipients", func(m *mail.Message) { m.To = "ada@example.com, eve@example.com" }, "to"},
		{"surrounding space", func(m *mail.Message) { m.To = " ada@example.com" }, "bare address"},
		{"not an address", func(m *mail.Message) { m.To = "ada" }, "to"},
		{"non-ASCII address", func(m *mail.Message) { m.To = "zoë@example.com" }, "ASCII"},
		{"no To", func(m *mail.Message) { m.To = "" }, "to is required"},
		{"no Subject", func(m *mail.Message) { m.Subject = "" }, "subject is required"},
		{"invalid UTF-8", func(m *mail.Message) { m.Text = "\xff" }, "UTF-8"},
		{"huge Subject", func(m *mail.Message) { m.Subject = strings.Repeat("x", 1000) }, "longer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, dir := newOutbox(t)
			m := valid
			tt.edit(&m)
			err := o.Send(context.Background(), m)
			if !errors.Is(err, mail.ErrInvalidMessage) {
				t.Fatalf("Send(%+v) = %v, want ErrInvalidMessage", m, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if n := len(emlFiles(t, dir)); n != 0 {
				t.Errorf("%d files written, want none", n)
			}
		})
	}
	if err := valid.Validate(); err != nil {
		t.Errorf("Validate(%+v) = %v, want nil", valid, err)
	}
}

func TestNewFileOutboxRefusesABadFrom(t *testing.T) {
	for _, f := range []string{"", "no-reply", "StackPro <no-reply@stackpro.test>\r\nBcc: eve@example.com"} {
		if _, err := mail.NewFileOutbox(t.TempDir(), f); err == nil {
			t.Errorf("NewFileOutbox(from %q) succeeded, want an error", f)
		}
	}
}

func TestFileOutboxHonoursCancellation(t *testing.T) {
	o, dir := newOutbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := o.Send(ctx, mail.Message{To: "ada@example.com", Subject: "Hi"})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Send with a cancelled context: %v, want context.Canceled", err)
	}
	if n := len(emlFiles(t, dir)); n != 0 {
		t.Errorf("%d files written, want none", n)
	}
}
