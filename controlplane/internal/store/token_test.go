package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/internal/store"
)

// TestRecordTokenAgain: recording an instance's token again, as a retried
// mint_token step does, keeps one record of it. A token not used yet is
// renewed, so that a step resumed after its ttl hands out a token that
// works; a used one stays used, by its key alone.
func TestRecordTokenAgain(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "i-a")
	const token, ttl = "spe_derived", time.Hour
	record := func(now time.Time) {
		t.Helper()
		if err := s.RecordToken("i-a", token, ttl, now); err != nil {
			t.Fatalf("RecordToken at %v: %v", now, err)
		}
		if tokens, _, _ := s.Access("i-a"); tokens != 1 {
			t.Fatalf("after RecordToken at %v: %d tokens, want 1", now, tokens)
		}
	}
	record(t0)
	record(t0) // retried at once
	resumed := t0.Add(2 * ttl)
	record(resumed) // resumed after the first record expired
	redeem(t, s, "i-a", token, keyA, resumed.Add(ttl-time.Second))

	record(resumed.Add(ttl))
	if err := s.RedeemToken("i-a", token, keyB, resumed.Add(ttl)); !errors.Is(err, store.ErrTokenRefused) {
		t.Errorf("another key redeemed a used token recorded again: %v, want ErrTokenRefused", err)
	}
	redeem(t, s, "i-a", token, keyA, resumed.Add(ttl)) // the agent that used it, asking again
	if tokens, creds, _ := s.Access("i-a"); tokens != 1 || creds != 1 {
		t.Errorf("%d tokens and %d credentials, want 1 of each", tokens, creds)
	}
}

// TestRecordTokenKeepsALaterExpiry: recording a token again never
// shortens the time it is good for.
func TestRecordTokenKeepsALaterExpiry(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "i-a")
	if err := s.RecordToken("i-a", "spe_derived", 2*time.Hour, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordToken("i-a", "spe_derived", time.Hour, t0); err != nil {
		t.Fatal(err)
	}
	redeem(t, s, "i-a", "spe_derived", keyA, t0.Add(90*time.Minute))
}
