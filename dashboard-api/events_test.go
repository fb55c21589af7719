package dashboardapi

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/shared/protocol"
)

// frame is one Server-Sent Event; a comment has only Comment set.
type frame struct {
	ID, Event, Data, Comment string
}

// stream is an open GET /api/v1/events.
type stream struct {
	frames chan frame
	cancel context.CancelFunc
	done   chan struct{}
}

// openStream opens the event stream as token, resuming after lastID if
// set, and reads its frames until closed.
func (ta *testAPI) openStream(t testing.TB, token, lastID string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ta.srv.URL+"/api/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	res, err := ta.srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET /api/v1/events: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	s := &stream{frames: make(chan frame, 64), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer res.Body.Close()
		defer close(s.frames)
		sc := bufio.NewScanner(res.Body)
		var f frame
		for sc.Scan() {
			line := sc.Text()
			if comment, ok := strings.CutPrefix(line, ":"); ok {
				s.frames <- frame{Comment: strings.TrimSpace(comment)}
				continue
			}
			field, value, _ := strings.Cut(line, ": ")
			switch field {
			case "":
				if f != (frame{}) {
					s.frames <- f
				}
				f = frame{}
			case "id":
				f.ID = value
			case "event":
				f.Event = value
			case "data":
				f.Data = value
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *stream) close() { s.cancel(); <-s.done }

// next returns the next event that is not a comment, of kind if set.
func (s *stream) next(t testing.TB, kind string) frame {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-s.frames:
			if !ok {
				t.Fatal("stream closed")
			}
			if f.Comment == "" && (kind == "" || f.Event == kind) {
				return f
			}
		case <-timeout:
			t.Fatalf("no %q event within 10s", kind)
		}
	}
}

func publishJob(t testing.TB, feed *fleet.Feed, customer, instance string) {
	t.Helper()
	job := provision.Job{ID: "job-" + instance, Kind: "provision", InstanceID: instance, State: provision.JobRunning}
	if err := feed.Publish(fleet.ChangeJob, customer, instance, job); err != nil {
		t.Fatal(err)
	}
}

func TestEventsTenantIsolation(t *testing.T) {
	ta := newTestAPI(t, nil)
	asB := ta.openStream(t, tokenCustomerB, "")
	asOp := ta.openStream(t, tokenOperator, "")
	publishJob(t, ta.feed, "cus_a", "i-a")
	publishJob(t, ta.feed, "cus_b", "i-b")
	first := asB.next(t, fleet.ChangeJob)
	if !strings.Contains(first.Data, "i-b") {
		t.Errorf("customer B's first event: %+v, want only i-b's", first)
	}
	for _, want := range []string{"i-a", "i-b"} {
		if f := asOp.next(t, fleet.ChangeJob); !strings.Contains(f.Data, want) {
			t.Errorf("operator's event %+v, want %s's", f, want)
		}
	}
	// Resuming cannot reach another tenant's changes either.
	resumed := ta.openStream(t, tokenCustomerB, strings.Split(first.ID, "-")[0]+"-0")
	if f := resumed.next(t, fleet.ChangeJob); !strings.Contains(f.Data, "i-b") {
		t.Errorf("customer B resuming from the start: %+v", f)
	}
	// A change of A's, then one of B's: a stream sends changes in order, so
	// were A's let through, it would come before B's.
	publishJob(t, ta.feed, "cus_a", "i-a2")
	publishJob(t, ta.feed, "cus_b", "i-b2")
	for name, s := range map[string]*stream{"live": asB, "resumed": resumed} {
		if f := s.next(t, ""); f.Event != fleet.ChangeJob || !strings.Contains(f.Data, "i-b2") {
			t.Errorf("customer B's %s stream got %+v, want i-b2's job", name, f)
		}
	}
}

func TestEventsResumeAndStatus(t *testing.T) {
	ta := newTestAPI(t, func(o *Options) { o.Ping = 50 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := fleet.NewWatcher(ta.tracker, ta.feed)
	go func() { _ = w.Run(ctx, time.Hour) }()

	s := ta.openStream(t, tokenCustomerA, "")
	ta.tracker.Heartbeat(protocol.Heartbeat{InstanceID: "i-a", AgentVersion: "1.0.0", Health: protocol.HealthDegraded}, time.Now())
	f := s.next(t, fleet.ChangeInstance)
	var inst fleet.Instance
	if err := json.Unmarshal([]byte(f.Data), &inst); err != nil || inst.ID != "i-a" || inst.Status != fleet.StatusDegraded {
		t.Fatalf("instance event %+v (%v), want i-a degraded", inst, err)
	}
	// Idle streams get comments.
	for got := false; !got; {
		select {
		case c := <-s.frames:
			got = c.Comment == "ping"
		case <-time.After(10 * time.Second):
			t.Fatal("no ping comment within 10s")
		}
	}
	s.close()

	// Two changes while away: resuming from f's id sends both, in order.
	_, published, _ := ta.feed.Subscribe("", func(fleet.Change) bool { return true })
	defer published.Close()
	ta.tracker.Heartbeat(protocol.Heartbeat{InstanceID: "i-a", AgentVersion: "1.0.0", Health: protocol.HealthOK}, time.Now())
	select {
	case <-published.C: // the watcher saw it
	case <-time.After(10 * time.Second):
		t.Fatal("the watcher published nothing within 10s")
	}
	publishJob(t, ta.feed, "cus_a", "i-a")
	r := ta.openStream(t, tokenCustomerA, f.ID)
	if got := r.next(t, ""); got.Event != fleet.ChangeInstance || !strings.Contains(got.Data, `"status":"online"`) {
		t.Errorf("first resumed event %+v, want i-a online", got)
	}
	if got := r.next(t, ""); got.Event != fleet.ChangeJob {
		t.Errorf("second resumed event %+v, want the job", got)
	}
	// An id of another run cannot be resumed: the client is told to start over.
	if got := ta.openStream(t, tokenCustomerA, "otherrun-5").next(t, ""); got.Event != "reset" {
		t.Errorf("resuming another run's id: %+v, want a reset", got)
	}
}

// TestThousandStreams opens 1,000 streams, changes an instance's status,
// checks that every stream receives it, closes them all and checks that
// no goroutine is left behind.
func TestThousandStreams(t *testing.T) {
	const n = 1000
	ta := newTestAPI(t, nil)
	ta.srv.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = n
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := fleet.NewWatcher(ta.tracker, ta.feed)
	watching := make(chan struct{})
	go func() { defer close(watching); _ = w.Run(ctx, time.Hour) }()
	before := runtime.NumGoroutine()

	streams := make([]*stream, n)
	for i := range streams {
		streams[i] = ta.openStream(t, tokenOperator, "")
	}
	ta.tracker.Heartbeat(protocol.Heartbeat{InstanceID: "i-a", AgentVersion: "1.0.0", Health: protocol.HealthDegraded}, time.Now())
	var wg sync.WaitGroup
	for _, s := range streams {
		wg.Go(func() {
			if f := s.next(t, fleet.ChangeInstance); !strings.Contains(f.Data, `"status":"degraded"`) {
				t.Errorf("stream got %+v, want i-a degraded", f)
			}
		})
	}
	wg.Wait()
	for _, s := range streams {
		s.close()
	}
	ta.srv.Client().CloseIdleConnections()
	cancel()
	<-watching

	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after the streams closed, %d before:\n%s", got, before, buf[:runtime.Stack(buf, true)])
	}
}
