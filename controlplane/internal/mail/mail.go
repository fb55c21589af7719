// Package mail sends the control plane's transactional email — address
// verification, password reset, dunning — through a Sender: a file outbox in
// the embedded default (one RFC 5322 file per message, for tests and people
// to read) or an SMTP relay. Every Sender renders a message the same way:
// plain text in UTF-8, quoted-printable, with the Subject RFC 2047 encoded
// when it is not ASCII.
package mail

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	netmail "net/mail"
	"strings"
	"time"
	"unicode/utf8"
)

// Message is one email to one recipient. The Sender sets From.
type Message struct {
	To      string // a bare address: "ada@example.com", no display name
	Subject string
	Text    string // the plain-text body; line breaks are "\n"
}

// Sender delivers a Message. It is declared here, not by each consumer,
// because several packages (accounts, billing, provision) send mail and
// every one of them needs exactly this.
type Sender interface {
	Send(ctx context.Context, m Message) error
}

// maxSubject keeps a Subject without spaces, which cannot be folded, under
// RFC 5322's 998-character line limit.
const maxSubject = 900

var (
	// ErrInvalidMessage wraps every reason Validate refuses a Message.
	ErrInvalidMessage = errors.New("mail: invalid message")
	// ErrNoMessage is what FileOutbox.Latest answers when no message was
	// sent to the address.
	ErrNoMessage = errors.New("mail: no message")
)

// Validate reports every problem with m at once, each wrapped in
// ErrInvalidMessage. It refuses CR and LF in To and Subject, which would let
// a caller who passes user input through inject header fields.
func (m Message) Validate() error {
	var errs []error
	switch {
	case m.To == "":
		errs = append(errs, errors.New("to is required"))
	case strings.ContainsAny(m.To, "\r\n"):
		errs = append(errs, fmt.Errorf("to %q contains CR or LF", m.To))
	default:
		if err := bareAddress(m.To); err != nil {
			errs = append(errs, fmt.Errorf("to %q: %w", m.To, err))
		}
	}
	switch {
	case m.Subject == "":
		errs = append(errs, errors.New("subject is required"))
	case strings.ContainsAny(m.Subject, "\r\n"):
		errs = append(errs, fmt.Errorf("subject %q contains CR or LF", m.Subject))
	case !utf8.ValidString(m.Subject):
		errs = append(errs, errors.New("subject is not valid UTF-8"))
	case len(m.Subject) > maxSubject:
		errs = append(errs, fmt.Errorf("subject is longer than %d bytes", maxSubject))
	}
	if !utf8.ValidString(m.Text) {
		errs = append(errs, errors.New("text is not valid UTF-8"))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidMessage, errors.Join(errs...))
}

// bareAddress checks that s is an address and nothing else: no display
// name, no angle brackets, no comment, no surrounding space, ASCII only
// (internationalized addresses would need SMTPUTF8, which we do not use).
func bareAddress(s string) error {
	a, err := netmail.ParseAddress(s)
	if err != nil {
		return err
	}
	if a.Name != "" || a.Address != s {
		return errors.New("must be a bare address, without display name or brackets")
	}
	for i := range len(s) {
		if s[i] >= utf8.RuneSelf {
			return errors.New("must be ASCII")
		}
	}
	return nil
}

// parseFrom parses the sender's address, which may carry a display name:
// "StackPro <no-reply@stackpro.io>".
func parseFrom(from string) (*netmail.Address, error) {
	if strings.ContainsAny(from, "\r\n") {
		return nil, fmt.Errorf("from %q contains CR or LF", from)
	}
	a, err := netmail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("from %q: %w", from, err)
	}
	for i := range len(a.Address) {
		if a.Address[i] >= utf8.RuneSelf {
			return nil, fmt.Errorf("from %q: address must be ASCII", from)
		}
	}
	return a, nil
}

// render writes m as an RFC 5322 message from from, dated date. Lines end
// in CRLF; m must be valid.
func render(from *netmail.Address, m Message, date time.Time) []byte {
	var b bytes.Buffer
	header := func(name, value string) { b.WriteString(name + ": " + value + "\r\n") }
	header("Date", date.Format(time.RFC1123Z))
	if from.Name == "" {
		header("From", from.Address)
	} else {
		header("From", from.String()) // encodes a non-ASCII name
	}
	header("To", m.To)
	b.WriteString(fold("Subject", mime.QEncoding.Encode("utf-8", m.Subject)))
	domain := from.Address[strings.LastIndexByte(from.Address, '@')+1:]
	header("Message-ID", "<"+strings.ToLower(rand.Text())+"@"+domain+">")
	header("Auto-Submitted", "auto-generated") // RFC 3834: no auto-replies to us
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	b.WriteString("\r\n")

	qp := quotedprintable.NewWriter(&b) // turns "\n" and "\r\n" into CRLF
	_, _ = qp.Write([]byte(m.Text))     // a bytes.Buffer does not fail
	_ = qp.Close()
	if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		// End the last line with a soft line break: the message ends in
		// CRLF, as SMTP DATA needs, and the text decodes back unchanged.
		b.WriteString("=\r\n")
	}
	return b.Bytes()
}

// fold renders a header field, breaking it at single spaces so that lines
// stay within 76 characters where the words allow, even right after the
// colon: RFC 2047 limits lines holding encoded-words to 76 (RFC 5322 §2.2.3
// asks for 78). An encoded Subject is a run of encoded-words of at most 75
// characters separated by single spaces, so it always fits.
func fold(name, value string) string {
	const limit = 76
	var b strings.Builder
	line, prev := name+":", name
	for _, w := range strings.Split(value, " ") {
		// Fold only between single spaces: readers (Go's among them)
		// collapse the whitespace around a fold.
		if w != "" && prev != "" && len(line)+1+len(w) > limit {
			b.WriteString(line + "\r\n")
			line = ""
		}
		line += " " + w
		prev = w
	}
	b.WriteString(line + "\r\n")
	return b.String()
}

// parse reads back a message that render wrote, decoding the Subject and
// the quoted-printable body. It answers ErrNoMessage when the message is not
// addressed to want (compared case-insensitively), unless want is empty.
func parse(r io.Reader, want string) (Message, error) {
	msg, err := netmail.ReadMessage(r)
	if err != nil {
		return Message{}, err
	}
	to, err := msg.Header.AddressList("To")
	if err != nil {
		return Message{}, fmt.Errorf("to: %w", err)
	}
	if len(to) != 1 {
		return Message{}, fmt.Errorf("to: %d addresses, want 1", len(to))
	}
	if want != "" && !strings.EqualFold(to[0].Address, want) {
		return Message{}, ErrNoMessage
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if err != nil {
		return Message{}, fmt.Errorf("subject: %w", err)
	}
	body := msg.Body
	if strings.EqualFold(msg.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		body = quotedprintable.NewReader(body)
	}
	text, err := io.ReadAll(body)
	if err != nil {
		return Message{}, fmt.Errorf("body: %w", err)
	}
	return Message{
		To:      to[0].Address,
		Subject: subject,
		Text:    strings.ReplaceAll(string(text), "\r\n", "\n"),
	}, nil
}
