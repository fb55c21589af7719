package fleetsim

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/nats-io/nuid"

	"github.com/stackpro/stackpro/shared/protocol"
)

// attempts bounds the tries to enroll or connect one agent.
const attempts = 8

// agent is one simulated agent. Its key pair and the control plane's
// command key live only in memory: a simulated agent that comes back
// online reconnects with the same key, and a new simulator enrolls anew.
type agent struct {
	sim   *Sim
	id    string
	token string
	kp    nkeys.KeyPair
	pub   string
	// services is the stack it reports: one or two healthy services.
	services []protocol.ServiceState
	// seq numbers heartbeats; only the heartbeat loop touches it.
	seq uint64

	mu        sync.Mutex
	key       ed25519.PublicKey // the control plane's, once enrolled
	nc        *nats.Conn        // nil while offline
	behaviour Behaviour
	// seen holds every nonce run, until its Expires+ResultRetention: the
	// replay check (Open refuses it as expired once Expires+MaxClockSkew
	// passed) and the outcome CommandResult answers.
	seen    map[string]outcome
	pruneAt int
	// ran counts the outcomes recorded by command name, as
	// Facts.CommandsRun.
	ran map[string]uint64
}

type outcome struct {
	forget time.Time
	reply  *protocol.CommandReply
}

func newAgent(s *Sim, index int, c Credential) (*agent, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("fleetsim: creating key: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("fleetsim: creating key: %w", err)
	}
	services := []protocol.ServiceState{{Service: "app", State: "running", Health: "healthy", StartedAt: s.started}}
	if index%2 == 0 {
		services = append(services, protocol.ServiceState{Service: "db", State: "running", StartedAt: s.started})
	}
	return &agent{sim: s, id: c.InstanceID, token: c.Token, kp: kp, pub: pub, services: services,
		behaviour: Normal, seen: map[string]outcome{}, pruneAt: 64, ran: map[string]uint64{}}, nil
}

// permanent marks an error retrying cannot help.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// retry runs fn until it succeeds, fails for good, or failed attempts
// times, waiting backoff between tries.
func retry(ctx context.Context, fn func() error) error {
	for attempt := 0; ; attempt++ {
		err := fn()
		var p permanent
		if err == nil || errors.As(err, &p) || attempt+1 == attempts {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(backoff(attempt)):
		}
	}
}

// enroll trades the agent's token for the right of its key to connect,
// over nc, the simulator's connection as the enrollment user.
func (a *agent) enroll(ctx context.Context, nc *nats.Conn) error {
	req, err := json.Marshal(protocol.EnrollRequest{V: protocol.Version, InstanceID: a.id, Token: a.token,
		PublicKey: a.pub, Hostname: "sim-" + a.id, AgentVersion: a.sim.opts.Version})
	if err != nil {
		return err
	}
	return retry(ctx, func() error {
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		m, err := nc.RequestWithContext(rctx, protocol.EnrollSubject, req)
		if err != nil {
			return fmt.Errorf("%s: enrollment request: %w", a.id, err)
		}
		var reply protocol.EnrollReply
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			return fmt.Errorf("%s: malformed enrollment reply: %w", a.id, err)
		}
		switch {
		case reply.OK:
			key, err := protocol.ParseCommandKey(reply.CommandKey)
			if err != nil {
				return permanent{fmt.Errorf("%s: enrollment reply: %w", a.id, err)}
			}
			a.mu.Lock()
			a.key = key
			a.mu.Unlock()
			return nil
		case reply.Code != protocol.EnrollInternal:
			return permanent{fmt.Errorf("%s: enrollment refused: %s (%s)", a.id, reply.Error, reply.Code)}
		}
		return fmt.Errorf("%s: enrollment failed: %s", a.id, reply.Error)
	})
}

// connect opens the agent's own connection, as the real agent's link
// does: its NKey, its own inbox prefix, reconnecting forever with jittered
// backoff, publishing nothing while disconnected. Its commands go to the
// simulator's workers.
func (a *agent) connect() error {
	return retry(context.Background(), func() error {
		nc, err := nats.Connect(a.sim.opts.URL, nats.Name(a.id), nats.Nkey(a.pub, a.kp.Sign),
			nats.CustomInboxPrefix(protocol.InboxPrefix(a.id)), nats.Timeout(10*time.Second),
			nats.MaxReconnects(-1), nats.CustomReconnectDelay(backoff), nats.ReconnectBufSize(-1),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				a.sim.log.Warn("agent link error", "instance", a.id, "err", err)
			}))
		if err != nil {
			return fmt.Errorf("%s: connecting: %w", a.id, err)
		}
		if _, err := nc.ChanSubscribe(protocol.CommandSubject(a.id), a.sim.msgs); err != nil {
			nc.Close()
			return fmt.Errorf("%s: subscribing: %w", a.id, err)
		}
		// The server has the subscription once the flush returns.
		if err := nc.Flush(); err != nil {
			nc.Close()
			return fmt.Errorf("%s: %w", a.id, err)
		}
		a.mu.Lock()
		a.nc = nc
		a.mu.Unlock()
		return nil
	})
}

