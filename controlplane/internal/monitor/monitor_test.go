package monitor_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/monitor"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/shared/protocol"
)

const a, b = "i-aaaa", "i-bbbb"

type noEnroll struct{}

func (noEnroll) RedeemToken(string, string, string, time.Time) error { return broker.ErrRefused }
func (noEnroll) Enrolled(string, time.Time)                          {}

// setup runs a real broker and store with two enrolled instances and a
// monitor over them. Messages are published with the control plane's own
// connection, standing in for agents (the broker's permissions, tested in
// package broker, are what tie a subject to its agent).
func setup(t *testing.T) (*fleet.Tracker, *store.Store, *nats.Conn, func()) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	insts := []fleet.Instance{{ID: a, CreatedAt: now, EnrolledAt: now}, {ID: b, CreatedAt: now, EnrolledAt: now}}
	if err := st.PutInstances(insts...); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	brk, err := broker.Start(context.Background(), broker.Options{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "js"),
		Credentials: map[string]string{}, Enroll: noEnroll{}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(brk.Shutdown)
	tracker := fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Minute, OfflineAfter: time.Hour}, insts)
	mon := monitor.New(monitor.Options{Tracker: tracker, Store: st, Keys: brk, Conn: brk.Conn(), Sys: brk.SysConn(),
		PersistEvery: time.Hour, Log: log})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mon.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			stop()
		}
	})
	return tracker, st, brk.Conn(), stop
}

func publish(t *testing.T, nc *nats.Conn, subject string, v any) {
	t.Helper()
	data, _ := json.Marshal(v)
	if err := nc.Publish(subject, data); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHeartbeats(t *testing.T) {
	tracker, st, nc, stop := setup(t)
	// Core NATS keeps nothing for a subscriber that is not there yet, so
	// the heartbeats are sent until the monitor has taken one, as an agent would.
	waitFor(t, "a's heartbeat", func() bool {
		// A heartbeat naming another instance than its subject is ignored.
		publish(t, nc, protocol.AgentSubject(a, protocol.KindHeartbeat),
			protocol.Heartbeat{V: 1, InstanceID: b, AgentVersion: "spoofed", Health: protocol.HealthOK})
		publish(t, nc, protocol.AgentSubject(a, protocol.KindHeartbeat), "garbage")
		publish(t, nc, protocol.AgentSubject(a, protocol.KindHeartbeat),
			protocol.Heartbeat{V: 1, InstanceID: a, AgentVersion: "v1", Health: protocol.HealthDegraded, Problems: []string{"disk / is 95% full"}})
		inst, _ := tracker.Get(a, time.Now())
		return inst.AgentVersion == "v1"
	})
	inst, _ := tracker.Get(a, time.Now())
	if inst.Status != fleet.StatusDegraded || !inst.Connected {
		t.Errorf("a = %+v, want degraded and connected", inst)
	}
	if other, _ := tracker.Get(b, time.Now()); other.AgentVersion != "" {
		t.Errorf("b took a spoofed heartbeat: %+v", other)
	}

	// Stopping the monitor writes what changed.
	stop()
	stored, err := st.Instances()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stored {
		if s.ID == a && s.AgentVersion != "v1" {
			t.Errorf("stored a = %+v, want the heartbeat persisted", s)
		}
	}
}

func TestEventsAreStoredOnce(t *testing.T) {
	_, st, nc, _ := setup(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, id := range []string{"e1", "e2", "e1", "e3"} { // e1 is sent twice, as after a lost ack
		ev := protocol.Event{V: 1, ID: id, InstanceID: a, At: time.Now().UTC(), Type: "test", Severity: protocol.SeverityInfo, Message: id}
		data, _ := json.Marshal(ev)
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: protocol.AgentSubject(a, protocol.KindEvent), Data: data},
			jetstream.WithMsgID(id)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	// An event naming another instance than its subject is not stored.
	spoof, _ := json.Marshal(protocol.Event{V: 1, ID: "s1", InstanceID: b, Type: "test"})
	if _, err := js.Publish(ctx, protocol.AgentSubject(a, protocol.KindEvent), spoof); err != nil {
		t.Fatal(err)
	}
	var got []protocol.Event
	waitFor(t, "3 stored events", func() bool {
		got, _ = st.Events(a, 10)
		return len(got) >= 3
	})
	if len(got) != 3 || got[0].ID != "e1" || got[1].ID != "e2" || got[2].ID != "e3" {
		t.Errorf("stored events = %+v, want e1, e2, e3 once each", got)
	}
	if spoofed, _ := st.Events(b, 10); len(spoofed) != 0 {
		t.Errorf("a spoofed event was stored for b: %+v", spoofed)
	}
}
