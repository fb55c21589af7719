// Package rollout is the vocabulary of fleet command runs: what an
// operator asks for (RunSpec, with its rate limits), where a run and each
// of its targets stand, and how they read in JSON. The API, stackctl and
// the engine that runs them (rollout/engine) all speak it; it does no I/O.
package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
)

// Limit is a count given as a number ("10") or a percentage of the run's
// targets ("10%"). It is JSON as that string.
type Limit struct {
	N       int
	Percent bool
}

// ParseLimit reads "10" or "10%" (0 to 100).
func ParseLimit(s string) (Limit, error) {
	num, pct := strings.CutSuffix(strings.TrimSpace(s), "%")
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || pct && n > 100 {
		return Limit{}, fmt.Errorf("limit %q: want a number or a percentage (0-100%%)", s)
	}
	return Limit{N: n, Percent: pct}, nil
}

func (l Limit) String() string {
	if l.Percent {
		return strconv.Itoa(l.N) + "%"
	}
	return strconv.Itoa(l.N)
}

// Of is l applied to total targets. A percentage rounds down, so "5%" of
// 1,000 allows 50.
func (l Limit) Of(total int) int {
	if !l.Percent {
		return l.N
	}
	return int(math.Floor(float64(total) * float64(l.N) / 100))
}

// MarshalText writes String.
func (l Limit) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads what ParseLimit reads.
func (l *Limit) UnmarshalText(b []byte) (err error) {
	*l, err = ParseLimit(string(b))
	return err
}

// Duration is a time.Duration written in JSON as Go writes it ("30s").
type Duration time.Duration

// MarshalText writes d as "1m30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads "30s", "2m" and the like.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// RunSpec is what an operator asks for.
type RunSpec struct {
	Command string          `json:"command"`
	Args    json.RawMessage `json:"args,omitempty"`
	Select  fleet.Selection `json:"select"`
	// MaxConcurrency is how many targets may be in flight at once (0: all).
	MaxConcurrency Limit `json:"max_concurrency"`
	// MaxErrors is how many targets may fail or time out before the run
	// stops sending; the next error stops it. Undeliverable targets do
	// not count: their agent never saw the command.
	MaxErrors Limit `json:"max_errors"`
	// Timeout is how long one target has to answer once sent.
	Timeout Duration `json:"timeout"`
}

// Run limits.
const (
	MinRunTimeout = time.Second
	MaxRunTimeout = 30 * time.Minute
)

// Validate reports what is wrong with the spec, every problem at once.
// Whether Command is in the agents' catalog is the caller's to check.
func (s RunSpec) Validate() error {
	var errs []error
	if s.Command == "" {
		errs = append(errs, errors.New("command is required"))
	}
	if len(s.Args) > 0 && !json.Valid(s.Args) {
		errs = append(errs, errors.New("args: not JSON"))
	}
	if err := s.Select.Validate(); err != nil {
		errs = append(errs, err)
	}
	if t := time.Duration(s.Timeout); t < MinRunTimeout || t > MaxRunTimeout {
		errs = append(errs, fmt.Errorf("timeout: want %s to %s", MinRunTimeout, MaxRunTimeout))
	}
	return errors.Join(errs...)
}

// RunState is where a run stands.
type RunState string

// Run states. Only RunRunning is not final.
const (
	RunRunning RunState = "running"
	// RunCompleted: every target was sent and has its outcome.
	RunCompleted RunState = "completed"
	// RunStopped: the error budget was spent; unsent targets are skipped.
	RunStopped RunState = "stopped"
	// RunCancelled: an operator cancelled it; unsent targets are skipped.
	RunCancelled RunState = "cancelled"
)

// TargetState is where one target of a run stands.
type TargetState string

// Target states, in the order a target goes through them.
const (
	TargetPending   TargetState = "pending"
	TargetDelivered TargetState = "delivered" // sent to its connected agent
	TargetRunning   TargetState = "running"   // the agent accepted it
	TargetSucceeded TargetState = "succeeded"
	TargetFailed    TargetState = "failed" // the agent ran it and it failed, or refused it
	TargetTimedOut  TargetState = "timed_out"
	// TargetUndeliverable: no agent connected to take it.
	TargetUndeliverable TargetState = "undeliverable"
	// TargetSkipped: never sent, as the run stopped or was cancelled first.
	TargetSkipped TargetState = "skipped"
)

// TargetStates lists every state, in order.
var TargetStates = []TargetState{TargetPending, TargetDelivered, TargetRunning, TargetSucceeded, TargetFailed,
	TargetTimedOut, TargetUndeliverable, TargetSkipped}

// Final reports whether a target in state s is done.
func (s TargetState) Final() bool {
	return s != TargetPending && s != TargetDelivered && s != TargetRunning
}

// Error reports whether s counts against a run's error budget.
func (s TargetState) Error() bool { return s == TargetFailed || s == TargetTimedOut }

// Run is a command run, as the API shows it.
type Run struct {
	ID        string    `json:"id"`
	Spec      RunSpec   `json:"spec"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	State     RunState  `json:"state"`
	// Reason says why a run stopped or who cancelled it.
	Reason     string    `json:"reason,omitempty"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Total is the number of targets; Concurrency and ErrorBudget are the
	// spec's limits applied to it.
	Total       int `json:"total"`
	Concurrency int `json:"concurrency"`
	ErrorBudget int `json:"error_budget"`
	// Sent is how many targets, in instance id order, have been sent the
	// command: the rest were never sent.
	Sent int `json:"sent"`
	// Counts holds how many targets are in each state.
	Counts map[TargetState]int `json:"counts"`
}

// Done reports whether r is final.
func (r Run) Done() bool { return r.State != RunRunning }

// Errors is how many targets count against the budget.
func (r Run) Errors() int { return r.Counts[TargetFailed] + r.Counts[TargetTimedOut] }

// Target is one instance of a run.
type Target struct {
	Instance   string      `json:"instance"`
	State      TargetState `json:"state"`
	Nonce      string      `json:"nonce,omitempty"`
	SentAt     time.Time   `json:"sent_at,omitzero"`
	FinishedAt time.Time   `json:"finished_at,omitzero"`
	Error      string      `json:"error,omitempty"`
	// Refused is the agent's refusal reason, when it refused.
	Refused string          `json:"refused,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
}
