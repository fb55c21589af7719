// Package monitor listens to what agents report — heartbeats, metrics,
// events — and keeps the fleet tracker, the store and each instance's
// metrics history up to date with it. It never acts on an instance: what
// it learns is only reported. (Which agents are connected, the broker
// tells the tracker itself.)
package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Store is where the monitor persists what it learns.
type Store interface {
	UpdateInstances(insts ...fleet.Instance) error
	AppendEvent(ev protocol.Event, seq uint64) error
	// AppendMetrics writes raw points and their hourly rollups; appending
	// a point again changes nothing.
	AppendMetrics(points []fleet.InstancePoint) error
	MetricsHistory(instanceID string, from, to time.Time, res fleet.Resolution) ([]fleet.MetricsPoint, error)
	PruneMetrics(now time.Time, raw, hourly time.Duration) (int, error)
}

// Options configures a Monitor.
type Options struct {
	Tracker *fleet.Tracker
	Store   Store
	// Conn is the control plane's connection.
	Conn *nats.Conn
	// PersistEvery is how often changed instances and new metrics points
	// are written to the store.
	PersistEvery time.Duration
	// RawRetention is how long every metrics sample is kept (default a
	// day), HourlyRetention how long the hourly rollups are (default 30 days).
	RawRetention, HourlyRetention time.Duration
	// MaxPending bounds the metrics points waiting for the store while it
	// fails; past it the oldest are dropped, and said so in the log
	// (default 100 000, some 50 minutes of a thousand instances).
	MaxPending int
	Log        *slog.Logger
}

// Defaults of Options.
const (
	DefaultRawRetention    = 24 * time.Hour
	DefaultHourlyRetention = 30 * 24 * time.Hour
	DefaultMaxPending      = 100_000
)

const (
	// pruneEvery is how often history past its retention is deleted.
	pruneEvery = time.Hour
	// historyPoints is the most points MetricsHistory answers with.
	historyPoints = 720
	// rawGrace lets a window of exactly RawRetention, computed a moment
	// before MetricsHistory looks at the clock, still read raw points.
	rawGrace = time.Minute
	// maxSkew is how far ahead of the control plane's clock a sample may
	// be dated; one further ahead is dated on arrival.
	maxSkew = time.Minute
)

// Monitor turns agent reports into fleet state.
type Monitor struct {
	o   Options
	log *slog.Logger

	heartbeats, samples atomic.Uint64

	mu      sync.RWMutex
	metrics map[string]protocol.Metrics // latest per instance
	// pending holds the metrics points not yet in the store, oldest first;
	// pendingSeq numbers pending[0], so a flush can tell which of its
	// points are still there after the lock was let go.
	pending    []fleet.InstancePoint
	pendingSeq uint64
	dropped    uint64 // points dropped from pending since the last flush said so
}

