package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/agent/internal/link"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// rig is a real broker, a control plane stand-in that enrolls the agent
// and signs its commands, and the agent's state dir; start runs an agent
// on it.
type rig struct {
	t      *testing.T
	url    string
	dir    string
	nc     *nats.Conn
	key    ed25519.PrivateKey
	log    *lockedBuffer
	mu     sync.Mutex
	events []protocol.Event
}

// newRig starts the broker. The enrollment reply hands the agent the
// rig's command key when withKey is set.
func newRig(t *testing.T, withKey bool) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), log: &lockedBuffer{}}
	id, err := link.LoadIdentity(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	ns := runBroker(t, port, filepath.Join(r.dir, "js"), id.PublicKey())
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	r.url = "nats://127.0.0.1:" + strconv.Itoa(port)
	if r.nc, err = nats.Connect(r.url, nats.UserInfo("test", "test")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.nc.Close)
	var pub ed25519.PublicKey
	if pub, r.key, err = ed25519.GenerateKey(nil); err != nil {
		t.Fatal(err)
	}
	enrolled := protocol.EnrollReply{V: protocol.Version, OK: true, InstanceID: testInstance}
	if withKey {
		enrolled.CommandKey = protocol.FormatCommandKey(pub)
	}
	if _, err := r.nc.Subscribe(protocol.EnrollSubject, func(m *nats.Msg) {
		data, _ := json.Marshal(enrolled)
		_ = m.Respond(data)
	}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(r.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: protocol.EventsStream,
		Subjects: []string{protocol.AgentWildcard(protocol.KindEvent)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.nc.Subscribe(protocol.AgentSubject(testInstance, protocol.KindEvent), func(m *nats.Msg) {
		var ev protocol.Event
		if json.Unmarshal(m.Data, &ev) == nil {
			r.mu.Lock()
			r.events = append(r.events, ev)
			r.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := r.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

// start runs an agent on the rig's state dir until the returned stop is
// called, and waits until it answers.
func (r *rig) start() (stop func()) {
	r.t.Helper()
	cfg := Config{Bootstrap: protocol.Bootstrap{InstanceID: testInstance, NATSURL: r.url, EnrollmentToken: "tok",
		StateDir: r.dir, HeartbeatInterval: time.Hour, MetricsInterval: time.Hour, HealthTimeout: time.Minute,
		LogLevel: "info"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(r.log, nil))) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("Run = %v, want nil after a cancel", err)
		}
	}
	proctest.Until(r.t, "the agent to answer on its command subject", func() bool {
		select {
		case err := <-done:
			r.t.Fatalf("Run returned early: %v", err)
		default:
		}
		msg, err := r.nc.Request(protocol.CommandSubject(testInstance), r.seal(r.request(protocol.CommandPing)), 2*time.Second)
		return err == nil && len(msg.Data) > 0
	})
	return stop
}

// request is a fresh request for the agent, valid for a minute.
func (r *rig) request(name string) protocol.CommandRequest {
	now := time.Now()
	return protocol.CommandRequest{V: protocol.Version, ID: "cmd-" + protocol.NewNonce(), Name: name,
		Target: testInstance, Nonce: protocol.NewNonce(), IssuedAt: now, Expires: now.Add(time.Minute), Run: "run-1"}
}

func (r *rig) seal(req protocol.CommandRequest) []byte {
	r.t.Helper()
	data, err := protocol.Seal(r.key, req)
	if err != nil {
		r.t.Fatal(err)
	}
	return data
}

// send sends data to the agent's command subject and returns its one reply.
func (r *rig) send(data []byte) protocol.CommandReply {
	r.t.Helper()
	return r.sendFor(r.t, data)
}

// sendFor is send for a test of its own, such as a subtest.
func (r *rig) sendFor(t testing.TB, data []byte) protocol.CommandReply {
	t.Helper()
	msg, err := r.nc.Request(protocol.CommandSubject(testInstance), data, 30*time.Second)
	if err != nil {
		t.Fatalf("command request: %v", err)
	}
	var reply protocol.CommandReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("command reply %s: %v", msg.Data, err)
	}
	return reply
}

// waitEvent waits for an event of typ for reason and, when nonce is set,
// nonce.
func (r *rig) waitEvent(typ string, reason protocol.Refusal, nonce string) protocol.Event {
	r.t.Helper()
	var found protocol.Event
	proctest.Until(r.t, "a "+typ+" event ("+string(reason)+")", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, ev := range r.events {
			if ev.Type == typ && ev.Data["reason"] == string(reason) && ev.Data["nonce"] == nonce {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// waitRefused waits for a command.refused event for reason and, when
// nonce is set, nonce.
func (r *rig) waitRefused(reason protocol.Refusal, nonce string) protocol.Event {
	r.t.Helper()
	found := r.waitEvent(protocol.EventCommandRefused, reason, nonce)
	if found.Severity != protocol.SeverityWarning {
		r.t.Errorf("refusal event severity %q, want warning", found.Severity)
	}
	return found
}

func TestSignedCommands(t *testing.T) {
	r := newRig(t, true)
	stop := r.start()
	defer func() { stop() }()

	t.Run("a valid ping answers", func(t *testing.T) {
		req := r.request(protocol.CommandPing)
		reply := r.send(r.seal(req))
		if !reply.OK || reply.Refused != "" || reply.ID != req.ID || reply.Nonce != req.Nonce ||
			reply.InstanceID != testInstance || reply.State != "" {
			t.Errorf("ping reply = %+v, want OK with the request's id and nonce", reply)
		}
	})

	t.Run("ack: a quick command has its outcome as its only answer", func(t *testing.T) {
		req := r.request(protocol.CommandVersion)
		req.Ack = true
		// An acknowledgement is never sent after the outcome, so the first
		// answer being the outcome means none was sent.
		if out := r.send(r.seal(req)); out.State != "" || !out.OK || out.Nonce != req.Nonce {
			t.Errorf("first reply = %+v, want the outcome", out)
		}
	})

	t.Run("facts", func(t *testing.T) {
		reply := r.send(r.seal(r.request(protocol.CommandFacts)))
		var f protocol.Facts
		if err := json.Unmarshal(reply.Result, &f); err != nil || !reply.OK {
			t.Fatalf("facts reply = %+v (%v), want OK with facts", reply, err)
		}
		if f.InstanceID != testInstance || f.Protocol != protocol.Version || f.CPUs < 1 || f.OS == "" ||
			f.AgentStarted.IsZero() || f.MemoryBytes == 0 {
			t.Errorf("facts = %+v, want this host's", f)
		}
		if f.CommandsRun[protocol.CommandPing] < 2 || f.CommandsRun[protocol.CommandVersion] != 1 {
			t.Errorf("facts counted %v, want the pings and the agent.version run before", f.CommandsRun)
		}
	})

	_, otherKey, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		name      string
		data      func(req protocol.CommandRequest) []byte
		want      protocol.Refusal
		withNonce bool // the refusal can name the nonce
	}{
		{"unsigned", func(req protocol.CommandRequest) []byte { data, _ := json.Marshal(req); return data },
			protocol.RefusedUnsigned, false},
		{"forged", func(req protocol.CommandRequest) []byte {
			data, err := protocol.Seal(otherKey, req)
			if err != nil {
				t.Fatal(err)
			}
			return data
		}, protocol.RefusedForged, false},
		{"expired", func(req protocol.CommandRequest) []byte {
			req.IssuedAt, req.Expires = req.IssuedAt.Add(-2*time.Hour), req.IssuedAt.Add(-time.Hour)
			return r.seal(req)
		}, protocol.RefusedExpired, true},
		{"mistargeted", func(req protocol.CommandRequest) []byte {
			req.Target = "i-someone-else"
			return r.seal(req)
		}, protocol.RefusedMistargeted, true},
		{"not in the catalog", func(req protocol.CommandRequest) []byte {
			req.Name = "shell"
			return r.seal(req)
		}, protocol.RefusedUnknown, true},
	}
	for _, tt := range refusals {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			req := r.request(protocol.CommandStackDown)
			reply := r.send(tt.data(req))
			if reply.OK || reply.Refused != tt.want || reply.Error == "" {
				t.Errorf("reply = %+v, want refused %q", reply, tt.want)
			}
			nonce := ""
			if tt.withNonce {
				nonce = req.Nonce
				if reply.Nonce != req.Nonce || reply.ID != req.ID {
					t.Errorf("reply = %+v, want the request's id and nonce", reply)
				}
			}
			ev := r.waitRefused(tt.want, nonce)
			if tt.withNonce && (ev.Data["run"] != req.Run || ev.Data["command"] == "") {
				t.Errorf("refusal event data = %v, want the run and command", ev.Data)
			}
		})
	}

	replayed := r.seal(r.request(protocol.CommandPing))
	var replayedNonce string
	t.Run("refused: replayed", func(t *testing.T) {
		first := r.send(replayed)
		if !first.OK {
			t.Fatalf("first send = %+v, want OK", first)
		}
		replayedNonce = first.Nonce
		again := r.send(replayed)
		if again.OK || again.Refused != protocol.RefusedReplayed || again.Nonce != replayedNonce {
			t.Errorf("second send = %+v, want refused replayed", again)
		}
		r.waitRefused(protocol.RefusedReplayed, replayedNonce)
	})

	t.Run("command.result", func(t *testing.T) {
		ask := func(nonce string) protocol.ResultReply {
			t.Helper()
			req := r.request(protocol.CommandResult)
			req.Args, _ = json.Marshal(protocol.ResultArgs{Nonce: nonce})
			reply := r.send(r.seal(req))
			var res protocol.ResultReply
			if err := json.Unmarshal(reply.Result, &res); err != nil || !reply.OK {
				t.Fatalf("command.result reply = %+v (%v), want OK", reply, err)
			}
			return res
		}
		if res := ask(replayedNonce); !res.Known || res.Reply == nil || !res.Reply.OK || res.Reply.Nonce != replayedNonce {
			t.Errorf("result of an earlier ping = %+v, want its outcome", res)
		}
		if res := ask(protocol.NewNonce()); res.Known || res.Reply != nil {
			t.Errorf("result of a nonce never sent = %+v, want unknown", res)
		}
		if reply := r.send(r.seal(r.request(protocol.CommandResult))); reply.OK {
			t.Errorf("command.result without a nonce = %+v, want an error", reply)
		}
	})

	t.Run("a replay is refused after a restart", func(t *testing.T) {
		stop()
		stop = r.start()
		if reply := r.send(replayed); reply.Refused != protocol.RefusedReplayed {
			t.Errorf("replay after a restart = %+v, want refused replayed", reply)
		}
	})
}

// An agent that was handed no command key refuses every command as forged,
// and says so once at start.
func TestCommandsWithoutKey(t *testing.T) {
	r := newRig(t, false)
	stop := r.start()
	defer stop()
	for range 2 {
		if reply := r.send(r.seal(r.request(protocol.CommandPing))); reply.Refused != protocol.RefusedForged {
			t.Errorf("ping = %+v, want refused forged", reply)
		}
	}
	r.waitRefused(protocol.RefusedForged, "")
	if n := strings.Count(r.log.String(), "no control plane key: every command will be refused"); n != 1 {
		t.Errorf("the missing key was logged %d times, want once:\n%s", n, r.log)
	}
}

func TestRefusalBudget(t *testing.T) {
	var b refusalBudget
	t0 := time.Date(2026, 11, 24, 15, 0, 0, 0, time.UTC)
	for i := range refusalReports {
		if report, suppressed := b.take(t0.Add(time.Duration(i) * time.Second)); !report || suppressed != 0 {
			t.Fatalf("refusal %d: take = %v, %d; want reported", i, report, suppressed)
		}
	}
	for i := range 5 {
		if report, _ := b.take(t0.Add(30 * time.Second)); report {
			t.Fatalf("refusal %d over the budget was reported", refusalReports+i)
		}
	}
	if n := b.flush(t0.Add(59 * time.Second)); n != 0 {
		t.Errorf("flush within the minute = %d, want 0", n)
	}
	if n := b.flush(t0.Add(61 * time.Second)); n != 5 {
		t.Errorf("flush after the minute = %d, want the 5 suppressed", n)
	}
	if n := b.flush(t0.Add(200 * time.Second)); n != 0 {
		t.Errorf("second flush = %d, want 0: a count is reported once", n)
	}

	// Without a flush, the next refusal after the window brings the count.
	t1 := t0.Add(time.Hour)
	for range refusalReports + 3 {
		b.take(t1)
	}
	if report, suppressed := b.take(t1.Add(time.Minute)); !report || suppressed != 3 {
		t.Errorf("take in the next window = %v, %d; want reported, with 3 suppressed before", report, suppressed)
	}
}

// lockedBuffer is a log destination that goroutines can share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestAckWhenRunning: a command still running AckAfter after it was
// accepted is acknowledged, and then answered.
func TestAckWhenRunning(t *testing.T) {
	ackAfter = 0
	t.Cleanup(func() { ackAfter = protocol.AckAfter })
	r := newRig(t, true)
	defer r.start()()
	req := r.request(protocol.CommandVersion)
	req.Ack = true
	inbox := r.nc.NewRespInbox()
	sub, err := r.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := r.nc.PublishRequest(protocol.CommandSubject(testInstance), inbox, r.seal(req)); err != nil {
		t.Fatal(err)
	}
	var replies []protocol.CommandReply
	for range 2 {
		msg, err := sub.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("reply %d: %v", len(replies)+1, err)
		}
		var reply protocol.CommandReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			t.Fatal(err)
		}
		replies = append(replies, reply)
	}
	if ack := replies[0]; ack.State != protocol.StateRunning || ack.Nonce != req.Nonce || ack.ID != req.ID {
		t.Errorf("first reply = %+v, want state running for the request", ack)
	}
	if out := replies[1]; out.State != "" || !out.OK || out.Nonce != req.Nonce || !json.Valid(out.Result) {
		t.Errorf("second reply = %+v, want the outcome", out)
	}
}
