package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kinds of Change.
const (
	// ChangeInstance carries an Instance whose visible state changed.
	ChangeInstance = "instance"
	// ChangeJob carries a Job that saved a step.
	ChangeJob = "job"
	// ChangeAgentEvent carries a protocol.Event an agent reported.
	ChangeAgentEvent = "agent_event"
)

// Change is one thing that happened in the fleet, as the API streams it.
type Change struct {
	// ID is "<run>-<seq>": seq rises by one per change within one run of
	// the control plane, run tells the runs apart.
	ID   string
	Kind string
	// Customer is whose instance the change is about; empty for none.
	Customer   string
	InstanceID string
	Data       json.RawMessage
}

// Feed keeps the last changes in a ring and hands new ones to its
// subscribers. A subscriber that falls a buffer behind is let go (its
// channel closed), never blocked on: it resumes from the ring with the id
// of the last change it saw, or learns it must start over. Safe for
// concurrent use.
type Feed struct {
	run    string
	buffer int

	mu     sync.Mutex
	seq    uint64
	ring   []Change // change seq is at ring[(seq-1) % len(ring)]
	subs   map[*Listener]struct{}
	closed bool
}

// NewFeed returns a feed remembering the last size changes; each
// subscriber may fall buffer changes behind.
func NewFeed(size, buffer int) *Feed {
	return &Feed{run: strconv.FormatInt(time.Now().UnixNano(), 36), buffer: buffer,
		ring: make([]Change, size), subs: map[*Listener]struct{}{}}
}

// Publisher takes a change of the fleet for the clients that follow it;
// Feed is one.
type Publisher interface {
	Publish(kind, customer, instanceID string, v any) error
}

// Listener receives the changes its filter keeps on C, until Close or
// until it falls behind (C is then closed).
type Listener struct {
	C    <-chan Change
	c    chan Change
	keep func(Change) bool
	feed *Feed
}

// Close ends the subscription; it is safe to call more than once.
func (s *Listener) Close() {
	f := s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[s]; ok {
		delete(f.subs, s)
		close(s.c)
	}
}

// Publish adds a change of kind about customer's instance, v as its data.
func (f *Feed) Publish(kind, customer, instanceID string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("fleet: encoding a %s change: %w", kind, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	c := Change{ID: f.run + "-" + strconv.FormatUint(f.seq, 10), Kind: kind, Customer: customer, InstanceID: instanceID, Data: data}
	f.ring[(f.seq-1)%uint64(len(f.ring))] = c
	for s := range f.subs {
		if !s.keep(c) {
			continue
		}
		select {
		case s.c <- c:
		default: // too far behind: it resumes from the ring
			delete(f.subs, s)
			close(s.c)
		}
	}
	return nil
}

// Subscribe returns the kept changes after lastID and a subscription to
// the next ones. lastID "" asks for new changes only. reset reports that
// lastID is from another run or older than the ring: changes were missed
// and the subscriber should read the whole state again.
func (f *Feed) Subscribe(lastID string, keep func(Change) bool) (backlog []Change, sub *Listener, reset bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if lastID != "" {
		backlog, reset = f.after(lastID, keep)
	}
	c := make(chan Change, f.buffer)
	sub = &Listener{C: c, c: c, keep: keep, feed: f}
	if f.closed {
		close(c)
	} else {
		f.subs[sub] = struct{}{}
	}
	return backlog, sub, reset
}

// Close lets every subscriber go, as if each had fallen behind (its C is
// closed), and every later one at once: the control plane is stopping,
// and clients resume from their last id on whatever serves them next.
func (f *Feed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for s := range f.subs {
		delete(f.subs, s)
		close(s.c)
	}
}

// after returns the kept changes after lastID; f.mu is held.
func (f *Feed) after(lastID string, keep func(Change) bool) ([]Change, bool) {
	run, seqText, _ := strings.Cut(lastID, "-")
	last, err := strconv.ParseUint(seqText, 10, 64)
	if run != f.run || err != nil || last > f.seq {
		return nil, true
	}
	if f.seq-last > min(f.seq, uint64(len(f.ring))) {
		return nil, true // the next one it needs has left the ring
	}
	var out []Change
	for seq := last + 1; seq <= f.seq; seq++ {
		if c := f.ring[(seq-1)%uint64(len(f.ring))]; keep(c) {
			out = append(out, c)
		}
	}
	return out, false
}

// Watcher publishes an instance change whenever what an operator or a
// customer sees of an instance changes: at once for what the tracker
// records, and by a sweep for statuses that silence changes (stale,
// offline). The last-seen time alone is not a change.
type Watcher struct {
	t    *Tracker
	f    *Feed
	seen map[string]Instance
}

// NewWatcher returns a watcher of t publishing to f; what t holds now is
// not a change.
func NewWatcher(t *Tracker, f *Feed) *Watcher {
	w := &Watcher{t: t, f: f, seen: map[string]Instance{}}
	for _, inst := range t.List(time.Now()) {
		w.seen[inst.ID] = visible(inst)
	}
	return w
}

// Run watches until ctx ends, sweeping every interval.
func (w *Watcher) Run(ctx context.Context, every time.Duration) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		var ids []string
		sweep := false
		select {
		case <-ctx.Done():
			return nil
		case <-w.t.notify:
			ids = w.t.takeChanged()
		case <-tick.C:
			ids, sweep = w.t.ids(), true
		}
		now := time.Now()
		for _, id := range ids {
			inst, err := w.t.Get(id, now)
			if err != nil {
				delete(w.seen, id) // removed: its last job says why
				continue
			}
			old, ok := w.seen[id]
			// A sweep looks only for what silence changes, the status;
			// everything else comes through notify.
			if ok && (sweep && old.Status == inst.Status || !sweep && reflect.DeepEqual(old, visible(inst))) {
				continue
			}
			v := visible(inst)
			w.seen[id] = v
			if err := w.f.Publish(ChangeInstance, inst.Customer, id, inst); err != nil {
				return err
			}
		}
	}
}

// visible is inst without what changes on every heartbeat.
func visible(inst Instance) Instance {
	inst.LastSeen = time.Time{}
	return inst
}
