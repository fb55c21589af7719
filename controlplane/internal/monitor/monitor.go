// Package monitor listens to what agents report — heartbeats, metrics,
// events — and to the broker's connect and disconnect events, and keeps the
// fleet tracker and the store up to date with it. It never acts on an
// instance: what it learns is only reported.
package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Store is where the monitor persists what it learns.
type Store interface {
	UpdateInstances(insts ...fleet.Instance) error
	AppendEvent(ev protocol.Event, seq uint64) error
}

// Keys resolves an agent's public key to its instance id.
type Keys interface {
	InstanceOf(publicKey string) (string, bool)
}

// Options configures a Monitor.
type Options struct {
	Tracker *fleet.Tracker
	Store   Store
	Keys    Keys
	// Conn is the control plane's connection; Sys one to the system account.
	Conn, Sys *nats.Conn
	// PersistEvery is how often changed instances are written to the store.
	PersistEvery time.Duration
	Log          *slog.Logger
}

// Monitor turns agent reports into fleet state.
type Monitor struct {
	o   Options
	log *slog.Logger

	mu      sync.RWMutex
	metrics map[string]protocol.Metrics // latest per instance
}

// New returns a Monitor; Run starts it.
func New(o Options) *Monitor {
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

	tick := time.NewTicker(m.o.PersistEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return m.persist()
		case <-tick.C:
			if err := m.persist(); err != nil {
				m.log.Error("persisting fleet state", "err", err)
			}
		}
	}
}

func (m *Monitor) persist() error {
	if dirty := m.o.Tracker.Dirty(); len(dirty) > 0 {
		return m.o.Store.UpdateInstances(dirty...)
	}
	return nil
}

func (m *Monitor) subscribe() ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	for _, s := range []struct {
		conn    *nats.Conn
		subject string
		handler nats.MsgHandler
	}{
		{m.o.Conn, protocol.AgentWildcard(protocol.KindHeartbeat), m.handleHeartbeat},
		{m.o.Conn, protocol.AgentWildcard(protocol.KindMetrics), m.handleMetrics},
		{m.o.Sys, "$SYS.ACCOUNT." + server.DEFAULT_GLOBAL_ACCOUNT + ".CONNECT", m.handleConnect},
		{m.o.Sys, "$SYS.ACCOUNT." + server.DEFAULT_GLOBAL_ACCOUNT + ".DISCONNECT", m.handleDisconnect},
	} {
		sub, err := s.conn.Subscribe(s.subject, s.handler)
		if err != nil {
			return subs, fmt.Errorf("monitor: subscribing to %s: %w", s.subject, err)
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
	m.mu.Lock()
	m.metrics[id] = mt
	m.mu.Unlock()
}

// LatestMetrics returns the last metrics sample of instance id.
func (m *Monitor) LatestMetrics(id string) (protocol.Metrics, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	mt, ok := m.metrics[id]
	return mt, ok
}

func (m *Monitor) handleConnect(msg *nats.Msg) {
	var ev server.ConnectEventMsg
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		m.log.Warn("malformed connect event", "err", err)
		return
	}
	m.connection(ev.Client.User, true)
}

func (m *Monitor) handleDisconnect(msg *nats.Msg) {
	var ev server.DisconnectEventMsg
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		m.log.Warn("malformed disconnect event", "err", err)
		return
	}
	m.connection(ev.Client.User, false)
}

func (m *Monitor) connection(key string, up bool) {
	id, ok := m.o.Keys.InstanceOf(key)
	if !ok {
		return // the control plane's own connections, or an enrolling agent
	}
	m.o.Tracker.Connected(id, up, time.Now())
	m.log.Info("agent connection", "instance", id, "connected", up)
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
