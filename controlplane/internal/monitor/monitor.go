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

	"github.com/stackpro/stackpro/controlplane/audit"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Store is where the monitor persists what it learns.
type Store interface {
	UpdateInstances(insts ...fleet.Instance) error
	AppendEvent(ev protocol.Event, seq uint64) error
	AppendAudit(rec audit.Record) error
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
	// Publisher takes every agent event stored, for the fleet's followers.
	Publisher fleet.Publisher
	// Conn is the control plane's connection.
	Conn *nats.Conn
	// PersistEvery is how often changed instances and new metrics points
	// are written to the store.
	PersistEvery time.Duration
	// RawRetention is how long every metrics sample is kept (default a
	// day), HourlyRetention how long the hourly rollups are (default 30 days).
	RawRetention, HourlyRetention time.Duration
	// MaxPending bounds the metrics samples taken and not yet in the
	// store; past it JetStream keeps the rest until the store has caught
	// up (default 100 000, some 50 minutes of a thousand instances).
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
	// minAckWait is the least JetStream waits for a sample's
	// acknowledgement before it hands the sample out again; the wait is
	// also at least two PersistEvery, so that only a store failing that
	// long sees a sample twice (and stores it once). It is short because
	// the samples a killed control plane had taken come back only then.
	minAckWait = 10 * time.Second
)

// Monitor turns agent reports into fleet state.
type Monitor struct {
	o   Options
	log *slog.Logger

	heartbeats, samples atomic.Uint64
	obs                 observed
	// stop ends what Start began: the subscription and the consumers.
	stop []func()

	mu      sync.RWMutex
	metrics map[string]protocol.Metrics // latest per instance
	// pending holds the samples taken and not yet in the store, oldest
	// first. Handlers only append to it; a flush cuts the head it wrote.
	pending []sample
}

// sample is a metrics message taken and not yet acknowledged, with the
// point it adds to the history (none when it was seen before).
type sample struct {
	msg   jetstream.Msg
	point *fleet.InstancePoint
}

// New returns a Monitor; Start, then Run, start it.
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
	return &Monitor{o: o, log: o.Log.With("component", "monitor"), metrics: map[string]protocol.Metrics{}, obs: newObserved()}
}

// Consumers of the control plane on the agents' streams.
const (
	eventsDurable  = "controlplane"
	metricsDurable = "controlplane-metrics"
)

// Start takes what agents send from now on: heartbeats as they come,
// events and metrics from their streams, each acknowledged only once it
// is in the store. Call it before agents are let in.
func (m *Monitor) Start(ctx context.Context) error {
	sub, err := m.o.Conn.Subscribe(protocol.AgentWildcard(protocol.KindHeartbeat), m.handleHeartbeat)
	if err != nil {
		return fmt.Errorf("monitor: subscribing to heartbeats: %w", err)
	}
	m.stop = append(m.stop, func() { _ = sub.Unsubscribe() })
	js, err := jetstream.New(m.o.Conn)
	if err != nil {
		m.Stop()
		return fmt.Errorf("monitor: jetstream: %w", err)
	}
	for _, c := range []struct {
		stream string
		config jetstream.ConsumerConfig
		handle jetstream.MessageHandler
	}{
		{protocol.EventsStream, jetstream.ConsumerConfig{Durable: eventsDurable, AckPolicy: jetstream.AckExplicitPolicy}, m.handleEvent},
		{protocol.MetricsStream, jetstream.ConsumerConfig{Durable: metricsDurable, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: max(minAckWait, 2*m.o.PersistEvery), MaxAckPending: m.o.MaxPending}, m.handleMetrics},
	} {
		if err := m.consume(ctx, js, c.stream, c.config, c.handle); err != nil {
			m.Stop()
			return err
		}
	}
	return m.o.Conn.Flush()
}

// consume hands the messages of stream to handle through a durable consumer.
func (m *Monitor) consume(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, handle jetstream.MessageHandler) error {
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("monitor: consumer of %s: %w", stream, err)
	}
	cc, err := cons.Consume(handle)
	if err != nil {
		return fmt.Errorf("monitor: consuming %s: %w", stream, err)
	}
	m.stop = append(m.stop, cc.Stop)
	return nil
}