// New returns a Monitor; Run starts it.
func New(o Options) *Monitor {
	if o.RawRetention <= 0 {
		o.RawRetention = DefaultRawRetention
	}
	if o.HourlyRetention <= 0 {
		o.HourlyRetention = DefaultHourlyRetention
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	return &Monitor{o: o, log: o.Log.With("component", "monitor"), metrics: map[string]protocol.Metrics{}}
}

// durable is the name of the control plane's consumer of agent events.
const durable = "controlplane"

// Run subscribes and keeps the tracker current until ctx ends, then writes
// what changed one last time.
func (m *Monitor) Run(ctx context.Context) error {
	subs, err := m.subscribe()
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	if err != nil {
		return err
	}
	js, err := jetstream.New(m.o.Conn)
	if err != nil {
		return fmt.Errorf("monitor: jetstream: %w", err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, protocol.EventsStream, jetstream.ConsumerConfig{
		Durable:   durable,
		AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		return fmt.Errorf("monitor: events consumer: %w", err)
	}
	cc, err := cons.Consume(m.handleEvent)
	if err != nil {
		return fmt.Errorf("monitor: consuming events: %w", err)
	}
	defer cc.Stop()

	m.prune()
	tick := time.NewTicker(m.o.PersistEvery)
	defer tick.Stop()
	pruneTick := time.NewTicker(pruneEvery)
	defer pruneTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return m.persist()
		case <-tick.C:
			if err := m.persist(); err != nil {
				m.log.Error("persisting fleet state", "err", err)
			}
		case <-pruneTick.C:
			m.prune()
		}
	}
}

// persist writes the instances that changed and the pending metrics points.
func (m *Monitor) persist() error {
	var errs []error
	if dirty := m.o.Tracker.Dirty(); len(dirty) > 0 {
		errs = append(errs, m.o.Store.UpdateInstances(dirty...))
	}
	return errors.Join(append(errs, m.flush())...)
}

// flush writes the pending metrics points in one call. They stay pending
// until it succeeds, so a failed flush is retried by the next.
func (m *Monitor) flush() error {
	m.mu.Lock()
	// Handlers only append to pending or cut its head, never change
	// a point in it, so batch may share its array.
	batch, seq, dropped := m.pending, m.pendingSeq, m.dropped
	m.dropped = 0
	m.mu.Unlock()
	if dropped > 0 {
		m.log.Warn("dropped metrics points the store could not take", "points", dropped, "max_pending", m.o.MaxPending)
	}
	if len(batch) == 0 {
		return nil
	}
	if err := m.o.Store.AppendMetrics(batch); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := seq + uint64(len(batch)); end > m.pendingSeq {
		n := min(end-m.pendingSeq, uint64(len(m.pending)))
		m.pending = m.pending[n:]
		m.pendingSeq += n
	}
	return nil
}

// prune deletes the metrics history past its retention.
func (m *Monitor) prune() {
	n, err := m.o.Store.PruneMetrics(time.Now(), m.o.RawRetention, m.o.HourlyRetention)
	if err != nil {
		m.log.Error("pruning metrics history", "err", err)
		return
	}
	if n > 0 {
		m.log.Info("pruned metrics history", "points", n)
	}
}

func (m *Monitor) subscribe() ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	for subject, handler := range map[string]nats.MsgHandler{
		protocol.AgentWildcard(protocol.KindHeartbeat): m.handleHeartbeat,
		protocol.AgentWildcard(protocol.KindMetrics):   m.handleMetrics,
	} {
		sub, err := m.o.Conn.Subscribe(subject, handler)
		if err != nil {
			return subs, fmt.Errorf("monitor: subscribing to %s: %w", subject, err)
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

// decode reads an agent message whose instance id must match its subject:
// the broker lets an agent publish only on its own subjects, so the
// subject, not the payload, says who sent it.
func (m *Monitor) decode(msg *nats.Msg, v any, payloadID func() string) (string, bool) {
	id, ok := protocol.InstanceFromSubject(msg.Subject)
	if !ok {
		return "", false
	}
	if err := json.Unmarshal(msg.Data, v); err != nil {
		m.log.Warn("malformed agent message", "subject", msg.Subject, "err", err)
		return "", false
	}
	if got := payloadID(); got != id {
		m.log.Warn("agent message names another instance", "subject", msg.Subject, "instance_id", got)
		return "", false
	}
	return id, true
}

func (m *Monitor) handleHeartbeat(msg *nats.Msg) {
	var hb protocol.Heartbeat
	if _, ok := m.decode(msg, &hb, func() string { return hb.InstanceID }); !ok {
		return
	}
	m.heartbeats.Add(1)
	if !m.o.Tracker.Heartbeat(hb, time.Now()) {
		m.log.Warn("heartbeat from unknown instance", "instance", hb.InstanceID)
	}
}

func (m *Monitor) handleMetrics(msg *nats.Msg) {
	var mt protocol.Metrics
	id, ok := m.decode(msg, &mt, func() string { return mt.InstanceID })
	if !ok {
		return
	}
	now := time.Now()
	if mt.At.Unix() <= 0 || mt.At.After(now.Add(maxSkew)) {
		mt.At = now // undated, or by a clock far ahead
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var prev *protocol.Metrics
	if p, ok := m.metrics[id]; ok {
		if p.At.Equal(mt.At) {
			return // the same sample again
		}
		prev = &p
	}
	m.samples.Add(1)
	if prev == nil || mt.At.After(prev.At) {
		m.metrics[id] = mt // a sample sent late from the agent's spool is history, not news
	}
	pt := fleet.PointFrom(prev, mt)
	pt.At = pt.At.Truncate(time.Second).UTC() // as the store keeps it
	m.pending = append(m.pending, fleet.InstancePoint{InstanceID: id, Point: pt})
	if over := len(m.pending) - m.o.MaxPending; over > 0 {
		m.pending = m.pending[over:]
		m.pendingSeq += uint64(over)
		m.dropped += uint64(over)
	}
}

// Heartbeats is how many heartbeats the monitor has taken since it started.
func (m *Monitor) Heartbeats() uint64 { return m.heartbeats.Load() }

// Samples is how many metrics samples the monitor has taken since it started.
func (m *Monitor) Samples() uint64 { return m.samples.Load() }

// MetricsHistory returns the metrics of instance id between from and to,
// oldest first. Windows that start within RawRetention of now are read
// at raw resolution, along with the points not yet flushed to the store so
// a sample shows at once; older ones from the hourly rollups. A window
// holding more than 720 points is shortened by averaging neighbours (see
// fleet.Downsample): each point's Samples says how many it stands for.
// The caller checks that the instance exists.
func (m *Monitor) MetricsHistory(id string, from, to time.Time) (fleet.MetricsHistory, error) {
	res := fleet.ResolutionHourly
	if !from.Before(time.Now().Add(-m.o.RawRetention - rawGrace)) {
		res = fleet.ResolutionRaw
	}
	points, err := m.o.Store.MetricsHistory(id, from, to, res)
	if err != nil {
		return fleet.MetricsHistory{}, err
	}
	if res == fleet.ResolutionRaw {
		points = m.withPending(id, from, to, points)
	}
	points = fleet.Downsample(points, historyPoints)
	if points == nil {
		points = []fleet.MetricsPoint{}
	}
	return fleet.MetricsHistory{InstanceID: id, From: from.UTC(), To: to.UTC(), Resolution: res, Points: points}, nil
}

// withPending adds to stored, raw points of instance id read from the
// store, the pending ones between from and to it lacks, in time order.
func (m *Monitor) withPending(id string, from, to time.Time, stored []fleet.MetricsPoint) []fleet.MetricsPoint {
	m.mu.RLock()
	var extra []fleet.MetricsPoint
	for _, ip := range m.pending {
		if ip.InstanceID == id && !ip.Point.At.Before(from) && !ip.Point.At.After(to) {
			extra = append(extra, ip.Point)
		}
	}
	m.mu.RUnlock()
	if len(extra) == 0 {
		return stored
	}
	seen := make(map[int64]bool, len(stored)+len(extra))
	for _, p := range stored {
		seen[p.At.Unix()] = true
	}
	for _, p := range extra {
		if !seen[p.At.Unix()] { // a point flushed while the store was read is there already
			seen[p.At.Unix()] = true
			stored = append(stored, p)
		}
	}
	slices.SortStableFunc(stored, func(a, b fleet.MetricsPoint) int { return a.At.Compare(b.At) })
	return stored
}

// LatestMetrics returns the last metrics sample of instance id.
func (m *Monitor) LatestMetrics(id string) (protocol.Metrics, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	mt, ok := m.metrics[id]
	return mt, ok
}

// handleEvent stores one agent event. The stream's sequence is the key, so
// an event redelivered after a crash is stored once.
func (m *Monitor) handleEvent(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		m.log.Error("event without metadata", "err", err)
		_ = msg.Term()
		return
	}
	var ev protocol.Event
	id, ok := protocol.InstanceFromSubject(msg.Subject())
	if err := json.Unmarshal(msg.Data(), &ev); err != nil || !ok || ev.InstanceID != id {
		m.log.Warn("dropping malformed agent event", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "err", err)
		_ = msg.Term()
		return
	}
	if err := m.o.Store.AppendEvent(ev, meta.Sequence.Stream); err != nil {
		m.log.Error("storing event", "instance", id, "err", err)
		_ = msg.Nak()
		return
	}
	m.log.Info("agent event", "instance", id, "type", ev.Type, "severity", ev.Severity, "message", ev.Message)
	_ = msg.Ack()
}
