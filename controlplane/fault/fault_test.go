package fault_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/stackpro/stackpro/controlplane/fault"
)

func TestKindsMatchTheirSentinelOnly(t *testing.T) {
	cause := errors.New("bbolt: disk full")
	err := fmt.Errorf("provision: %w", fault.Wrap(fault.Busy, cause, "instance %s is busy", "i-a"))
	if !errors.Is(err, fault.ErrBusy) {
		t.Error("a wrapped Busy error is not ErrBusy")
	}
	if errors.Is(err, fault.ErrConflict) || errors.Is(err, fault.ErrNotFound) {
		t.Error("a Busy error matched another kind")
	}
	if !errors.Is(err, cause) {
		t.Error("the cause is lost")
	}
	f, ok := fault.As(err)
	if !ok || f.Kind != fault.Busy || f.Msg != "instance i-a is busy" {
		t.Errorf("As = %+v, %v", f, ok)
	}
	if _, ok := fault.As(cause); ok {
		t.Error("an internal error reads as expected")
	}
	if one, other := fault.New(fault.Conflict, "a"), fault.New(fault.Conflict, "b"); errors.Is(one, other) {
		t.Error("two errors of a kind match each other: only the sentinel stands for the kind")
	}
}

func TestWithListsEachProblem(t *testing.T) {
	errInvalidRun := fault.New(fault.Invalid, "invalid run")
	err := errInvalidRun.With(errors.Join(errors.New("no command"), errors.New("timeout: too long")), errors.New("tags: empty"))
	want := []string{"no command", "timeout: too long", "tags: empty"}
	if !slices.Equal(err.Problems, want) || err.Kind != fault.Invalid {
		t.Errorf("With = %+v, want problems %q", err, want)
	}
	if !errors.Is(err, errInvalidRun) || !errors.Is(err, fault.ErrInvalid) {
		t.Error("an error With made is not its base's, or not Invalid")
	}
	if got := err.Error(); got != "invalid run: no command; timeout: too long; tags: empty" {
		t.Errorf("Error() = %q", got)
	}
}
