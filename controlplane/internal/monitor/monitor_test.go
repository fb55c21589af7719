package monitor_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/monitor"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

const a, b = "i-aaaa", "i-bbbb"

type noEnroll struct{}

func (noEnroll) RedeemToken(string, string, string, time.Time) error { return fault.ErrForbidden }

// rig is a running monitor with what it works with.
type rig struct {
	tracker *fleet.Tracker
	st      *store.Store
	nc      *nats.Conn
	mon     *monitor.Monitor
	// stop stops the monitor, which writes what changed one last time.
	stop func()
}

// setup runs a real broker and store with two enrolled instances and a
// monitor over them; opts, if given, may change the monitor's options.
// Messages are published with the control plane's own connection, standing
// in for agents (the broker's permissions, tested in package broker, are
// what tie a subject to its agent).
func setup(t testing.TB, opts ...func(*monitor.Options)) rig {
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
	key, err := st.CommandKey()
	if err != nil {
		t.Fatal(err)
	}
	tracker := fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Minute, OfflineAfter: time.Hour}, insts)
	brk, err := broker.Start(context.Background(), broker.Options{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "js"),
		Credentials: map[string]string{}, Tokens: noEnroll{}, CommandKey: key, Presence: tracker, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(brk.Shutdown)
	o := monitor.Options{Tracker: tracker, Store: st, Publisher: fleet.NewFeed(64, 64), Conn: brk.Conn(), PersistEvery: time.Hour, Log: log}
	for _, opt := range opts {
		opt(&o)
	}
	mon := monitor.New(o)
	ctx, cancel := context.WithCancel(context.Background())
	if err := mon.Start(ctx); err != nil {
		t.Fatal(err)
	}
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
	return rig{tracker: tracker, st: st, nc: brk.Conn(), mon: mon, stop: stop}
}

func publish(t *testing.T, nc *nats.Conn, subject string, v any) {
	t.Helper()
	data, _ := json.Marshal(v)
	if err := nc.Publish(subject, data); err != nil {
		t.Fatal(err)
	}
}

