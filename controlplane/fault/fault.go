// Package fault is the control plane's one vocabulary of expected
// failures: what kind of failure it is (not found, invalid, conflict,
// busy, unavailable, forbidden, unauthorized) and what a client may be
// told of it. Domain packages return these errors; dashboard-api maps
// each kind to an HTTP status in one place and shows a client only the
// message made for it. Any other error is internal: its text is logged
// and never reaches a client.
package fault

import (
	"errors"
	"fmt"
	"strings"
)

// Kind is what kind of expected failure an Error is.
type Kind int

// The kinds of failure.
const (
	// NotFound: what was asked for does not exist (or is not the
	// caller's to see).
	NotFound Kind = iota + 1
	// Invalid: the input is at fault; Problems says each problem.
	Invalid
	// Conflict: the request clashes with the state of things (a name
	// taken, a run already finished).
	Conflict
	// Busy: something else is at work on it; the same request may
	// succeed later.
	Busy
	// Unavailable: a part it needs cannot be reached now (an agent not
	// connected).
	Unavailable
	// Forbidden: the caller is known and may not do this.
	Forbidden
	// Unauthorized: the caller's credentials are refused.
	Unauthorized
)

var kindNames = map[Kind]string{NotFound: "not found", Invalid: "invalid", Conflict: "conflict", Busy: "busy",
	Unavailable: "unavailable", Forbidden: "forbidden", Unauthorized: "unauthorized"}

func (k Kind) String() string { return kindNames[k] }

// Error is an expected failure. Msg and Problems are written for the
// client; Err is the cause, for the log only.
type Error struct {
	Kind     Kind
	Msg      string
	Problems []string
	Err      error
}

// Error is the client's message, its problems, and the cause (which With
// makes the Error it extends, said once).
func (e *Error) Error() string {
	msg := e.Public()
	if e.Err != nil && e.Err != e.base() {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Public is what a client may read: the message and the problems.
func (e *Error) Public() string {
	if len(e.Problems) == 0 {
		return e.Msg
	}
	return e.Msg + ": " + strings.Join(e.Problems, "; ")
}

// base is the Error that With extended, if e was made by With.
func (e *Error) base() error {
	if b, ok := e.Err.(*Error); ok && b.Kind == e.Kind && b.Msg == e.Msg {
		return b
	}
	return nil
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the kind's sentinel (errors.Is(err, fault.ErrNotFound)) and
// the same Error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && (t == e || t.sentinel() && t.Kind == e.Kind)
}

func (e *Error) sentinel() bool { return e.Msg == "" && e.Err == nil && e.Problems == nil }

// Sentinels, one a kind, for errors.Is.
var (
	ErrNotFound     = &Error{Kind: NotFound}
	ErrInvalid      = &Error{Kind: Invalid}
	ErrConflict     = &Error{Kind: Conflict}
	ErrBusy         = &Error{Kind: Busy}
	ErrUnavailable  = &Error{Kind: Unavailable}
	ErrForbidden    = &Error{Kind: Forbidden}
	ErrUnauthorized = &Error{Kind: Unauthorized}
)

// New is an Error of kind with a client message made as fmt.Sprintf does.
func New(kind Kind, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap is New with a cause, which the client does not see.
func Wrap(kind Kind, cause error, format string, args ...any) *Error {
	e := New(kind, format, args...)
	e.Err = cause
	return e
}

// With is e with problems, each of errors.Join's apart, which are about
// the client's input and so are shown to it; e stays the cause, so
// errors.Is(err, e) holds.
func (e *Error) With(problems ...error) *Error {
	w := &Error{Kind: e.Kind, Msg: e.Msg, Err: e}
	for _, p := range problems {
		w.Problems = append(w.Problems, flatten(p)...)
	}
	return w
}

// flatten is the messages of err, one for each error errors.Join joined.
func flatten(err error) []string {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range joined.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	if err == nil {
		return nil
	}
	return []string{err.Error()}
}

// As is the Error err carries, if any.
func As(err error) (*Error, bool) {
	var e *Error
	return e, errors.As(err, &e)
}
