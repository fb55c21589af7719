// Package broker runs the control plane's embedded NATS server with
// JetStream on disk, decides who may connect and what each connection may
// touch, follows which agents are connected, and answers agents'
// enrollment requests.
//
// # Trust model
//
// Three kinds of connections are let in, each into an account of its own:
//
//   - the control plane itself, in process, with a key made at start-up,
//     in the global account, which holds JetStream (the events stream and
//     the targets bucket) and the enrollment responder;
//   - agents, each with the NKey it enrolled, each alone in an account
//     named by its instance id;
//   - the "enroll" user, with no credentials, in the ENROLL account.
//
// NATS checks the subject a client publishes on, never the reply subject
// it names, and whoever answers a request (JetStream, a direct get, the
// enrollment responder) publishes the answer on that reply subject. Within
// one account, a client could thus aim an answer at anyone's subjects.
// Accounts close that whole class: messages cross from one account to
// another only through the imports this package sets up (see accounts.go),
// and a request crossing a service import has its reply subject replaced
// by one that leads back to the requester's account alone. Whatever reply
// an agent or the enroll user names, the answer lands in its own account,
// where nobody else listens.
//
// So an agent can publish its own heartbeats, metrics and events (getting
// JetStream's acknowledgements), read its own target (as it is written,
// and on demand), and receive its own commands and answer them, on reply
// subjects under its own subjects (protocol.ReplySubject). It cannot
// publish, read or answer anything of another instance, nor touch the
// JetStream API, nor enroll. The enroll user can send enrollment requests
// and read the answers to them, nothing else; the control plane answers an
// enrollment only when its reply subject is such a mapped one. Subject
// permissions per connection stay on as a second wall.
package broker

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Options configures a Broker.
type Options struct {
	// Listen is host:port for agents; port 0 picks a free one.
	Listen string
	// StoreDir keeps JetStream's files.
	StoreDir string
	// Credentials maps each enrolled agent's public key to its instance id.
	Credentials map[string]string
	// Tokens redeems enrollment tokens.
	Tokens Tokens
	// CommandKey signs every command sent to an agent; its public half
	// goes to each agent in the enrollment reply.
	CommandKey ed25519.PrivateKey
	// Presence is told when each instance's agent connects and disconnects.
	Presence Presence
	Log      *slog.Logger
}

// Broker is a running embedded NATS server.
type Broker struct {
	ns   *server.Server
	auth *authenticator
	log  *slog.Logger
	// conn is the control plane's own connection; sys reads server events.
	conn, sys *nats.Conn
	enroll    *nats.Subscription
	tokens    Tokens
	presence  Presence
	key       ed25519.PrivateKey
}