// Stop stops taking what agents send. What is taken and not yet stored
// stays unacknowledged in its stream, for the next start.
func (m *Monitor) Stop() {
	for _, stop := range m.stop {
		stop()
	}
	m.stop = nil
}

// Run writes what changed and prunes the history until ctx ends, then
// stops taking what agents send and writes what changed one last time.
func (m *Monitor) Run(ctx context.Context) error {
	m.prune()
	tick := time.NewTicker(m.o.PersistEvery)
	defer tick.Stop()
	pruneTick := time.NewTicker(pruneEvery)
	defer pruneTick.Stop()
	for {
		select {
		case <-ctx.Done():
			m.Stop()
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

// flush writes the pending points in one call, then acknowledges their
// samples to JetStream. They stay pending until the write succeeds, so a
// failed flush is retried by the next, and a crash before the
// acknowledgement has JetStream hand them out again (a point written
// twice is stored once).
func (m *Monitor) flush() error {
	m.mu.RLock()
	// Handlers only append to pending, so batch may share its array.
	batch := m.pending
	m.mu.RUnlock()
	if len(batch) == 0 {
		return nil
	}
	points := make([]fleet.InstancePoint, 0, len(batch))
	for _, s := range batch {
		if s.point != nil {
			points = append(points, *s.point)
		}
	}
	if err := m.o.Store.AppendMetrics(points); err != nil {
		return err
	}
	for _, s := range batch {
		if err := s.msg.Ack(); err != nil {
			m.log.Warn("acknowledging a stored sample", "err", err) // JetStream hands it out again; stored once
		}
	}
	m.mu.Lock()
	m.pending = m.pending[len(batch):]
	m.mu.Unlock()
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

// decode reads an agent message whose instance id must match its subject:
// the broker lets an agent publish only on its own subjects, so the
// subject, not the payload, says who sent it.
func (m *Monitor) decode(subject string, data []byte, v any, payloadID func() string) (string, bool) {
	id, ok := protocol.InstanceFromSubject(subject)
	if !ok {
		return "", false
	}
	if err := json.Unmarshal(data, v); err != nil {
		m.log.Warn("malformed agent message", "subject", subject, "err", err)
		return "", false
	}
	if got := payloadID(); got != id {
		m.log.Warn("agent message names another instance", "subject", subject, "instance_id", got)
		return "", false
	}
	return id, true
}

func (m *Monitor) handleHeartbeat(msg *nats.Msg) {
	var hb protocol.Heartbeat
	if _, ok := m.decode(msg.Subject, msg.Data, &hb, func() string { return hb.InstanceID }); !ok {
		return
	}
	m.heartbeats.Add(1)
	if !m.o.Tracker.Heartbeat(hb, time.Now()) {
		m.log.Warn("heartbeat from unknown instance", "instance", hb.InstanceID)
	}
}

// handleMetrics takes one sample from the metrics stream; it is
// acknowledged by the flush that stores it. A malformed one is dropped.
func (m *Monitor) handleMetrics(msg jetstream.Msg) {
	var mt protocol.Metrics
	id, ok := m.decode(msg.Subject(), msg.Data(), &mt, func() string { return mt.InstanceID })
	if !ok {
		_ = msg.Term() // JetStream drops it; decode said why
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
			m.pending = append(m.pending, sample{msg: msg}) // the same sample again
			return
		}
		prev = &p
	}
	m.samples.Add(1)
	if prev == nil || mt.At.After(prev.At) {
		m.metrics[id] = mt // a sample sent late from the agent's spool is history, not news
	}
	pt := fleet.PointFrom(prev, mt)
	pt.At = pt.At.Truncate(time.Second).UTC() // as the store keeps it
	m.pending = append(m.pending, sample{msg: msg, point: &fleet.InstancePoint{InstanceID: id, Point: pt}})
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
	for _, s := range m.pending {
		if ip := s.point; ip != nil && ip.InstanceID == id && !ip.Point.At.Before(from) && !ip.Point.At.After(to) {
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
	m.stored(ev)
	_ = msg.Ack()
}
