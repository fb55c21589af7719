package proctest

import (
	"testing"
	"time"
)

// Timeout is how long Until waits: generous, because the tests share a
// small machine with real processes and a real Docker engine.
const Timeout = 60 * time.Second

// every is how often the condition is checked.
const every = 50 * time.Millisecond

// Until checks cond until it holds, and fails t if it does not within
// Timeout; what says what was awaited.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Within(t, Timeout, what, cond)
}

// Within is Until with a limit of its own.
func Within(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(every)
	}
}
