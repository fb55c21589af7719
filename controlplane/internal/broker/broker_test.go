package broker_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

type env struct {
	st       *store.Store
	b        *broker.Broker
	tokens   map[string]string // instance id → enrollment token
	presence *presence
}

// presence records what the broker says of agents' connections.
type presence struct {
	mu      sync.Mutex
	changes []string // "<id> up" or "<id> down", in order
}

func (p *presence) Enrolled(string, time.Time) bool { return true }

func (p *presence) Connected(id string, up bool, _ time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.changes = append(p.changes, id+map[bool]string{true: " up", false: " down"}[up])
	return true
}

func (p *presence) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.changes)
}

func start(t *testing.T, ids ...string) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &env{st: st, tokens: map[string]string{}, presence: &presence{}}
	for _, id := range ids {
		if err := st.PutInstances(fleet.Instance{ID: id, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if e.tokens[id], err = st.MintToken(id, time.Hour, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	e.b, err = broker.Start(context.Background(), broker.Options{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "js"),
		Credentials: map[string]string{}, Tokens: st, CommandKey: commandKey(t, st), Presence: e.presence,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("broker.Start: %v", err)
	}
	t.Cleanup(e.b.Shutdown)
	e.b.Open()
	return e
}

// enroll sends raw as an enrollment request as the enroll user and
// returns the answer.
func (e *env) enroll(t *testing.T, raw []byte) protocol.EnrollReply {
	t.Helper()
	nc, err := nats.Connect(e.b.ClientURL(), nats.UserInfo(protocol.EnrollUser, ""), nats.CustomInboxPrefix(protocol.EnrollInboxPrefix))
	if err != nil {
		t.Fatalf("connect as enroll user: %v", err)
	}
	defer nc.Close()
	msg, err := nc.Request(protocol.EnrollSubject, raw, 5*time.Second)
	if err != nil {
		t.Fatalf("enrollment request: %v", err)
	}
	var reply protocol.EnrollReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("enrollment reply %q: %v", msg.Data, err)
	}
	return reply
}

func newKey(t *testing.T) (nkeys.KeyPair, string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return kp, pub
}

func request(id, token, pub string) []byte {
	raw, _ := json.Marshal(protocol.EnrollRequest{V: protocol.Version, InstanceID: id, Token: token, PublicKey: pub})
	return raw
}

// agent enrolls instance id with a fresh key and connects with it. Async
// errors (permission violations) arrive on the returned channel.
func (e *env) agent(t *testing.T, id string) (*nats.Conn, <-chan error) {
	t.Helper()
	kp, pub := newKey(t)
	r := e.enroll(t, request(id, e.tokens[id], pub))
	if !r.OK {
		t.Fatalf("enrolling %s: %+v", id, r)
	}
	if key, err := protocol.ParseCommandKey(r.CommandKey); err != nil || !key.Equal(e.b.CommandKey()) {
		t.Fatalf("enrolling %s: command key %q (%v), want the broker's", id, r.CommandKey, err)
	}
	errs := make(chan error, 16)
	nc, err := nats.Connect(e.b.ClientURL(), nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(protocol.InboxPrefix(id)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatalf("connecting as %s: %v", id, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

func wantViolation(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s: got error %v, want a permissions violation", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("%s: no permissions violation within 5s", what)
	}
}

func TestAgentPermissions(t *testing.T) {
	const a, b = "i-aaaa", "i-bbbb"
	e := start(t, a, b)
	ncA, errsA := e.agent(t, a)
	ncB, _ := e.agent(t, b)

	// The control plane sees what B publishes on B's subjects, and nothing A
	// publishes there.
	seen, err := e.b.Conn().SubscribeSync(protocol.AgentSubjects(b))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}

	t.Run("publish on another agent's subject", func(t *testing.T) {
		if err := ncA.Publish(protocol.AgentSubject(b, protocol.KindHeartbeat), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		wantViolation(t, errsA, "publish as B")
	})
	t.Run("subscribe to another agent's commands", func(t *testing.T) {
		if _, err := ncA.SubscribeSync(protocol.CommandSubject(b)); err != nil {
			t.Fatal(err)
		}
		wantViolation(t, errsA, "subscribe to B's commands")
	})
	for _, subject := range []string{"stackpro.>", ">", protocol.AgentSubjects(b), protocol.InboxPrefix(b) + ".>", protocol.EnrollSubject, "stackpro.broadcast"} {
		t.Run("subscribe "+subject, func(t *testing.T) {
			if _, err := ncA.SubscribeSync(subject); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, errsA, "subscribe to "+subject)
		})
	}
	for _, subject := range []string{protocol.CommandSubject(b), "stackpro.broadcast", protocol.EnrollSubject, "$JS.API.STREAM.LIST"} {
		t.Run("publish "+subject, func(t *testing.T) {
			if err := ncA.Publish(subject, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, errsA, "publish to "+subject)
		})
	}
	t.Run("own subjects work", func(t *testing.T) {
		if _, err := ncA.SubscribeSync(protocol.CommandSubject(a)); err != nil {
			t.Fatal(err)
		}
		if err := ncB.Publish(protocol.AgentSubject(b, protocol.KindHeartbeat), []byte(`"from b"`)); err != nil {
			t.Fatal(err)
		}
		msg, err := seen.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("B's own heartbeat did not arrive: %v", err)
		}
		if string(msg.Data) != `"from b"` {
			t.Errorf("the control plane saw %q on B's subjects, want only B's own message", msg.Data)
		}
		if err := ncA.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errsA:
			t.Errorf("A's own subscriptions: %v", err)
		default:
		}
	})
	t.Run("reuse of a token", func(t *testing.T) {
		_, pub := newKey(t)
		if r := e.enroll(t, request(a, e.tokens[a], pub)); r.OK || r.Code != protocol.EnrollRefused {
			t.Errorf("reused token: got %+v, want refused", r)
		}
		creds, err := e.st.Credentials()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := creds[pub]; ok {
			t.Error("a refused key was stored")
		}
	})
}

func TestCommandsReachOnlyTheirAgent(t *testing.T) {
	const a, b = "i-aaaa", "i-bbbb"
	e := start(t, a, b)
	ncA, _ := e.agent(t, a)
	ncB, _ := e.agent(t, b)
	snoop, err := ncB.SubscribeSync(protocol.CommandSubject(a))
	if err != nil {
		t.Fatal(err)
	}
	own, err := ncB.SubscribeSync(protocol.CommandSubject(b))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ncA.Subscribe(protocol.CommandSubject(a), func(m *nats.Msg) { _ = m.Respond([]byte("pong from a")) }); err != nil {
		t.Fatal(err)
	}
	for _, nc := range []*nats.Conn{ncA, ncB} {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := broker.Ask(ctx, e.b.Conn(), a, []byte("ping"))
	if err != nil {
		t.Fatalf("request to A: %v (an agent must be able to answer its own commands)", err)
	}
	if string(reply.Data) != "pong from a" {
		t.Errorf("reply = %q", reply.Data)
	}
	// A command to B, sent after A's on the same connection, reaches B
	// after anything of A's would have: once B has it, A's is not coming.
	if err := e.b.Conn().Publish(protocol.CommandSubject(b), []byte("marker for b")); err != nil {
		t.Fatal(err)
	}
	if m, err := own.NextMsg(5 * time.Second); err != nil || string(m.Data) != "marker for b" {
		t.Fatalf("B's own command: %v, %v", m, err)
	}
	if m, err := snoop.NextMsg(0); err == nil {
		t.Errorf("B read A's command %q", m.Data)
	}
}

func TestUnknownAndForgedKeysAreRefused(t *testing.T) {
	const a = "i-aaaa"
	e := start(t, a)
	kpA, pubA := newKey(t)
	if r := e.enroll(t, request(a, e.tokens[a], pubA)); !r.OK {
		t.Fatalf("enroll: %+v", r)
	}
	unknown, pubUnknown := newKey(t)
	tests := []struct {
		name string
		opt  nats.Option
	}{
		{"unknown key", nats.Nkey(pubUnknown, unknown.Sign)},
		{"A's public key signed by another key", nats.Nkey(pubA, unknown.Sign)},
		{"no credentials", nats.Name("anonymous")},
		{"a user and password", nats.UserInfo("admin", "admin")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(e.b.ClientURL(), tt.opt)
			if err == nil {
				nc.Close()
				t.Fatal("connected, want refused")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("err = %v, want an authorization violation", err)
			}
		})
	}
	nc, err := nats.Connect(e.b.ClientURL(), nats.Nkey(pubA, kpA.Sign))
	if err != nil {
		t.Fatalf("A's own key: %v", err)
	}
	nc.Close()
}

func TestEnrollUserCanOnlyEnroll(t *testing.T) {
	e := start(t, "i-aaaa")
	errs := make(chan error, 8)
	nc, err := nats.Connect(e.b.ClientURL(), nats.UserInfo(protocol.EnrollUser, ""),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.SubscribeSync(protocol.EnrollSubject); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, "enroll user reading enrollment requests")
	if err := nc.Publish(protocol.AgentSubject("i-aaaa", protocol.KindHeartbeat), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, "enroll user publishing a heartbeat")
}

func TestEnrollmentGarbage(t *testing.T) {
	const a = "i-aaaa"
	e := start(t, a)
	_, pub := newKey(t)
	tests := []struct {
		name string
		raw  string
		code string
	}{
		{"not JSON", "hello", protocol.EnrollBadRequest},
		{"empty object", "{}", protocol.EnrollBadRequest},
		{"wrong types", `{"v":"one","instance_id":5}`, protocol.EnrollBadRequest},
		{"bad instance id", string(request("I-*", e.tokens[a], pub)), protocol.EnrollBadRequest},
		{"not a user key", string(request(a, e.tokens[a], "SUAGARBAGE")), protocol.EnrollBadRequest},
		{"huge token", string(request(a, string(make([]byte, 4096)), pub)), protocol.EnrollBadRequest},
		{"wrong token", string(request(a, "spe_wrong", pub)), protocol.EnrollRefused},
		{"token of another instance", string(request("i-bbbb", e.tokens[a], pub)), protocol.EnrollRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.enroll(t, []byte(tt.raw))
			if r.OK || r.Code != tt.code || r.Error == "" {
				t.Errorf("reply = %+v, want code %s with a message", r, tt.code)
			}
		})
	}
	creds, err := e.st.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 0 {
		t.Errorf("garbage stored credentials: %v", creds)
	}
	// The token is still good after all that.
	if r := e.enroll(t, request(a, e.tokens[a], pub)); !r.OK {
		t.Errorf("good request after garbage: %+v", r)
	}
}

func TestExpiredToken(t *testing.T) {
	const a = "i-aaaa"
	e := start(t, a)
	token, err := e.st.MintToken(a, -time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, pub := newKey(t)
	if r := e.enroll(t, request(a, token, pub)); r.OK || r.Code != protocol.EnrollRefused {
		t.Errorf("expired token: %+v, want refused", r)
	}
}

func TestRevoke(t *testing.T) {
	const a = "i-aaaa"
	e := start(t, a)
	closed := make(chan struct{})
	kp, pub := newKey(t)
	if r := e.enroll(t, request(a, e.tokens[a], pub)); !r.OK {
		t.Fatal(r)
	}
	nc, err := nats.Connect(e.b.ClientURL(), nats.Nkey(pub, kp.Sign), nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	e.b.Revoke(a)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("revoked agent still connected after 5s")
	}
	if _, err := nats.Connect(e.b.ClientURL(), nats.Nkey(pub, kp.Sign)); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("reconnect after revoke: %v, want authorization violation", err)
	}
}

// An agent reads its own target, as it is written and on demand, and
// nobody else's.
func TestTargetsAreReadOnlyByTheirAgent(t *testing.T) {
	const a, b = "i-aaaa", "i-bbbb"
	e := start(t, a, b)
	ncA, errsA := e.agent(t, a)
	js, err := jetstream.New(e.b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, protocol.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	own, err := ncA.SubscribeSync(protocol.TargetSubject(a))
	if err != nil {
		t.Fatal(err)
	}
	if err := ncA.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, a, []byte(`"a1"`)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, b, []byte(`"b1"`)); err != nil {
		t.Fatal(err)
	}
	if m, err := own.NextMsg(5 * time.Second); err != nil || string(m.Data) != `"a1"` {
		t.Fatalf("A's target as written: %v, %v", m, err)
	}
	m, err := ncA.Request(protocol.TargetGetSubject(a), nil, 5*time.Second)
	if err != nil || string(m.Data) != `"a1"` {
		t.Fatalf("A's direct get of its target: %v, %v", m, err)
	}

	if _, err := ncA.SubscribeSync(protocol.TargetSubject(b)); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errsA, "subscribe to B's target")
	if err := ncA.PublishRequest(protocol.TargetGetSubject(b), protocol.InboxPrefix(a)+".x", nil); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errsA, "direct get of B's target")
	for _, subject := range []string{"$JS.API.DIRECT.GET.KV_targets", "$JS.API.STREAM.MSG.GET.KV_targets", "$KV.targets." + a} {
		if err := ncA.Publish(subject, []byte(`{"last_by_subj":"$KV.targets.i-bbbb","seq":1}`)); err != nil {
			t.Fatal(err)
		}
		wantViolation(t, errsA, "publish to "+subject)
	}
}

