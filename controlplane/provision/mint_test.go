package provision_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/internal/proctest"
)

// tokenLost is a store whose first RecordToken takes effect, as if at
// ago before now, and then fails: the mint_token step ran, and its
// outcome was lost. With crash set, the control plane stops right there
// (crash cancels its context), so the step is not saved and runs again
// after the restart.
type tokenLost struct {
	provision.Store
	ago   time.Duration
	crash context.CancelFunc
	// calls counts RecordToken's calls.
	calls atomic.Int32
}

func (s *tokenLost) RecordToken(id, token string, ttl time.Duration, now time.Time) error {
	if s.calls.Add(1) > 1 {
		return s.Store.RecordToken(id, token, ttl, now)
	}
	if err := s.Store.RecordToken(id, token, ttl, now.Add(-s.ago)); err != nil {
		return err
	}
	if s.crash != nil {
		s.crash()
	}
	return errors.New("mint_token's outcome lost")
}

// TestMintTokenRetried: a mint_token step that ran and is run again, after
// a failure or after a crash before it was saved (resumed at once, or after
// its token's ttl), leaves one enrollment token, the one every launch
// carries, and the agent enrolls with it.
func TestMintTokenRetried(t *testing.T) {
	for _, tt := range []struct {
		name    string
		ago     time.Duration
		crashes bool
	}{
		{"failed, retried at once", 0, false},
		{"crashed, resumed at once", 0, true},
		{"crashed, resumed after the ttl", 2 * tokenTTL, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, c := t.TempDir(), newCloud()
			ctx, crash := context.WithCancel(context.Background())
			defer crash()
			lost := &tokenLost{ago: tt.ago}
			if tt.crashes {
				lost.crash = crash
			}
			setup := agentsSetup{wrap: func(st provision.Store) provision.Store {
				lost.Store = st
				return lost
			}}
			e, m := startEnrolling(ctx, t, dir, c, setup)
			inst, job, err := e.svc.Provision("acme", "starter", "acme")
			if err != nil {
				t.Fatal(err)
			}
			if tt.crashes {
				proctest.Until(t, "the crash after mint_token ran", func() bool { return ctx.Err() != nil })
				e.cancel()
				e, m = startEnrolling(context.Background(), t, dir, c, setup)
			}
			if job = e.wait(t, job.ID); job.State != provision.JobSucceeded {
				_, refused := m.launched(inst.ID)
				t.Fatalf("job %s (%s), enrollments refused: %v", job.State, job.Error, refused)
			}
			if n := lost.calls.Load(); n != 2 {
				t.Errorf("mint_token recorded the token %d times, want 2", n)
			}
			tokens, refused := m.launched(inst.ID)
			if len(slices.Compact(slices.Clone(tokens))) != 1 || len(refused) != 0 {
				t.Errorf("launches carried tokens %q, enrollments refused %v; want one token, taken", tokens, refused)
			}
			if n, creds, _ := e.st.Access(inst.ID); n != 1 || creds != 1 {
				t.Errorf("%d tokens and %d credentials, want 1 of each", n, creds)
			}
		})
	}
}
