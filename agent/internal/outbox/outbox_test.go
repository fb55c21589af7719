package outbox_test

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/stackpro/stackpro/agent/internal/outbox"
)

func openOutbox(t testing.TB, path string, opts outbox.Options) *outbox.Outbox {
	t.Helper()
	o, err := outbox.Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// put stores an entry named like "e1" (an event) or "m1" (a metric): the
// name is its MsgID and its kind comes from the first letter.
func put(o *outbox.Outbox, name string) error {
	kind := kindOf(name)
	return o.Put(kind, subjectOf(kind), name, []byte("data-"+name))
}

func kindOf(name string) outbox.Kind {
	if name[0] == 'm' {
		return outbox.KindMetrics
	}
	return outbox.KindEvent
}

func subjectOf(k outbox.Kind) string {
	if k == outbox.KindMetrics {
		return "stackpro.agent.i-1.metrics"
	}
	return "stackpro.agent.i-1.events"
}

func mustPut(t *testing.T, o *outbox.Outbox, names string) {
	t.Helper()
	for _, name := range strings.Fields(names) {
		if err := put(o, name); err != nil {
			t.Fatalf("Put(%s): %v", name, err)
		}
	}
}

// pending returns every pending entry after checking that each one is intact
// and that seqs increase.
func pending(t *testing.T, o *outbox.Outbox) []outbox.Entry {
	t.Helper()
	entries, err := o.Peek(1 << 20)
	if err != nil {
		t.Fatalf("Peek: %v", err)
	}
	for i, e := range entries {
		if i > 0 && e.Seq <= entries[i-1].Seq {
			t.Errorf("seq %d follows seq %d", e.Seq, entries[i-1].Seq)
		}
		k := kindOf(e.MsgID)
		if e.Kind != k || e.Subject != subjectOf(k) || !bytes.Equal(e.Data, []byte("data-"+e.MsgID)) {
			t.Errorf("entry %d came back as %+v", e.Seq, e)
		}
	}
	return entries
}

func names(entries []outbox.Entry) string {
	var s []string
	for _, e := range entries {
		s = append(s, e.MsgID)
	}
	return strings.Join(s, " ")
}

func TestOrder(t *testing.T) {
	o := openOutbox(t, filepath.Join(t.TempDir(), "outbox.db"), outbox.Options{})
	mustPut(t, o, "e1 m1 e2 m2 e3")

	got, err := o.Peek(2)
	if err != nil {
		t.Fatalf("Peek(2): %v", err)
	}
	if names(got) != "e1 m1" {
		t.Errorf("Peek(2) = %q, want %q", names(got), "e1 m1")
	}
	for _, e := range got {
		if err := o.Remove(e.Seq); err != nil {
			t.Fatalf("Remove(%d): %v", e.Seq, err)
		}
	}
	if err := o.Remove(got[0].Seq); err != nil {
		t.Errorf("Remove of a removed seq: %v, want nil", err)
	}
	if err := o.Remove(1 << 40); err != nil {
		t.Errorf("Remove of an unknown seq: %v, want nil", err)
	}
	mustPut(t, o, "m3")
	if got, want := names(pending(t, o)), "e2 m2 e3 m3"; got != want {
		t.Errorf("pending = %q, want %q", got, want)
	}
	if st := o.Stats(); st != (outbox.Stats{Pending: 4}) {
		t.Errorf("Stats() = %+v; want 4 pending", st)
	}
}

func TestPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	opts := outbox.Options{MaxEntries: 3}
	o := openOutbox(t, path, opts)
	mustPut(t, o, "m1 e1 m2 e2") // m1 dropped
	before := pending(t, o)
	if err := o.Remove(before[len(before)-1].Seq); err != nil { // the highest seq so far
		t.Fatalf("Remove: %v", err)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	o = openOutbox(t, path, opts)
	if got, want := names(pending(t, o)), "e1 m2"; got != want {
		t.Errorf("after reopen pending = %q, want %q", got, want)
	}
	if st := o.Stats(); st != (outbox.Stats{Pending: 2, DroppedMetrics: 1}) {
		t.Errorf("after reopen Stats() = %+v; want 2 pending, 1 metric dropped", st)
	}
	mustPut(t, o, "e3")
	after := pending(t, o)
	if last, prev := after[len(after)-1].Seq, before[len(before)-1].Seq; last <= prev {
		t.Errorf("seq after reopen = %d, want > %d (seqs must never be reused)", last, prev)
	}
}

func TestBound(t *testing.T) {
	tests := []struct {
		name        string
		max         int
		puts        string
		lastErr     error // expected from the last Put; the others must succeed
		wantPending string
		wantDropped uint64
		// wantEvents is how many events were dropped at the hard cap.
		wantEvents uint64
	}{
		{
			name:        "oldest metrics dropped first",
			max:         5,
			puts:        "m1 e1 m2 e2 m3 e3 m4 m5",
			wantPending: "e1 e2 e3 m4 m5",
			wantDropped: 3,
		},
		{
			name:        "new metric dropped when full of events",
			max:         2,
			puts:        "e1 e2 m1",
			wantPending: "e1 e2",
			wantDropped: 1,
		},
		{
			name:        "events kept past the bound up to 4x",
			max:         2,
			puts:        "m1 e1 e2 e3 e4 e5 e6 e7 e8",
			wantPending: "e1 e2 e3 e4 e5 e6 e7 e8",
			wantDropped: 1,
		},
		{
			name:        "event past 4x is refused",
			max:         2,
			puts:        "e1 e2 e3 e4 e5 e6 e7 e8 m1 e9",
			lastErr:     outbox.ErrFull,
			wantPending: "e1 e2 e3 e4 e5 e6 e7 e8",
			wantDropped: 1,
			wantEvents:  1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := openOutbox(t, filepath.Join(t.TempDir(), "outbox.db"), outbox.Options{MaxEntries: tt.max})
			puts := strings.Fields(tt.puts)
			mustPut(t, o, strings.Join(puts[:len(puts)-1], " "))
			if err := put(o, puts[len(puts)-1]); !errors.Is(err, tt.lastErr) {
				t.Errorf("last Put(%s) = %v, want %v", puts[len(puts)-1], err, tt.lastErr)
			}
			if got := names(pending(t, o)); got != tt.wantPending {
				t.Errorf("pending = %q, want %q", got, tt.wantPending)
			}
			want := outbox.Stats{Pending: len(strings.Fields(tt.wantPending)), DroppedMetrics: tt.wantDropped,
				DroppedEvents: tt.wantEvents, UnreportedEvents: tt.wantEvents}
			if st := o.Stats(); st != want {
				t.Errorf("Stats() = %+v; want %+v", st, want)
			}
		})
	}
}