// commandKey is the store's command key, as Run hands it to the broker.
func commandKey(t *testing.T, st *store.Store) ed25519.PrivateKey {
	t.Helper()
	key, err := st.CommandKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// connect connects with the agent key pub (kp), as its agent would.
func (e *env) connect(t *testing.T, id string, kp nkeys.KeyPair, pub string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(e.b.ClientURL(), nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(protocol.InboxPrefix(id)))
	if err != nil {
		t.Fatalf("connecting as %s: %v", id, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Whatever reply subject an agent or the enroll user names on a publish it
// may make, whoever answers (JetStream's acknowledgement, a direct get,
// the enrollment responder) must not reach another instance or the
// JetStream API: nothing arrives at a subscriber of the victim's subjects,
// and the victim's target is unchanged.
func TestRepliesNeverReachAnotherInstance(t *testing.T) {
	const a, b = "i-aaaa", "i-bbbb"
	e := start(t, a, b)
	ncA, _ := e.agent(t, a)
	ncB, _ := e.agent(t, b)
	enroll, err := nats.Connect(e.b.ClientURL(), nats.UserInfo(protocol.EnrollUser, ""), nats.CustomInboxPrefix(protocol.EnrollInboxPrefix))
	if err != nil {
		t.Fatal(err)
	}
	defer enroll.Close()
	ctx := context.Background()
	js, err := jetstream.New(e.b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, protocol.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	// put writes id's target afresh, so that each case starts whole.
	put := func(t *testing.T, id string) jetstream.KeyValueEntry {
		t.Helper()
		if _, err := kv.Put(ctx, id, []byte(`{"v":4,"instance_id":"`+id+`","version":1}`)); err != nil {
			t.Fatal(err)
		}
		entry, err := kv.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return entry
	}
	put(t, a)

	// What would see a message aimed at B: B itself, on everything it
	// subscribes to, and the control plane, on B's subjects.
	watch := map[string]*nats.Subscription{}
	for _, w := range []struct {
		nc      *nats.Conn
		subject string
	}{
		{ncB, protocol.TargetSubject(b)},
		{ncB, protocol.CommandSubject(b)},
		{ncB, protocol.InboxPrefix(b) + ".>"},
		{e.b.Conn(), protocol.AgentSubjects(b)},
		{e.b.Conn(), "$JS.API.STREAM.PURGE.>"},
	} {
		sub, err := w.nc.SubscribeSync(w.subject)
		if err != nil {
			t.Fatal(err)
		}
		watch[w.subject] = sub
	}
	// settle returns what the watchers got, once B and the control plane
	// have read everything sent to them so far, and empties them.
	settle := func(t *testing.T) []*nats.Msg {
		t.Helper()
		for _, nc := range []*nats.Conn{ncB, e.b.Conn()} {
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		var got []*nats.Msg
		for _, sub := range watch {
			for m, err := sub.NextMsg(0); err == nil; m, err = sub.NextMsg(0) {
				got = append(got, m)
			}
		}
		return got
	}

	event, _ := json.Marshal(protocol.Event{V: protocol.Version, InstanceID: a, Type: "test", At: time.Now()})
	_, pub := newKey(t)
	senders := []struct {
		name    string
		nc      *nats.Conn
		subject string
		data    []byte
		// marker is a request on the same path: once it is answered, so
		// would the attack have been.
		marker string
	}{
		{"agent event (JetStream ack)", ncA, protocol.AgentSubject(a, protocol.KindEvent), event, protocol.AgentSubject(a, protocol.KindEvent)},
		{"agent heartbeat", ncA, protocol.AgentSubject(a, protocol.KindHeartbeat), []byte(`{}`), protocol.AgentSubject(a, protocol.KindEvent)},
		{"agent metrics", ncA, protocol.AgentSubject(a, protocol.KindMetrics), []byte(`{}`), protocol.AgentSubject(a, protocol.KindEvent)},
		{"agent command answer", ncA, protocol.ReplySubject(a, "run.x"), []byte(`{}`), protocol.AgentSubject(a, protocol.KindEvent)},
		{"agent direct get", ncA, protocol.TargetGetSubject(a), nil, protocol.TargetGetSubject(a)},
		{"enrollment, refused", enroll, protocol.EnrollSubject, request(a, "spe_wrong", pub), protocol.EnrollSubject},
		{"enrollment, malformed", enroll, protocol.EnrollSubject, []byte("garbage"), protocol.EnrollSubject},
	}
	victims := []struct{ name, reply string }{
		{"B's target key", protocol.TargetSubject(b)},
		{"B's command subject", protocol.CommandSubject(b)},
		{"B's inbox", protocol.InboxPrefix(b) + ".x.y"},
		{"B's heartbeat subject", protocol.AgentSubject(b, protocol.KindHeartbeat)},
		{"the JetStream API", "$JS.API.STREAM.PURGE.KV_" + protocol.TargetsBucket},
	}
	for _, s := range senders {
		for _, v := range victims {
			t.Run(s.name+" → "+v.name, func(t *testing.T) {
				targetB := put(t, b)
				settle(t)
				if err := s.nc.PublishMsg(&nats.Msg{Subject: s.subject, Reply: v.reply, Data: s.data}); err != nil {
					t.Fatal(err)
				}
				if _, err := s.nc.Request(s.marker, s.data, 5*time.Second); err != nil {
					t.Fatalf("marker request on %s: %v", s.marker, err)
				}
				for _, m := range settle(t) {
					t.Errorf("a subscriber of B's subjects got %q on %s", m.Data, m.Subject)
				}
				got, err := kv.Get(ctx, b)
				if err != nil {
					t.Fatalf("B's target: %v", err)
				}
				if got.Revision() != targetB.Revision() || !bytes.Equal(got.Value(), targetB.Value()) {
					t.Errorf("B's target is now %q (revision %d), want %q (revision %d)", got.Value(), got.Revision(), targetB.Value(), targetB.Revision())
				}
			})
		}
	}
}

// The control plane answers an enrollment only on a reply subject the
// server mapped for the enroll account's import, never on one named in its
// own account.
func TestEnrollmentAnswersOnlyMappedReplies(t *testing.T) {
	const a = "i-aaaa"
	e := start(t, a)
	_, pub := newKey(t)
	cp := e.b.Conn()
	answers, err := cp.SubscribeSync(protocol.TargetSubject(a))
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.PublishMsg(&nats.Msg{Subject: protocol.EnrollSubject, Reply: protocol.TargetSubject(a), Data: request(a, e.tokens[a], pub)}); err != nil {
		t.Fatal(err)
	}
	// The responder takes requests in order: once the enroll user's is
	// answered, the one before it was handled.
	if r := e.enroll(t, []byte("garbage")); r.Code != protocol.EnrollBadRequest {
		t.Fatalf("marker enrollment: %+v", r)
	}
	if m, err := answers.NextMsg(0); err == nil {
		t.Errorf("an enrollment was answered on %s: %q", m.Subject, m.Data)
	}
	creds, err := e.st.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := creds[pub]; ok {
		t.Error("an enrollment with an unmapped reply subject was redeemed")
	}
}

// An instance is disconnected only when its last connection closes: a
// second connection with the same key (a restarted agent whose old
// connection has not timed out yet) closing leaves it connected.
func TestPresenceCountsConnections(t *testing.T) {
	const a, c = "i-aaaa", "i-cccc"
	e := start(t, a, c)
	kp, pub := newKey(t)
	if r := e.enroll(t, request(a, e.tokens[a], pub)); !r.OK {
		t.Fatalf("enroll: %+v", r)
	}
	first := e.connect(t, a, kp, pub)
	proctest.Until(t, "a's first connection to be seen", func() bool { return len(e.presence.seen()) == 1 })
	second := e.connect(t, a, kp, pub)
	cid, err := second.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	second.Close()
	proctest.Until(t, "the server to close a's second connection", func() bool { return e.b.Closed(cid) })
	// The disconnect event went out before the server listed the
	// connection as closed, so c's connect event comes after it.
	e.agent(t, c)
	proctest.Until(t, "c's connection to be seen", func() bool { return len(e.presence.seen()) >= 2 })
	if got, want := e.presence.seen(), []string{a + " up", c + " up"}; !slices.Equal(got, want) {
		t.Fatalf("presence = %q, want %q: a's second connection closing disconnected it", got, want)
	}
	first.Close()
	proctest.Until(t, "a's last connection to close", func() bool { return len(e.presence.seen()) == 3 })
	if got, want := e.presence.seen()[2], a+" down"; got != want {
		t.Errorf("after a's last connection closed: %q, want %q", got, want)
	}
}
