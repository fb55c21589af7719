package dashboardapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5/middleware"
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

// answers are the codes of the sentinels the wired implementations wrap.
var answers = []struct {
	kind error
	code int
}{
	{ErrInvalid, http.StatusUnprocessableEntity},
	{ErrNotFound, http.StatusNotFound},
	{ErrUnauthorized, http.StatusUnauthorized},
	{ErrForbidden, http.StatusForbidden},
	{ErrConflict, http.StatusConflict},
}

// expected answers an error that wraps one of those sentinels with its
// code and the message that follows the sentinel ("invalid: plan: ..."
// shows "plan: ..."); any other error is left for the 500.
func expected(err error) error {
	for _, a := range answers {
		if errors.Is(err, a.kind) {
			return httpError{Code: a.code, Msg: strings.TrimPrefix(err.Error(), a.kind.Error()+": "), Err: err}
		}
	}
	return err
}

// handle turns a handler that returns an error into an http.HandlerFunc.
func (a *API) handle(h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			a.answer(w, r, err)
		}
	}
}

// answer writes err as a problem document: its safe message for an
// httpError, "internal error" for anything else, whose detail is logged.
func (a *API) answer(w http.ResponseWriter, r *http.Request, err error) {
	he := httpError{Code: http.StatusInternalServerError, Msg: "internal error", Err: err}
	if !errors.As(err, &he) {
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