// disconnect closes the agent's connection, if it has one.
func (a *agent) disconnect() {
	a.mu.Lock()
	nc := a.nc
	a.nc = nil
	a.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
}

// become switches the agent to b, closing its connection for Offline. It
// reports whether the agent must connect again.
func (a *agent) become(b Behaviour) bool {
	a.mu.Lock()
	was := a.behaviour
	a.behaviour = b
	a.mu.Unlock()
	if b == Offline {
		a.disconnect()
	}
	return was == Offline && b != Offline
}

func (a *agent) current() Behaviour {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.behaviour
}

func (a *agent) state() (b Behaviour, enrolled, connected bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.behaviour, a.key != nil, a.nc != nil && a.nc.IsConnected()
}

func (a *agent) conn() *nats.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nc
}

func (a *agent) stack() *protocol.StackStatus {
	return &protocol.StackStatus{AppliedVersion: 1, ComposeTool: "docker compose", Services: a.services}
}

// heartbeat publishes one heartbeat while the agent is connected.
func (a *agent) heartbeat() {
	nc := a.conn()
	if nc == nil || !nc.IsConnected() {
		return
	}
	a.seq++
	data, err := json.Marshal(protocol.Heartbeat{V: protocol.Version, InstanceID: a.id, Seq: a.seq,
		At: time.Now().UTC(), AgentVersion: a.sim.opts.Version, Health: protocol.HealthOK, Stack: a.stack()})
	if err != nil {
		return
	}
	if nc.Publish(protocol.AgentSubject(a.id, protocol.KindHeartbeat), data) == nil {
		a.sim.stats.heartbeats.Add(1)
	}
}

// handle answers one message on the agent's command subject, in the real
// agent's order: signature, target and validity window (protocol.Open),
// then the catalog, then replay; the acknowledgement if asked for, then
// the outcome. A refused request is not remembered. The table of
// internal/commandtest holds these answers to the agent's.
func (a *agent) handle(m *nats.Msg, now time.Time) {
	st := &a.sim.stats
	st.received.Add(1)
	a.mu.Lock()
	b, key := a.behaviour, a.key
	a.mu.Unlock()
	if b == Silent {
		st.silentDrops.Add(1)
		return
	}
	req, err := protocol.Open(m.Data, key, a.id, now)
	if err != nil {
		var r *protocol.RefusalError
		if !errors.As(err, &r) {
			r = &protocol.RefusalError{Reason: protocol.RefusedMalformed, Detail: err.Error()}
		}
		a.refuse(m, req, r)
		return
	}
	if !slices.Contains(protocol.Catalog, req.Name) {
		a.refuse(m, req, &protocol.RefusalError{Reason: protocol.RefusedUnknown,
			Detail: fmt.Sprintf("no command %q in the catalog", req.Name)})
		return
	}
	if !a.remember(req, now) {
		a.refuse(m, req, &protocol.RefusalError{Reason: protocol.RefusedReplayed, Detail: "nonce already received"})
		return
	}
	acked := func() {}
	if req.Ack {
		acked = protocol.DelayedAck(protocol.AckAfter, func() {
			a.respond(m, protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: a.id, Nonce: req.Nonce,
				State: protocol.StateRunning})
			st.acked.Add(1)
		})
	}
	reply := a.run(req, b, now)
	acked()
	if req.Name != protocol.CommandResult {
		st.ran.Add(1)
	}
	a.record(req, reply)
	a.respond(m, reply)
	st.answered.Add(1)
}

// remember records req's nonce, and reports false if it was there already.
func (a *agent) remember(req protocol.CommandRequest, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.seen[req.Nonce]; ok {
		return false
	}
	if len(a.seen) >= a.pruneAt {
		for nonce, o := range a.seen {
			if now.After(o.forget) {
				delete(a.seen, nonce)
			}
		}
		a.pruneAt = max(64, 2*len(a.seen))
	}
	a.seen[req.Nonce] = outcome{forget: req.Expires.Add(protocol.ResultRetention)}
	return true
}

