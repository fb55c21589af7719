package dashboardapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/rollout"
)

// Runs starts and follows fleet command runs (controlplane/rollout's
// engine). A run outlives the request that started it: ctx bounds the
// start, not the run.
type Runs interface {
	// Start starts spec for by; the error is Invalid for a spec the
	// engine refuses (a selection that matches no instance).
	Start(ctx context.Context, spec rollout.RunSpec, by string) (rollout.Run, error)
	// Get is run id, or an error that is NotFound.
	Get(id string) (rollout.Run, error)
	// List is every run, newest first.
	List() ([]rollout.Run, error)
	// Targets is run id's targets, ordered by instance id, or an error
	// that is NotFound.
	Targets(id string) ([]rollout.Target, error)
	// Cancel cancels run id for by: its error is NotFound, or Conflict
	// when the run has already finished.
	Cancel(id, by string) (rollout.Run, error)
}

// Tags sets an instance's tags (replacing them all). Its error is
// NotFound for an unknown instance and Invalid for tags it refuses.
type Tags interface {
	SetTags(ctx context.Context, id string, tags map[string]string) (fleet.Instance, error)
}

// Defaults of the run limits a POST /api/v1/runs leaves out.
const (
	defaultRunConcurrency = "50"
	defaultRunErrors      = "0"
	defaultRunTimeout     = "60s"
)

// maxRunBody bounds a POST /api/v1/runs: room for a selection of some
// ten thousand instance ids.
const maxRunBody = 1 << 20

// runRequest is the body of POST /api/v1/runs. The limits are read here
// rather than by rollout.Limit's decoder, so that a bad one is a 422 listed
// with every other problem, not a 400 on its own.
type runRequest struct {
	Command        string          `json:"command"`
	Args           json.RawMessage `json:"args,omitempty"`
	Select         fleet.Selection `json:"select"`
	MaxConcurrency string          `json:"max_concurrency"`
	MaxErrors      string          `json:"max_errors"`
	Timeout        string          `json:"timeout"`
}

// spec is the run the request asks for, or every problem with it.
func (b runRequest) spec() (rollout.RunSpec, error) {
	spec := rollout.RunSpec{Command: b.Command, Args: b.Args, Select: b.Select}
	var errs []error
	if b.Command != "" { // spec.Validate reports a missing one
		errs = append(errs, checkCommand(b.Command))
	}
	var err error
	if spec.MaxConcurrency, err = rollout.ParseLimit(b.MaxConcurrency); err != nil {
		errs = append(errs, fmt.Errorf("max_concurrency: %w", err))
	}
	if spec.MaxErrors, err = rollout.ParseLimit(b.MaxErrors); err != nil {
		errs = append(errs, fmt.Errorf("max_errors: %w", err))
	}
	if err := spec.Timeout.UnmarshalText([]byte(b.Timeout)); err != nil {
		errs = append(errs, fmt.Errorf("timeout %q: want a duration like 60s or 2m", b.Timeout))
	}
	errs = append(errs, spec.Validate())
	return spec, errors.Join(errs...)
}

// refused answers 422 with every problem err joins, on one line.
func refused(err error) error {
	return httpError{Code: http.StatusUnprocessableEntity, Msg: strings.ReplaceAll(err.Error(), "\n", "; "), Err: err}
}

func (a *API) startRun(w http.ResponseWriter, r *http.Request) error {
	// Decoding over the defaults keeps them for absent limits only: an
	// explicit "0" stays 0.
	body := runRequest{MaxConcurrency: defaultRunConcurrency, MaxErrors: defaultRunErrors, Timeout: defaultRunTimeout}
	if err := decodeBody(w, r, maxRunBody, &body); err != nil {
		return err
	}
	spec, err := body.spec()
	if err != nil {
		return refused(err)
	}
	run, err := a.o.Runs.Start(r.Context(), spec, principal(r).Name)
	if err != nil {
		return err
	}
	a.audit(r, "run started", "run", run.ID, "command", spec.Command, "select", spec.Select.String(), "targets", run.Total,
		"max_concurrency", spec.MaxConcurrency.String(), "max_errors", spec.MaxErrors.String())
	w.Header().Set("Location", "/api/v1/runs/"+run.ID)
	return writeJSON(w, http.StatusCreated, run)
}

