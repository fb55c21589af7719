package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/stackpro/stackpro/agent/internal/outbox"
	"github.com/stackpro/stackpro/shared/protocol"
)

// reporter sends events and metrics through the outbox: everything is
// spooled first and sent in order by one flusher, so an outage, a crash or
// a restart of either side loses nothing and reorders nothing. Both go
// through JetStream with a message id, so a resend after a lost ack is
// stored once, and an entry leaves the outbox only once JetStream has
// stored it (the control plane acknowledges a metrics sample to JetStream
// only after writing it to its own store).
type reporter struct {
	instanceID string
	nc         *nats.Conn
	js         jetstream.JetStream
	box        *outbox.Outbox
	log        *slog.Logger
}

func newReporter(instanceID string, nc *nats.Conn, box *outbox.Outbox, log *slog.Logger) (*reporter, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("agent: jetstream: %w", err)
	}
	return &reporter{instanceID: instanceID, nc: nc, js: js, box: box, log: log}, nil
}

// Emit spools an event of type typ. The outbox drops an event only at its
// hard cap, and then counts it for reportDrops; a failure is logged here,
// as there is nothing more a caller could do about it.
func (r *reporter) Emit(typ string, sev protocol.Severity, msg string, data map[string]string) {
	ev, raw := r.event(typ, sev, msg, data)
	if err := r.box.Put(outbox.KindEvent, protocol.AgentSubject(r.instanceID, protocol.KindEvent), ev.ID, raw); err != nil {
		r.log.Error("event not spooled", "type", typ, "err", err)
	}
}

// event makes an event of this instance and its JSON.
func (r *reporter) event(typ string, sev protocol.Severity, msg string, data map[string]string) (protocol.Event, []byte) {
	ev := protocol.Event{V: protocol.Version, ID: nuid.Next(), InstanceID: r.instanceID, At: time.Now().UTC(),
		Type: typ, Severity: sev, Message: msg, Data: data}
	raw, _ := json.Marshal(ev) // strings, a time and a string map always encode
	return ev, raw
}

// reportDrops spools one agent.events_dropped event for the events the
// outbox refused at its hard cap since the last report, once there is room.
func (r *reporter) reportDrops() {
	n, err := r.box.ReportDroppedEvents(func(n uint64) (string, string, []byte) {
		ev, raw := r.event(protocol.EventEventsDropped, protocol.SeverityError,
			fmt.Sprintf("%d events were dropped: the outbox was full", n), map[string]string{"dropped": strconv.FormatUint(n, 10)})
		return protocol.AgentSubject(r.instanceID, protocol.KindEvent), ev.ID, raw
	})
	switch {
	case errors.Is(err, outbox.ErrFull): // still no room: the next flush tries again
	case err != nil:
		r.log.Error("reporting dropped events", "err", err)
	case n > 0:
		r.log.Warn("events dropped at the outbox's hard cap, now reported", "dropped", n)
	}
}

// Metrics spools a metrics sample; when the outbox is full the oldest
// samples give way, and the heartbeat counts them.
func (r *reporter) Metrics(m protocol.Metrics) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return r.box.Put(outbox.KindMetrics, protocol.AgentSubject(r.instanceID, protocol.KindMetrics), nuid.Next(), raw)
}

// Run flushes the outbox whenever something is spooled, and every few
// seconds while the link is down, until ctx ends.
func (r *reporter) Run(ctx context.Context) error {
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	for {
		if err := r.flush(ctx); err != nil && ctx.Err() == nil {
			r.log.Debug("outbox flush paused", "err", err)
		}
		r.reportDrops()
		select {
		case <-ctx.Done():
			return nil
		case <-r.box.Notify():
		case <-retry.C:
		}
	}
}

// flush sends spooled entries oldest first and removes each once
// JetStream has stored it; it stops at the first failure so order is kept.
func (r *reporter) flush(ctx context.Context) error {
	for r.nc.IsConnected() {
		entries, err := r.box.Peek(64)
		if err != nil || len(entries) == 0 {
			return err
		}
		for _, e := range entries {
			if err := r.send(ctx, e); err != nil {
				return err
			}
			if err := r.box.Remove(e.Seq); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *reporter) send(ctx context.Context, e outbox.Entry) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := r.js.PublishMsg(ctx, &nats.Msg{Subject: e.Subject, Data: e.Data}, jetstream.WithMsgID(e.MsgID))
	return err
}
