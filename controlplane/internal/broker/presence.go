package broker

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Presence is told when an instance's agent enrolls, when its first
// connection opens and when its last one closes. fleet.Tracker is one.
type Presence interface {
	Enrolled(instanceID string, now time.Time) bool
	Connected(instanceID string, connected bool, now time.Time) bool
}

// conn names one client connection: the server's client id is unique only
// within that server.
type conn struct {
	server string
	cid    uint64
}

// presence follows the server's connect and disconnect events of agent
// accounts and counts each instance's open connections, so that a second
// connection with the same key (a restarted agent whose old connection has
// not timed out yet, or a clone) closing leaves the instance connected.
type presence struct {
	log *slog.Logger
	to  Presence

	mu    sync.Mutex
	conns map[string]map[conn]struct{} // instance id → its open connections
}

// accountEvents covers $SYS.ACCOUNT.<account>.CONNECT and .DISCONNECT. One
// subscription takes both, so that they are handled in the order the
// server sent them.
const accountEvents = "$SYS.ACCOUNT.*.*"

// watchPresence subscribes to the connection events of every account. It
// runs before agents are let in, so none connects unseen.
func (b *Broker) watchPresence() error {
	p := &presence{log: b.log, to: b.presence, conns: map[string]map[conn]struct{}{}}
	if _, err := b.sys.Subscribe(accountEvents, p.handle); err != nil {
		return fmt.Errorf("broker: subscribing to %s: %w", accountEvents, err)
	}
	if err := b.sys.Flush(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	return nil
}

// handle takes one connect or disconnect event. Events of the control
// plane's and the enroll account are not agents'.
func (p *presence) handle(m *nats.Msg) {
	var up bool
	switch {
	case strings.HasSuffix(m.Subject, ".DISCONNECT"):
	case strings.HasSuffix(m.Subject, ".CONNECT"):
		up = true
	default:
		return
	}
	// A DisconnectEventMsg begins as a ConnectEventMsg does.
	var ev server.ConnectEventMsg
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		p.log.Warn("malformed connection event", "subject", m.Subject, "err", err)
		return
	}
	id := ev.Client.Account
	if protocol.ValidInstanceID(id) != nil {
		return
	}
	c := conn{server: ev.Server.ID, cid: ev.Client.ID}
	if !p.change(id, c, up) {
		return
	}
	p.to.Connected(id, up, time.Now())
	p.log.Info("agent connection", "instance", id, "connected", up)
}

// change records that c of instance id opened or closed, and reports
// whether that connected the instance (its first connection) or
// disconnected it (its last).
func (p *presence) change(id string, c conn, up bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	open := p.conns[id]
	if up {
		if open == nil {
			open = map[conn]struct{}{}
			p.conns[id] = open
		}
		open[c] = struct{}{}
		return len(open) == 1
	}
	if _, ok := open[c]; !ok {
		return false
	}
	delete(open, c)
	if len(open) > 0 {
		return false
	}
	delete(p.conns, id)
	return true
}
