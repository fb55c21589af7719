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

func (e *Error) Error() string {
	msg := e.Msg
	if len(e.Problems) > 0 {
		msg += ": " + strings.Join(e.Problems, "; ")
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
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

// InvalidInput is an Invalid error saying msg and each of problems
// (errors.Join's each), which are about the client's input and so are
// shown to it.
func InvalidInput(msg string, problems ...error) *Error {
	e := &Error{Kind: Invalid, Msg: msg}
	for _, p := range problems {
		if joined, ok := p.(interface{ Unwrap() []error }); ok {
			e.Problems = append(e.Problems, InvalidInput("", joined.Unwrap()...).Problems...)
		} else if p != nil {
			e.Problems = append(e.Problems, p.Error())
		}
	}
	return e
}

// As is the Error err carries, if any.
func As(err error) (*Error, bool) {
	var e *Error
	return e, errors.As(err, &e)
}
