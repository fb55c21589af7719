package fleet_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

func all(fleet.Change) bool { return true }

func publish(t *testing.T, f *fleet.Feed, customer string, n int) {
	t.Helper()
	for i := range n {
		if err := f.Publish(fleet.ChangeJob, customer, "i-1", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
}

func receive(t *testing.T, l *fleet.Listener) fleet.Change {
	t.Helper()
	select {
	case c, ok := <-l.C:
		if !ok {
			t.Fatal("listener closed")
		}
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change within 10s")
	}
	return fleet.Change{}
}

func TestFeedResume(t *testing.T) {
	f := fleet.NewFeed(4, 16)
	_, l, _ := f.Subscribe("", all)
	defer l.Close()
	publish(t, f, "acme", 3)
	var ids []string
	for range 3 {
		ids = append(ids, receive(t, l).ID)
	}

	tests := []struct {
		name      string
		lastID    string
		wantN     int
		wantReset bool
	}{
		{"after the first", ids[0], 2, false},
		{"after the last", ids[2], 0, false},
		{"another run", "zzz-1", 0, true},
		{"garbage", "nonsense", 0, true},
		{"from the future", strings.Split(ids[0], "-")[0] + "-99", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backlog, l, reset := f.Subscribe(tt.lastID, all)
			defer l.Close()
			if len(backlog) != tt.wantN || reset != tt.wantReset {
				t.Errorf("Subscribe(%q) = %d changes, reset %v; want %d, %v", tt.lastID, len(backlog), reset, tt.wantN, tt.wantReset)
			}
		})
	}
	backlog, l2, _ := f.Subscribe(ids[0], all)
	defer l2.Close()
	if backlog[0].ID != ids[1] || backlog[1].ID != ids[2] {
		t.Errorf("backlog %v, want %v", backlog, ids[1:])
	}

	// Five more push the first ones out of a ring of four.
	publish(t, f, "acme", 5)
	if _, l, reset := f.Subscribe(ids[2], all); !reset {
		t.Error("resuming from a change that left the ring: no reset")
	} else {
		l.Close()
	}
}

func TestFeedFilterAndSlowListener(t *testing.T) {
	f := fleet.NewFeed(64, 2)
	_, mine, _ := f.Subscribe("", func(c fleet.Change) bool { return c.Customer == "acme" })
	defer mine.Close()
	_, slow, _ := f.Subscribe("", all)
	defer slow.Close()

	publish(t, f, "other", 2)
	publish(t, f, "acme", 1)
	c := receive(t, mine)
	var data map[string]int
	if err := json.Unmarshal(c.Data, &data); err != nil || c.Customer != "acme" {
		t.Fatalf("acme's listener got %+v (%v)", c, err)
	}
	// slow never read: a buffer of 2 overflowed at the third change.
	n := 0
	for range slow.C {
		n++
	}
	if n != 2 {
		t.Errorf("slow listener got %d changes before being let go, want 2", n)
	}
	slow.Close() // twice is fine
}

func TestWatch(t *testing.T) {
	th := fleet.Thresholds{StaleAfter: 300 * time.Millisecond, OfflineAfter: time.Hour}
	tr := fleet.NewTracker(th, []fleet.Instance{{ID: "i-1", Customer: "acme"}})
	f := fleet.NewFeed(64, 64)
	_, l, _ := f.Subscribe("", all)
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	w := fleet.NewWatcher(tr, f)
	go func() { done <- w.Run(ctx, 50*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	status := func() fleet.Status {
		t.Helper()
		var inst fleet.Instance
		c := receive(t, l)
		if err := json.Unmarshal(c.Data, &inst); err != nil || c.Kind != fleet.ChangeInstance || c.Customer != "acme" {
			t.Fatalf("change %+v (%v)", c, err)
		}
		return inst.Status
	}
	tr.Enrolled("i-1", time.Now())
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-1", Health: protocol.HealthOK}, time.Now())
	// The watcher may see the enrolment before the heartbeat (stale), then online.
	if s := status(); s != fleet.StatusOnline {
		if s != fleet.StatusStale || status() != fleet.StatusOnline {
			t.Fatalf("after enrolling and a heartbeat: %s", s)
		}
	}
	// Heartbeats that change nothing but the last-seen time are not changes.
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-1", Health: protocol.HealthOK}, time.Now())
	tr.Heartbeat(protocol.Heartbeat{InstanceID: "i-1", Health: protocol.HealthDegraded}, time.Now())
	if s := status(); s != fleet.StatusDegraded {
		t.Fatalf("after a degraded heartbeat: %s", s)
	}
	// Silence turns it stale without anything being recorded: the sweep sees it.
	if s := status(); s != fleet.StatusStale {
		t.Fatalf("after silence: %s", s)
	}
}

// Closing the feed lets every subscriber go, and each later one at once.
func TestFeedClose(t *testing.T) {
	f := fleet.NewFeed(8, 8)
	_, before, _ := f.Subscribe("", func(fleet.Change) bool { return true })
	f.Close()
	_, after, _ := f.Subscribe("", func(fleet.Change) bool { return true })
	for name, l := range map[string]*fleet.Listener{"before": before, "after": after} {
		select {
		case _, open := <-l.C:
			if open {
				t.Errorf("a subscriber from %s the close got a change", name)
			}
		default:
			t.Errorf("a subscriber from %s the close is still subscribed", name)
		}
		l.Close() // still safe
	}
	if err := f.Publish(fleet.ChangeJob, "c", "i-a", 1); err != nil {
		t.Errorf("Publish after Close: %v", err)
	}
}