// record keeps the outcome of req, remembered, for CommandResult, and
// counts it.
func (a *agent) record(req protocol.CommandRequest, reply protocol.CommandReply) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if o, ok := a.seen[req.Nonce]; ok {
		o.reply = &reply
		a.seen[req.Nonce] = o
		a.ran[req.Name]++
	}
}

// refuse answers and reports a refusal, like the real agent: a reply with
// the reason, and a command.refused event.
func (a *agent) refuse(m *nats.Msg, req protocol.CommandRequest, r *protocol.RefusalError) {
	a.sim.stats.refuse(r.Reason)
	reply := protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: a.id, Nonce: req.Nonce,
		Refused: r.Reason, Error: r.Error()}
	a.respond(m, reply)
	data := map[string]string{"reason": string(r.Reason)}
	for k, v := range map[string]string{"command": req.Name, "nonce": req.Nonce, "run": req.Run} {
		if v != "" {
			data[k] = v
		}
	}
	ev := protocol.Event{V: protocol.Version, ID: nuid.Next(), InstanceID: a.id, At: time.Now().UTC(),
		Type: protocol.EventCommandRefused, Severity: protocol.SeverityWarning, Message: r.Error(), Data: data}
	raw, err := json.Marshal(ev)
	if nc := a.conn(); err == nil && nc != nil {
		msg := &nats.Msg{Subject: protocol.AgentSubject(a.id, protocol.KindEvent), Data: raw, Header: nats.Header{}}
		msg.Header.Set(nats.MsgIdHdr, ev.ID)
		if err := nc.PublishMsg(msg); err != nil {
			a.sim.log.Debug("refusal event not sent", "instance", a.id, "err", err)
		}
	}
}

func (a *agent) respond(m *nats.Msg, reply protocol.CommandReply) {
	if m.Reply == "" {
		return
	}
	data, err := json.Marshal(reply)
	if err == nil {
		err = m.Respond(data)
	}
	if err != nil {
		a.sim.log.Debug("answering command", "instance", a.id, "err", err)
	}
}

// run is the outcome of req for an agent behaving as b.
func (a *agent) run(req protocol.CommandRequest, b Behaviour, now time.Time) protocol.CommandReply {
	reply := protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: a.id, Nonce: req.Nonce}
	if b == Failing && req.Name != protocol.CommandResult {
		a.sim.stats.failed.Add(1)
		reply.Error = simulatedFailure
		return reply
	}
	// The agent reads any command's arguments as StackArgs first.
	if len(req.Args) > 0 {
		if err := json.Unmarshal(req.Args, new(protocol.StackArgs)); err != nil {
			reply.Error = "malformed arguments: " + err.Error()
			return reply
		}
	}
	var result any
	switch req.Name {
	case protocol.CommandPing:
		result = map[string]any{"pong": true, "at": now.UTC()}
	case protocol.CommandVersion:
		result = map[string]any{"version": a.sim.opts.Version, "protocol": protocol.Version,
			"uptime_seconds": int(now.Sub(a.sim.started).Seconds())}
	case protocol.CommandFacts:
		names := make([]string, len(a.services))
		for i, s := range a.services {
			names[i] = s.Service
		}
		a.mu.Lock()
		ran := maps.Clone(a.ran)
		a.mu.Unlock()
		result = protocol.Facts{InstanceID: a.id, Hostname: "sim-" + a.id, AgentVersion: a.sim.opts.Version,
			Protocol: protocol.Version, OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: 2, MemoryBytes: 4 << 30,
			AgentStarted: a.sim.started, ComposeTool: "docker compose", StackVersion: 1, StackServices: names,
			CommandsRun: ran}
	case protocol.CommandStackStatus:
		result = a.stack()
	case protocol.CommandResult:
		var args protocol.ResultArgs
		if err := json.Unmarshal(req.Args, &args); err != nil || args.Nonce == "" {
			reply.Error = "malformed arguments: want {\"nonce\": …}"
			return reply
		}
		a.mu.Lock()
		o, known := a.seen[args.Nonce]
		a.mu.Unlock()
		result = protocol.ResultReply{Known: known, Reply: o.reply}
	default:
		result = map[string]bool{"done": true}
	}
	data, err := json.Marshal(result)
	if err != nil {
		reply.Error = err.Error()
		return reply
	}
	reply.OK, reply.Result = true, data
	return reply
}