// runList is a page of runs.
type runList struct {
	Runs       []rollout.Run `json:"runs"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// runKey sorts runs newest first, as jobKey does jobs.
func runKey(run rollout.Run) string { return newestFirst(run.CreatedAt, run.ID) }

func (a *API) listRuns(w http.ResponseWriter, r *http.Request) error {
	pg, err := readPage(r)
	if err != nil {
		return err
	}
	runs, err := a.o.Runs.List()
	if err != nil {
		return err
	}
	// Paging needs the order of its keys; the engine's slice stays as it is.
	runs = slices.Clone(runs)
	slices.SortFunc(runs, func(x, y rollout.Run) int { return cmp.Compare(runKey(x), runKey(y)) })
	items, next := page(runs, runKey, pg)
	return writeJSON(w, http.StatusOK, runList{Runs: nonNil(items), NextCursor: next})
}

func (a *API) getRun(w http.ResponseWriter, r *http.Request) error {
	run, err := a.o.Runs.Get(chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, run)
}

// targetList is a page of a run's targets.
type targetList struct {
	Targets    []rollout.Target `json:"targets"`
	NextCursor string           `json:"next_cursor,omitempty"`
}

// runTargets lists a run's targets by instance id, paged, optionally only
// those in one ?state=.
func (a *API) runTargets(w http.ResponseWriter, r *http.Request) error {
	pg, err := readPage(r)
	if err != nil {
		return err
	}
	state := rollout.TargetState(r.URL.Query().Get("state"))
	if state != "" && !slices.Contains(rollout.TargetStates, state) {
		return httpError{Code: http.StatusBadRequest, Msg: fmt.Sprintf("state: want one of %s", joinStates(rollout.TargetStates))}
	}
	targets, err := a.o.Runs.Targets(chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	targets = slices.DeleteFunc(slices.Clone(targets), func(t rollout.Target) bool { return state != "" && t.State != state })
	key := func(t rollout.Target) string { return t.Instance }
	slices.SortFunc(targets, func(x, y rollout.Target) int { return cmp.Compare(key(x), key(y)) })
	items, next := page(targets, key, pg)
	return writeJSON(w, http.StatusOK, targetList{Targets: nonNil(items), NextCursor: next})
}

// joinStates is states as "a, b, c".
func joinStates(states []rollout.TargetState) string {
	names := make([]string, len(states))
	for i, s := range states {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

func (a *API) cancelRun(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	run, err := a.o.Runs.Cancel(id, principal(r).Name)
	if err != nil {
		return err
	}
	a.audit(r, "run cancelled", "run", id)
	return writeJSON(w, http.StatusOK, run)
}

// tagsRequest is the body of PUT /api/v1/instances/{id}/tags.
type tagsRequest struct {
	Tags map[string]string `json:"tags"`
}

func (a *API) setTags(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if err := a.knownInstance(id); err != nil {
		return err
	}
	var body tagsRequest
	if err := decodeBody(w, r, maxBody, &body); err != nil {
		return err
	}
	if body.Tags == nil { // absent or null: never read as "clear them all"
		return httpError{Code: http.StatusBadRequest, Msg: `want a JSON body {"tags": {...}}; {"tags": {}} clears them`}
	}
	if err := fleet.ValidateTags(body.Tags); err != nil {
		return refused(err)
	}
	inst, err := a.o.Tags.SetTags(r.Context(), id, body.Tags)
	if err != nil {
		return err
	}
	a.audit(r, "tags set", "instance", id, "tags", body.Tags)
	return writeJSON(w, http.StatusOK, inst)
}
