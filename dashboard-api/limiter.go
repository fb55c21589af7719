package dashboardapi

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiter bounds how often one key (an IP address, an account) may do
// something: a token bucket per key that holds n tokens and refills them
// over a window, so n attempts may come at once and then one more every
// window/n. A key whose bucket is full again is forgotten. It is safe for
// concurrent use.
type limiter struct {
	every  rate.Limit
	burst  int
	window time.Duration

	mu    sync.Mutex
	keys  map[string]*rate.Limiter
	swept time.Time
}

// newLimiter allows n events per window for each key.
func newLimiter(n int, window time.Duration) *limiter {
	return &limiter{every: rate.Every(window / time.Duration(n)), burst: n, window: window,
		keys: map[string]*rate.Limiter{}}
}

// Allow takes a token from key's bucket at now. When the bucket is empty
// it takes nothing and says how long until the next token.
func (l *limiter) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b, found := l.keys[key]
	if !found {
		b = rate.NewLimiter(l.every, l.burst)
		l.keys[key] = b
	}
	r := b.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep forgets, once per window, the keys whose buckets are full again:
// a new bucket would be the same.
func (l *limiter) sweep(now time.Time) {
	if now.Sub(l.swept) < l.window {
		return
	}
	l.swept = now
	for key, b := range l.keys {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.keys, key)
		}
	}
}