// Start starts the server and waits until it takes connections, the
// control plane's connections are up and the streams exist. Agents and
// the enroll user come in after Open.
func Start(ctx context.Context, o Options) (*Broker, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("broker: listen address %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("broker: listen port %q: %w", portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if len(o.CommandKey) != ed25519.PrivateKeySize {
		return nil, errors.New("broker: no command key")
	}
	if o.Presence == nil || o.Tokens == nil {
		return nil, errors.New("broker: Presence and Tokens are required")
	}
	log := o.Log.With("component", "broker")
	auth, err := newAuthenticator(log, o.Credentials)
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(&server.Options{
		ServerName:                 "stackpro",
		Host:                       host,
		Port:                       port,
		NoSigs:                     true,
		JetStream:                  true,
		StoreDir:                   o.StoreDir,
		AlwaysEnableNonce:          true,
		CustomClientAuthentication: auth,
		MaxPayload:                 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ns.SetLoggerV2(slogAdapter{log}, false, false, false)
	auth.server = ns
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("broker: not ready for connections after 30s")
	}
	b := &Broker{ns: ns, auth: auth, log: log, tokens: o.Tokens, presence: o.Presence, key: o.CommandKey}
	if err := b.open(ctx); err != nil {
		b.Shutdown()
		return nil, err
	}
	return b, nil
}

// open lays out the accounts, connects the control plane and watches
// connections; agents wait for Open. The accounts come after the server
// has started: JetStream is turned on for the global account only when it
// is the only one at start.
func (b *Broker) open(ctx context.Context) error {
	var err error
	if b.auth.accounts, err = newAccounts(b.ns); err != nil {
		return err
	}
	if err := b.connect(ctx); err != nil {
		return err
	}
	return b.watchPresence()
}

// Open lets agents and the enroll user in; until then their connections
// wait. The control plane opens once it takes what agents send.
func (b *Broker) Open() { b.auth.openOnce.Do(func() { close(b.auth.open) }) }

// CloseAgents stops taking agent traffic, first thing on the way down:
// agents' and the enroll user's connections are closed, and new ones
// refused (agents keep trying, and come back to the next start).
func (b *Broker) CloseAgents() {
	b.auth.closing.Store(true)
	conns, err := b.ns.Connz(&server.ConnzOptions{Limit: 1 << 30})
	if err != nil {
		b.log.Error("listing connections to close", "err", err)
		return
	}
	for _, c := range conns.Conns {
		if c.Account != b.auth.accounts.cp.Name && c.Account != b.ns.SystemAccount().Name {
			_ = b.ns.DisconnectClientByID(c.Cid)
		}
	}
}

// connect opens the control plane's in-process connections, creates the
// streams and starts answering enrollments.
func (b *Broker) connect(ctx context.Context) error {
	var err error
	if b.conn, err = b.inProcess("stackpro-controlplane", b.auth.internal); err != nil {
		return err
	}
	if b.sys, err = b.inProcess("stackpro-controlplane-sys", b.auth.system); err != nil {
		return err
	}
	js, err := jetstream.New(b.conn)
	if err != nil {
		return fmt.Errorf("broker: jetstream: %w", err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       protocol.EventsStream,
		Subjects:   []string{protocol.AgentWildcard(protocol.KindEvent)},
		Storage:    jetstream.FileStorage,
		MaxAge:     30 * 24 * time.Hour,
		Duplicates: 10 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("broker: creating stream %s: %w", protocol.EventsStream, err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       protocol.MetricsStream,
		Subjects:   []string{protocol.AgentWildcard(protocol.KindMetrics)},
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.WorkQueuePolicy, // a sample goes once the monitor has stored it
		MaxAge:     30 * 24 * time.Hour,
		Duplicates: 10 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("broker: creating stream %s: %w", protocol.MetricsStream, err)
	}
	_, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:  protocol.TargetsBucket,
		History: 10,
		Storage: jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("broker: creating bucket %s: %w", protocol.TargetsBucket, err)
	}
	b.enroll, err = b.conn.QueueSubscribe(protocol.EnrollSubject, "enroll", b.handleEnroll)
	if err != nil {
		return fmt.Errorf("broker: subscribing to %s: %w", protocol.EnrollSubject, err)
	}
	// Make sure the server has the subscription before anyone enrolls.
	if err := b.conn.Flush(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	return nil
}

func (b *Broker) inProcess(name string, key *keyPair) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(b.ns), nats.Name(name),
		nats.Nkey(key.public, key.sign), nats.MaxReconnects(-1),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			b.log.Error("control plane connection error", "conn", name, "err", err)
		}))
	if err != nil {
		return nil, fmt.Errorf("broker: in-process connection %s: %w", name, err)
	}
	return nc, nil
}

// Conn is the control plane's own connection, allowed everything.
func (b *Broker) Conn() *nats.Conn { return b.conn }

// ClientURL is where agents connect.
func (b *Broker) ClientURL() string { return b.ns.ClientURL() }

// Ready reports whether the broker takes connections and JetStream is on.
func (b *Broker) Ready() error {
	switch {
	case !b.ns.Running():
		return errors.New("broker: not running")
	case !b.ns.JetStreamEnabled():
		return errors.New("broker: JetStream is off")
	case !b.conn.IsConnected():
		return errors.New("broker: control plane connection is down")
	}
	return nil
}

