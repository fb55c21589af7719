package dashboardapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/go-chi/chi/v5/middleware"

	"github.com/stackpro/stackpro/controlplane/fault"
)

// httpError is an error with the answer the client gets. Msg is safe to
// show; Err is the detail, for the log only.
type httpError struct {
	Code int
	Msg  string
	Err  error
}

func (e httpError) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e httpError) Unwrap() error { return e.Err }

// problem is an RFC 9457 problem document, the one error shape of every route.
type problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// codes answer each kind of expected failure (see package fault), the one
// place where the services' errors meet HTTP.
var codes = map[fault.Kind]int{
	fault.Invalid:      http.StatusUnprocessableEntity,
	fault.NotFound:     http.StatusNotFound,
	fault.Unauthorized: http.StatusUnauthorized,
	fault.Forbidden:    http.StatusForbidden,
	fault.Conflict:     http.StatusConflict,
	fault.Busy:         http.StatusConflict,
	fault.Unavailable:  http.StatusServiceUnavailable,
}

// clientError is the answer to err: an httpError as it is, an expected
// failure with its kind's code and its client message, anything else 500
// "internal error" (false: its detail is for the log only).
func clientError(err error) (httpError, bool) {
	var he httpError
	if errors.As(err, &he) {
		return he, true
	}
	if f, ok := fault.As(err); ok && codes[f.Kind] != 0 {
		return httpError{Code: codes[f.Kind], Msg: f.Public(), Err: err}, true
	}
	return httpError{Code: http.StatusInternalServerError, Msg: "internal error", Err: err}, false
}

// handle turns a handler that returns an error into an http.HandlerFunc.
func (a *API) handle(h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			a.answer(w, r, err)
		}
	}
}

// answer writes err as a problem document (see clientError); what a
// client is not told is logged.
func (a *API) answer(w http.ResponseWriter, r *http.Request, err error) {
	he, expected := clientError(err)
	if !expected {
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path,
			"request_id", middleware.GetReqID(r.Context()), "err", err)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(he.Code)
	_ = json.NewEncoder(w).Encode(problem{Type: "about:blank", Title: http.StatusText(he.Code), Status: he.Code,
		Detail: he.Msg, RequestID: middleware.GetReqID(r.Context())})
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, err = w.Write(append(data, '\n'))
	return err
}
