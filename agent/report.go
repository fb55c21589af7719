package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/stackpro/stackpro/agent/internal/outbox"
	"github.com/stackpro/stackpro/shared/protocol"
)

// reporter sends events and metrics through the outbox: everything is
// spooled first and sent in order by one flusher, so an outage, a crash or
// a restart of either side loses nothing and reorders nothing. Events go
// through JetStream with their id as the message id, so a resend after a
// lost ack is stored once.
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

// Emit spools an event of type typ. An event is never dropped for room;
// if the outbox is past its hard cap, the error says so.
func (r *reporter) Emit(typ string, sev protocol.Severity, msg string, data map[string]string) error {
	ev := protocol.Event{V: protocol.Version, ID: nuid.Next(), InstanceID: r.instanceID, At: time.Now().UTC(),
		Type: typ, Severity: sev, Message: msg, Data: data}
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if err := r.box.Put(outbox.KindEvent, protocol.AgentSubject(r.instanceID, protocol.KindEvent), ev.ID, raw); err != nil {
		r.log.Error("event not spooled", "type", typ, "err", err)
		return err
	}
	return nil
}

// Metrics spools a metrics sample; when the outbox is full the oldest
// samples give way, and the heartbeat counts them.
func (r *reporter) Metrics(m protocol.Metrics) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return r.box.Put(outbox.KindMetrics, protocol.AgentSubject(r.instanceID, protocol.KindMetrics), "", raw)
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
		select {
		case <-ctx.Done():
			return nil
		case <-r.box.Notify():
		case <-retry.C:
		}
	}
}

// flush sends spooled entries oldest first and removes each once the
// server has it; it stops at the first failure so order is kept.
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
	if e.Kind == outbox.KindEvent {
		_, err := r.js.PublishMsg(ctx, &nats.Msg{Subject: e.Subject, Data: e.Data}, jetstream.WithMsgID(e.MsgID))
		return err
	}
	if err := r.nc.Publish(e.Subject, e.Data); err != nil {
		return err
	}
	// A flush round trip proves the server has the message.
	return r.nc.FlushWithContext(ctx)
}