// Revoke forgets every key of instance id and closes its connections.
func (b *Broker) Revoke(instanceID string) {
	b.auth.revoke(instanceID)
	conns, err := b.ns.Connz(&server.ConnzOptions{Account: instanceID, Limit: 1 << 30})
	if err != nil {
		b.log.Error("listing connections to revoke", "instance", instanceID, "err", err)
		return
	}
	for _, c := range conns.Conns {
		_ = b.ns.DisconnectClientByID(c.Cid)
	}
}

// ErrNoAgent means no agent is connected to answer a command.
var ErrNoAgent = fault.New(fault.Unavailable, "the instance's agent is not connected")

// Ask sends a signed command (data) to instance id's agent over nc and
// waits until ctx ends for its first answer, which comes on a reply
// subject under the instance's own subjects (protocol.ReplySubject). Its
// error wraps ErrNoAgent when no agent took the request.
func Ask(ctx context.Context, nc *nats.Conn, id string, data []byte) (*nats.Msg, error) {
	reply := protocol.ReplySubject(id, "ask."+nuid.Next())
	sub, err := nc.SubscribeSync(reply)
	if err != nil {
		return nil, fmt.Errorf("broker: asking %s: %w", id, err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishMsg(&nats.Msg{Subject: protocol.CommandSubject(id), Reply: reply, Data: data}); err != nil {
		return nil, fmt.Errorf("broker: asking %s: %w", id, err)
	}
	m, err := sub.NextMsgWithContext(ctx)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w: %s", ErrNoAgent, id)
	case err != nil:
		return nil, fmt.Errorf("broker: asking %s: %w", id, err)
	}
	return m, nil
}

// CommandKey is the public key agents check commands with.
func (b *Broker) CommandKey() ed25519.PublicKey { return b.key.Public().(ed25519.PublicKey) }

// Seal signs req for its target (see protocol.Seal).
func (b *Broker) Seal(req protocol.CommandRequest) ([]byte, error) { return protocol.Seal(b.key, req) }

// commandLifetime is how long a command sent by Command stays valid when
// ctx has no deadline.
const commandLifetime = 10 * time.Minute

// Command signs req for instance id's agent (target, a fresh nonce, valid
// until ctx's deadline), sends it and waits for the answer until ctx ends.
func (b *Broker) Command(ctx context.Context, id string, req protocol.CommandRequest) (protocol.CommandReply, error) {
	var reply protocol.CommandReply
	now := time.Now().UTC()
	req.V, req.Target, req.Nonce, req.IssuedAt, req.Expires = protocol.Version, id, protocol.NewNonce(), now, now.Add(commandLifetime)
	if deadline, ok := ctx.Deadline(); ok {
		req.Expires = deadline.UTC()
	}
	if limit := now.Add(protocol.MaxCommandLifetime); req.Expires.After(limit) {
		req.Expires = limit
	}
	data, err := b.Seal(req)
	if err != nil {
		return reply, err
	}
	m, err := Ask(ctx, b.conn, id, data)
	if err != nil {
		return reply, fmt.Errorf("broker: command %s: %w", req.Name, err)
	}
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return reply, fmt.Errorf("broker: malformed reply from %s: %w", id, err)
	}
	return reply, nil
}

// Shutdown drains the control plane's connections and stops the server.
func (b *Broker) Shutdown() {
	for _, nc := range []*nats.Conn{b.conn, b.sys} {
		if nc != nil {
			if err := nc.Drain(); err != nil {
				nc.Close()
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, nc := range []*nats.Conn{b.conn, b.sys} {
		for nc != nil && !nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	b.ns.Shutdown()
	b.ns.WaitForShutdown()
}

// slogAdapter sends nats-server's log lines to slog.
type slogAdapter struct{ log *slog.Logger }

func (l slogAdapter) Noticef(format string, v ...any) { l.log.Info(fmt.Sprintf(format, v...)) }
func (l slogAdapter) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l slogAdapter) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l slogAdapter) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l slogAdapter) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l slogAdapter) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