// Events refused at the hard cap are counted, survive a reopen, and are
// reported once by one event spooled when there is room again.
func TestDroppedEventsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	o := openOutbox(t, path, outbox.Options{MaxEntries: 1})
	mustPut(t, o, "e1 e2 e3 e4")
	for _, e := range []string{"e5", "e6"} {
		if err := put(o, e); !errors.Is(err, outbox.ErrFull) {
			t.Fatalf("Put(%s) at the hard cap = %v, want ErrFull", e, err)
		}
	}
	report := func(n uint64) (string, string, []byte) {
		name := fmt.Sprintf("e-dropped-%d", n)
		return subjectOf(outbox.KindEvent), name, []byte("data-" + name)
	}
	if _, err := o.ReportDroppedEvents(report); !errors.Is(err, outbox.ErrFull) {
		t.Fatalf("ReportDroppedEvents with no room = %v, want ErrFull", err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = openOutbox(t, path, outbox.Options{MaxEntries: 1})
	if st := o.Stats(); st != (outbox.Stats{Pending: 4, DroppedEvents: 2, UnreportedEvents: 2}) {
		t.Fatalf("after reopen Stats() = %+v, want 4 pending and 2 events dropped, unreported", st)
	}
	first := pending(t, o)[0]
	if err := o.Remove(first.Seq); err != nil {
		t.Fatal(err)
	}
	if n, err := o.ReportDroppedEvents(report); err != nil || n != 2 {
		t.Fatalf("ReportDroppedEvents = %d, %v, want 2", n, err)
	}
	if n, err := o.ReportDroppedEvents(report); err != nil || n != 0 {
		t.Errorf("a second ReportDroppedEvents = %d, %v, want 0: nothing new was dropped", n, err)
	}
	if got, want := names(pending(t, o)), "e2 e3 e4 e-dropped-2"; got != want {
		t.Errorf("pending = %q, want %q", got, want)
	}
	if st := o.Stats(); st != (outbox.Stats{Pending: 4, DroppedEvents: 2}) {
		t.Errorf("Stats() = %+v, want 4 pending, 2 events dropped, none unreported", st)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	openOutbox(t, path, outbox.Options{})
	o, err := outbox.Open(path, outbox.Options{Timeout: 100 * time.Millisecond})
	if err == nil {
		o.Close()
		t.Fatal("second Open of the same file succeeded")
	}
	if !errors.Is(err, bolterrors.ErrTimeout) {
		t.Errorf("second Open: %v, want a wrapped bbolt timeout", err)
	}
}

func TestNotify(t *testing.T) {
	o := openOutbox(t, filepath.Join(t.TempDir(), "outbox.db"), outbox.Options{})
	select {
	case <-o.Notify():
		t.Fatal("notified before any Put")
	default:
	}
	mustPut(t, o, "e1 m1") // two Puts, one buffered wake-up, no blocking
	for i, want := range []bool{true, false} {
		select {
		case <-o.Notify():
			if !want {
				t.Errorf("receive %d: a second wake-up was buffered", i)
			}
		default:
			if want {
				t.Errorf("receive %d: no wake-up after Put", i)
			}
		}
	}
}

// TestConcurrent runs a producer against a flusher on a small outbox, so
// metrics get dropped and the producer meets ErrFull (the flusher holds off
// until it has), and checks that every event arrives exactly once and in order.
func TestConcurrent(t *testing.T) {
	const n = 200
	o := openOutbox(t, filepath.Join(t.TempDir(), "outbox.db"), outbox.Options{MaxEntries: 8})
	removed := make(chan struct{}, 1) // the flusher made room
	stop := make(chan struct{})       // the test is over
	defer close(stop)
	full := make(chan struct{})     // the producer met ErrFull once
	produced := make(chan struct{}) // the producer is done

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(produced)
		for i := range n {
			for {
				err := put(o, fmt.Sprintf("e%d", i))
				if err == nil {
					break
				}
				if !errors.Is(err, outbox.ErrFull) {
					t.Errorf("Put event %d: %v", i, err)
					return
				}
				if !isClosed(full) {
					close(full)
				}
				select {
				case <-removed:
				case <-stop:
					return
				}
			}
			if err := put(o, fmt.Sprintf("m%d", i)); err != nil {
				t.Errorf("Put metric %d: %v", i, err)
				return
			}
		}
	}()

	var events, metrics []string
	deadline := time.After(30 * time.Second)
	select {
	case <-full:
	case <-produced:
		t.Fatal("the producer finished without meeting ErrFull")
	case <-deadline:
		t.Fatal("the producer never met ErrFull")
	}
	for {
		done := isClosed(produced) // before Peek: nothing can be Put after it
		batch, err := o.Peek(16)
		if err != nil {
			t.Fatalf("Peek: %v", err)
		}
		if len(batch) == 0 {
			if done {
				break
			}
			select {
			case <-o.Notify():
			case <-produced:
			case <-deadline:
				t.Fatalf("stalled after %d events", len(events))
			}
			continue
		}
		for _, e := range batch {
			if e.Kind == outbox.KindEvent {
				events = append(events, e.MsgID)
			} else {
				metrics = append(metrics, e.MsgID)
			}
			if err := o.Remove(e.Seq); err != nil {
				t.Fatalf("Remove(%d): %v", e.Seq, err)
			}
		}
		select {
		case removed <- struct{}{}:
		default:
		}
	}
	wg.Wait()

	for i, id := range events {
		if want := fmt.Sprintf("e%d", i); id != want {
			t.Fatalf("event %d delivered as %s, want %s (got %d events)", i, id, want, len(events))
		}
	}
	if len(events) != n {
		t.Errorf("delivered %d events, want %d", len(events), n)
	}
	for i := 1; i < len(metrics); i++ {
		prev, _ := strconv.Atoi(metrics[i-1][1:])
		cur, _ := strconv.Atoi(metrics[i][1:])
		if cur <= prev {
			t.Fatalf("metric %s delivered after %s", metrics[i], metrics[i-1])
		}
	}
	// A metric dropped while the flusher holds it from Peek is counted and
	// still delivered, so the count may exceed n but never fall short.
	st := o.Stats()
	if st.Pending != 0 || len(metrics)+int(st.DroppedMetrics) < n {
		t.Errorf("Stats() = %+v with %d metrics delivered; want 0 left and at least %d metrics accounted for",
			st, len(metrics), n)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func BenchmarkPut(b *testing.B) {
	o := openOutbox(b, filepath.Join(b.TempDir(), "outbox.db"), outbox.Options{MaxEntries: 1000})
	data := bytes.Repeat([]byte("x"), 512)
	b.ReportAllocs()
	for b.Loop() {
		if err := o.Put(outbox.KindMetrics, "stackpro.agent.i-1.metrics", "", data); err != nil {
			b.Fatal(err)
		}
	}
}