func TestHeartbeats(t *testing.T) {
	r := setup(t)
	tracker, st, nc, stop := r.tracker, r.st, r.nc, r.stop
	// Core NATS keeps nothing for a subscriber that is not there yet, so
	// the heartbeats are sent until the monitor has taken one, as an agent would.
	proctest.Until(t, "a's heartbeat", func() bool {
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
	// The spoof went before each of a's heartbeats on the same connection:
	// once one of those is taken, so was a spoof.
	if other, err := tracker.Get(b, time.Now()); err != nil || other.AgentVersion != "" {
		t.Errorf("b = %+v (%v): took a spoofed heartbeat", other, err)
	}
	if n := r.mon.Heartbeats(); n == 0 {
		t.Error("Heartbeats() = 0 after a heartbeat was taken")
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
	r := setup(t)
	st, nc := r.st, r.nc
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
	// An event naming another instance than its subject is not stored. The
	// monitor takes the stream in order: once e4, sent after the spoof, is
	// stored, the spoof was handled.
	spoof, _ := json.Marshal(protocol.Event{V: 1, ID: "s1", InstanceID: b, Type: "test"})
	if _, err := js.Publish(ctx, protocol.AgentSubject(a, protocol.KindEvent), spoof); err != nil {
		t.Fatal(err)
	}
	marker, _ := json.Marshal(protocol.Event{V: 1, ID: "e4", InstanceID: a, At: time.Now().UTC(), Type: "test",
		Severity: protocol.SeverityInfo, Message: "e4"})
	if _, err := js.Publish(ctx, protocol.AgentSubject(a, protocol.KindEvent), marker); err != nil {
		t.Fatal(err)
	}
	var got []protocol.Event
	proctest.Until(t, "4 stored events", func() bool {
		var err error
		if got, err = st.InstanceEvents(a, 10); err != nil {
			t.Fatalf("Events(a): %v", err)
		}
		return len(got) >= 4
	})
	var ids []string
	for _, ev := range got {
		ids = append(ids, ev.ID)
	}
	if !slices.Equal(ids, []string{"e1", "e2", "e3", "e4"}) {
		t.Errorf("stored events %v, want e1, e2, e3, e4 once each", ids)
	}
	spoofed, err := st.InstanceEvents(b, 10)
	if err != nil {
		t.Fatalf("Events(b): %v", err)
	}
	if len(spoofed) != 0 {
		t.Errorf("a spoofed event was stored for b: %+v", spoofed)
	}
}

// metrics is a sample of instance id taken at at.
func metrics(id string, at time.Time, cpu float64, rx, tx uint64) protocol.Metrics {
	return protocol.Metrics{V: 1, InstanceID: id, At: at, CPUPercent: cpu,
		Memory: protocol.Memory{TotalBytes: 4 << 30, UsedBytes: 1 << 30},
		Disks: []protocol.Disk{{Mount: "/boot", TotalBytes: 1 << 30, UsedBytes: 1 << 20},
			{Mount: "/", TotalBytes: 32 << 30, UsedBytes: 8 << 30}},
		Network: protocol.Network{RxBytes: rx, TxBytes: tx}, UptimeSeconds: 3600}
}

// sendFirst publishes mt, which the metrics stream keeps for the monitor,
// and waits until the monitor has taken it. Samples sent after it on the
// same connection arrive after it.
func sendFirst(t *testing.T, r rig, mt protocol.Metrics) {
	t.Helper()
	publish(t, r.nc, protocol.AgentSubject(mt.InstanceID, protocol.KindMetrics), mt)
	proctest.Until(t, "the first sample", func() bool {
		got, ok := r.mon.LatestMetrics(mt.InstanceID)
		return ok && got.At.Equal(mt.At)
	})
}

func cpus(points []fleet.MetricsPoint) []float64 {
	var out []float64
	for _, p := range points {
		out = append(out, p.CPUPercent)
	}
	return out
}

func totalSamples(points []fleet.MetricsPoint) int {
	n := 0
	for _, p := range points {
		n += p.Samples
	}
	return n
}

func TestMetricsHistory(t *testing.T) {
	r := setup(t)
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second).UTC()
	sendFirst(t, r, metrics(a, base, 10, 1000, 2000))
	subject := protocol.AgentSubject(a, protocol.KindMetrics)
	publish(t, r.nc, subject, metrics(b, base.Add(15*time.Second), 99, 0, 0)) // names another instance
	publish(t, r.nc, subject, "garbage")
	publish(t, r.nc, subject, metrics(a, base, 10, 1000, 2000)) // the same sample again
	publish(t, r.nc, subject, metrics(a, base.Add(30*time.Second), 30, 4000, 8000))
	proctest.Until(t, "a's second sample", func() bool { return r.mon.Samples() >= 2 })
	if n := r.mon.Samples(); n != 2 {
		t.Errorf("Samples() = %d, want 2: a spoofed, malformed or repeated sample was taken", n)
	}

	// The store is written hourly here: the samples show before it is.
	h, err := r.mon.MetricsHistory(a, base.Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := []fleet.MetricsPoint{
		{At: base, CPUPercent: 10, CPUMax: 10, MemoryUsed: 1 << 30, MemoryTotal: 4 << 30, DiskUsed: 8 << 30, DiskTotal: 32 << 30, Samples: 1},
		{At: base.Add(30 * time.Second), CPUPercent: 30, CPUMax: 30, MemoryUsed: 1 << 30, MemoryTotal: 4 << 30,
			DiskUsed: 8 << 30, DiskTotal: 32 << 30, RxBps: 100, TxBps: 200, Samples: 1},
	}
	if h.InstanceID != a || h.Resolution != fleet.ResolutionRaw || !equalPoints(h.Points, want) {
		t.Errorf("MetricsHistory = %+v, want raw points %+v", h, want)
	}
	empty, err := r.mon.MetricsHistory(b, base.Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := json.Marshal(empty); !strings.Contains(string(data), `"points":[]`) {
		t.Errorf("b's history = %s, want an empty list of points", data)
	}

	// Stopping the monitor writes the points, with their hourly rollups.
	r.stop()
	from, to := base.Add(-time.Minute), time.Now()
	raw, err := r.st.MetricsHistory(a, from, to, fleet.ResolutionRaw)
	if err != nil {
		t.Fatal(err)
	}
	if !equalPoints(raw, want) {
		t.Errorf("stored raw points = %+v, want %+v", raw, want)
	}
	hourly, err := r.st.MetricsHistory(a, from, to, fleet.ResolutionHourly)
	if err != nil {
		t.Fatal(err)
	}
	if n := totalSamples(hourly); n != 2 {
		t.Errorf("hourly rollups %+v stand for %d samples, want 2", hourly, n)
	}
	// Read from the store now, the history is the same; a window reaching
	// back past a day reads the rollups.
	if h, err := r.mon.MetricsHistory(a, from, to); err != nil || !equalPoints(h.Points, want) {
		t.Errorf("MetricsHistory after the flush = %+v, %v; want %+v", h, err, want)
	}
	long, err := r.mon.MetricsHistory(a, time.Now().Add(-48*time.Hour), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if long.Resolution != fleet.ResolutionHourly || totalSamples(long.Points) != 2 {
		t.Errorf("two-day history = %+v, want hourly rollups of 2 samples", long)
	}
}

// equalPoints compares points by value; times by instant.
func equalPoints(got, want []fleet.MetricsPoint) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := got[i], want[i]
		g.At, w.At = time.Time{}, time.Time{}
		if g != w || !got[i].At.Equal(want[i].At) {
			return false
		}
	}
	return true
}

// flakyStore fails AppendMetrics while fail is set.
type flakyStore struct {
	monitor.Store
	fail     atomic.Bool
	failures atomic.Int32
}

func (f *flakyStore) AppendMetrics(points []fleet.InstancePoint) error {
	if f.fail.Load() {
		f.failures.Add(1)
		return errors.New("disk full")
	}
	return f.Store.AppendMetrics(points)
}

// While the store fails, at most MaxPending samples wait in the monitor
// and the rest in JetStream, unacknowledged; once the store works again,
// every sample is stored: none is dropped.
func TestMetricsWaitForTheStore(t *testing.T) {
	flaky := &flakyStore{}
	flaky.fail.Store(true)
	r := setup(t, func(o *monitor.Options) {
		flaky.Store, o.Store = o.Store, flaky
		o.PersistEvery, o.MaxPending = 20*time.Millisecond, 3
	})
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second).UTC()
	for i := range 6 {
		publish(t, r.nc, protocol.AgentSubject(a, protocol.KindMetrics), metrics(a, base.Add(time.Duration(i)*30*time.Second), float64(i), 0, 0))
	}
	proctest.Until(t, "three samples taken", func() bool { return r.mon.Samples() == 3 })
	proctest.Until(t, "a failed flush", func() bool { return flaky.failures.Load() > 0 })
	ctx := context.Background()
	js, err := jetstream.New(r.nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, protocol.MetricsStream)
	if err != nil {
		t.Fatal(err)
	}
	proctest.Until(t, "JetStream to hold three samples out and three back", func() bool {
		for info := range stream.ListConsumers(ctx).Info() {
			if info.NumAckPending == 3 && info.NumPending == 3 {
				return true
			}
		}
		return false
	})

	// The three taken wait for the store, and show meanwhile.
	h, err := r.mon.MetricsHistory(a, base.Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := cpus(h.Points); !slices.Equal(got, []float64{0, 1, 2}) {
		t.Errorf("history while the store fails = %v, want the first three, 0 1 2", got)
	}

	flaky.fail.Store(false)
	var stored []fleet.MetricsPoint
	proctest.Until(t, "every sample stored", func() bool {
		stored, err = r.st.MetricsHistory(a, base.Add(-time.Minute), time.Now(), fleet.ResolutionRaw)
		return err == nil && len(stored) == 6
	})
	if got := cpus(stored); !slices.Equal(got, []float64{0, 1, 2, 3, 4, 5}) {
		t.Errorf("stored after the store came back = %v, want 0 to 5", got)
	}
	proctest.Until(t, "the stream emptied: every sample acknowledged", func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
}

func TestRunPrunesHistory(t *testing.T) {
	old := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	r := setup(t, func(o *monitor.Options) {
		o.RawRetention = time.Hour
		if err := o.Store.AppendMetrics([]fleet.InstancePoint{{InstanceID: a, Point: fleet.MetricsPoint{At: old, CPUPercent: 7, Samples: 1}}}); err != nil {
			t.Fatal(err)
		}
	})
	proctest.Until(t, "the old raw point pruned", func() bool {
		pts, err := r.st.MetricsHistory(a, old.Add(-time.Minute), time.Now(), fleet.ResolutionRaw)
		return err == nil && len(pts) == 0
	})
	// Its rollup is kept, and read for a window older than RawRetention.
	h, err := r.mon.MetricsHistory(a, old.Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if h.Resolution != fleet.ResolutionHourly || !slices.Equal(cpus(h.Points), []float64{7}) {
		t.Errorf("MetricsHistory = %+v, want the hourly rollup of 7%%", h)
	}
}
