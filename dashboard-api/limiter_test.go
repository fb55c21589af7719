package dashboardapi

import (
	"testing"
	"time"
)

func TestLimiterAllow(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	l := newLimiter(5, time.Minute)
	for i := range 5 {
		if ok, _ := l.Allow("1.2.3.4", t0); !ok {
			t.Fatalf("attempt %d refused, want the first 5 allowed", i+1)
		}
	}
	ok, retry := l.Allow("1.2.3.4", t0)
	if ok || retry != 12*time.Second {
		t.Fatalf("6th attempt: allowed %v, retry after %s; want refused, retry after 12s", ok, retry)
	}
	// A refusal takes no token: the next one comes when it said.
	if ok, _ := l.Allow("1.2.3.4", t0.Add(retry-time.Millisecond)); ok {
		t.Error("allowed before retry-after")
	}
	if ok, _ := l.Allow("1.2.3.4", t0.Add(retry)); !ok {
		t.Error("refused at retry-after")
	}
	if ok, _ := l.Allow("5.6.7.8", t0); !ok {
		t.Error("another key was refused")
	}
}

func TestLimiterForgetsFullBuckets(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	l := newLimiter(2, time.Minute) // a token every 30 s
	l.Allow("a", t0)
	l.Allow("b", t0.Add(50*time.Second))
	l.Allow("c", t0.Add(65*time.Second)) // sweeps: a refilled at 30 s, b will at 80 s
	if _, ok := l.keys["a"]; ok {
		t.Error("a's full bucket was kept")
	}
	if _, ok := l.keys["b"]; !ok {
		t.Error("b's bucket, still refilling, was dropped")
	}
	l.Allow("c", t0.Add(5*time.Minute))
	if len(l.keys) != 1 {
		t.Errorf("%d buckets after every key refilled, want only c's", len(l.keys))
	}
}
