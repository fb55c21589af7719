package fleetsim_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/internal/fleetsim"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// simulateEnv makes the test binary run stackpro-sim (Main) instead of
// the tests, so the process tests re-execute it, with the race detector
// when the tests have it, as parent and children.
const simulateEnv = "FLEETSIM_TEST_SIMULATE"

func TestMain(m *testing.M) {
	if os.Getenv(simulateEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := fleetsim.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "stackpro-sim: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	proctest.Cleanup()
	os.Exit(code)
}

// enroller accepts each known token once, like the store does.
type enroller struct {
	mu       sync.Mutex
	tokens   map[string]string // instance id → token
	redeemed int
	// flaky is how many redemptions to fail as an internal error first.
	flaky int
}

func (e *enroller) RedeemToken(id, token, _ string, _ time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.flaky > 0 {
		e.flaky--
		return errors.New("store busy")
	}
	if want, ok := e.tokens[id]; !ok || want != token {
		return fault.New(fault.Forbidden, "unknown or used token")
	}
	delete(e.tokens, id)
	e.redeemed++
	return nil
}

func (e *enroller) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.redeemed
}

type env struct {
	b     *broker.Broker
	enr   *enroller
	creds []fleetsim.Credential
	// key is the command key the broker signs with.
	key ed25519.PrivateKey
}

// start runs the real broker with n instances waiting to enroll.
func start(t testing.TB, n int) *env {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{enr: &enroller{tokens: map[string]string{}}, key: key}
	for i := range n {
		c := fleetsim.Credential{InstanceID: fmt.Sprintf("i-sim%05d", i), Token: fmt.Sprintf("token-%d", i)}
		e.enr.tokens[c.InstanceID] = c.Token
		e.creds = append(e.creds, c)
	}
	e.b, err = broker.Start(context.Background(), broker.Options{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		Credentials: map[string]string{}, Tokens: e.enr, CommandKey: key,
		Presence: fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Minute, OfflineAfter: time.Hour}, nil), Log: discard()})
	if err != nil {
		t.Fatalf("broker.Start: %v", err)
	}
	t.Cleanup(e.b.Shutdown)
	e.b.Open()
	return e
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func (e *env) sim(t testing.TB, o fleetsim.Options) *fleetsim.Sim {
	t.Helper()
	o.URL, o.Agents, o.Log = e.b.ClientURL(), e.creds, discard()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := fleetsim.Start(ctx, o)
	if err != nil {
		t.Fatalf("fleetsim.Start: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// request is a command request to id, valid for a minute.
func request(id, name string, args any, ack bool) protocol.CommandRequest {
	raw, _ := json.Marshal(args)
	if args == nil {
		raw = nil
	}
	now := time.Now()
	return protocol.CommandRequest{V: protocol.Version, ID: "c-" + protocol.NewNonce(), Name: name, Args: raw,
		Target: id, Nonce: protocol.NewNonce(), IssuedAt: now, Expires: now.Add(time.Minute), Ack: ack}
}

func (e *env) seal(t testing.TB, req protocol.CommandRequest) []byte {
	t.Helper()
	data, err := e.b.Seal(req)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return data
}

// ping asks id's agent for a pong, waiting at most wait.
func (e *env) ping(t testing.TB, id string, wait time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := broker.Ask(ctx, e.b.Conn(), id, e.seal(t, request(id, protocol.CommandPing, nil, false)))
	return err
}

// send publishes data on id's command subject and collects up to want
// replies, waiting at most wait for each.
func (e *env) send(t testing.TB, id string, data []byte, want int, wait time.Duration) []protocol.CommandReply {
	t.Helper()
	nc := e.b.Conn()
	inbox := protocol.ReplySubject(id, "test."+nuid.Next())
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(protocol.CommandSubject(id), inbox, data); err != nil {
		t.Fatal(err)
	}
	var replies []protocol.CommandReply
	for len(replies) < want {
		m, err := sub.NextMsg(wait)
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var r protocol.CommandReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatalf("reply from %s: %v: %q", id, err, m.Data)
		}
		replies = append(replies, r)
	}
	return replies
}

func TestAgentsEnrollAndHeartbeat(t *testing.T) {
	e := start(t, 200)
	var mu sync.Mutex
	beats := map[string]protocol.Heartbeat{}
	sub, err := e.b.Conn().Subscribe(protocol.AgentWildcard(protocol.KindHeartbeat), func(m *nats.Msg) {
		var hb protocol.Heartbeat
		if err := json.Unmarshal(m.Data, &hb); err != nil {
			t.Errorf("heartbeat on %s: %v", m.Subject, err)
			return
		}
		if id, _ := protocol.InstanceFromSubject(m.Subject); id != hb.InstanceID {
			t.Errorf("heartbeat of %s on %s", hb.InstanceID, m.Subject)
		}
		mu.Lock()
		beats[hb.InstanceID] = hb
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	s := e.sim(t, fleetsim.Options{Heartbeat: 300 * time.Millisecond, Version: "1.2.3"})
	if st := s.Stats(); st.Agents != 200 || st.Enrolled != 200 || st.Connected != 200 {
		t.Errorf("Stats() = %+v, want 200 agents enrolled and connected", st)
	}
	if got := e.enr.count(); got != 200 {
		t.Errorf("%d tokens redeemed, want 200", got)
	}
	proctest.Until(t, "a heartbeat from each of 200 agents", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(beats) == 200
	})
	mu.Lock()
	hb := beats[e.creds[0].InstanceID]
	mu.Unlock()
	if hb.V != protocol.Version || hb.AgentVersion != "1.2.3" || hb.Health != protocol.HealthOK ||
		hb.Seq < 1 || hb.Stack == nil || len(hb.Stack.Services) == 0 {
		t.Errorf("heartbeat = %+v, want version 1.2.3, health ok, a seq and services", hb)
	}
	if st := s.Stats(); st.Heartbeats < 200 {
		t.Errorf("Stats().Heartbeats = %d, want at least 200", st.Heartbeats)
	}
}

func TestStartRetriesAndReports(t *testing.T) {
	e := start(t, 5)
	e.enr.flaky = 3
	e.sim(t, fleetsim.Options{}) // enrolls all 5 despite 3 internal errors

	e = start(t, 5)
	e.creds[2].Token = "wrong"
	_, err := fleetsim.Start(context.Background(), fleetsim.Options{URL: e.b.ClientURL(), Agents: e.creds, Log: discard()})
	if err == nil || !strings.Contains(err.Error(), "4 of 5 agents enrolled") || !strings.Contains(err.Error(), e.creds[2].InstanceID) {
		t.Errorf("Start with a bad token: %v, want an error saying 4 of 5 enrolled and which failed", err)
	}

	_, err = fleetsim.Start(context.Background(), fleetsim.Options{Agents: []fleetsim.Credential{{InstanceID: "web"}},
		Fail: 0.8, Silent: 0.5, Heartbeat: -time.Second})
	for _, want := range []string{"no NATS URL", "invalid instance id", "no token", "more than 1", "negative heartbeat"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Start with bad options: %v, want it to say %q", err, want)
		}
	}
}

func TestCommandsAnsweredByBehaviour(t *testing.T) {
	e := start(t, 200)
	s := e.sim(t, fleetsim.Options{Fail: 0.1, Silent: 0.05})
	failing, silent := s.IDs(fleetsim.Failing), s.IDs(fleetsim.Silent)
	if len(failing) != 20 || len(silent) != 10 {
		t.Fatalf("%d failing and %d silent agents, want 20 and 10", len(failing), len(silent))
	}
	type tally struct{ ok, failed, quiet int }
	var mu sync.Mutex
	var got tally
	var wg sync.WaitGroup
	for _, c := range e.creds {
		wg.Go(func() {
			// Answers get a generous wait; silence is also proven by Stats below.
			wait := 10 * time.Second
			if slices.Contains(silent, c.InstanceID) {
				wait = 300 * time.Millisecond
			}
			req := request(c.InstanceID, protocol.CommandPing, nil, true)
			replies := e.send(t, c.InstanceID, e.seal(t, req), 1, wait)
			mu.Lock()
			defer mu.Unlock()
			if len(replies) == 0 {
				got.quiet++
				return
			}
			// A ping ends at once: its outcome is its only answer (an
			// acknowledgement never follows an outcome).
			out := replies[0]
			switch {
			case out.State != "" || out.Nonce != req.Nonce:
				t.Errorf("%s: outcome %+v", c.InstanceID, out)
			case out.OK && string(out.Result) != "" && json.Valid(out.Result):
				got.ok++
			case !out.OK && out.Error == "simulated failure":
				got.failed++
			default:
				t.Errorf("%s: outcome %+v", c.InstanceID, out)
			}
		})
	}
	wg.Wait()
	if want := (tally{ok: 170, failed: 20, quiet: 10}); got != want {
		t.Errorf("answers %+v, want %+v", got, want)
	}
	st := s.Stats()
	if st.Received != 200 || st.Acked != 0 || st.Ran != 190 || st.Answered != 190 || st.Failed != 20 || st.SilentDrops != 10 {
		t.Errorf("Stats() = %+v, want 200 received, none acked, 190 run and answered, 20 failed, 10 dropped", st)
	}
}

func TestCommandResultsAndCatalog(t *testing.T) {
	e := start(t, 2)
	s := e.sim(t, fleetsim.Options{})
	id := e.creds[0].InstanceID
	one := func(req protocol.CommandRequest) protocol.CommandReply {
		t.Helper()
		replies := e.send(t, id, e.seal(t, req), 1, 5*time.Second)
		if len(replies) != 1 {
			t.Fatalf("%s: %d replies, want 1", req.Name, len(replies))
		}
		return replies[0]
	}
	ping := request(id, protocol.CommandPing, nil, false)
	if r := one(ping); !r.OK || r.State != "" {
		t.Fatalf("ping: %+v", r)
	}
	var facts protocol.Facts
	if r := one(request(id, protocol.CommandFacts, nil, false)); !r.OK || json.Unmarshal(r.Result, &facts) != nil ||
		facts.InstanceID != id || facts.AgentVersion != "sim" || facts.Protocol != protocol.Version ||
		!maps.Equal(facts.CommandsRun, map[string]uint64{protocol.CommandPing: 1}) {
		t.Errorf("facts: %+v (%s), want the ping run before counted", r, r.Result)
	}
	var version struct{ Version string }
	if r := one(request(id, protocol.CommandVersion, nil, false)); !r.OK || json.Unmarshal(r.Result, &version) != nil ||
		version.Version != "sim" {
		t.Errorf("agent.version: %+v (%s)", r, r.Result)
	}
	if r := one(request(id, protocol.CommandStackRestart, protocol.StackArgs{Service: "app"}, false)); !r.OK ||
		string(r.Result) != `{"done":true}` {
		t.Errorf("stack.restart: %+v (%s)", r, r.Result)
	}

	result := func(nonce string) protocol.ResultReply {
		t.Helper()
		r := one(request(id, protocol.CommandResult, protocol.ResultArgs{Nonce: nonce}, false))
		var rr protocol.ResultReply
		if !r.OK || json.Unmarshal(r.Result, &rr) != nil {
			t.Fatalf("command.result: %+v (%s)", r, r.Result)
		}
		return rr
	}
	if rr := result(ping.Nonce); !rr.Known || rr.Reply == nil || !rr.Reply.OK || rr.Reply.Nonce != ping.Nonce {
		t.Errorf("result of the ping = %+v, want known and OK", rr)
	}
	if rr := result(protocol.NewNonce()); rr.Known || rr.Reply != nil {
		t.Errorf("result of an unknown nonce = %+v, want unknown", rr)
	}
	if r := one(request(id, protocol.CommandResult, map[string]int{"nonce": 1}, false)); r.OK {
		t.Errorf("command.result with malformed args: %+v, want an error", r)
	}

	// A failing agent fails commands, but tells truly what became of them.
	if _, err := s.SetIDs(fleetsim.Failing, id); err != nil {
		t.Fatal(err)
	}
	failed := request(id, protocol.CommandStackPull, nil, false)
	if r := one(failed); r.OK || r.Error != "simulated failure" {
		t.Errorf("stack.pull on a failing agent: %+v", r)
	}
	if rr := result(failed.Nonce); !rr.Known || rr.Reply == nil || rr.Reply.OK {
		t.Errorf("result of the failed pull = %+v, want known and failed", rr)
	}
}

func TestRefusals(t *testing.T) {
	e := start(t, 2)
	s := e.sim(t, fleetsim.Options{})
	id, other := e.creds[0].InstanceID, e.creds[1].InstanceID
	events := make(chan protocol.Event, 16)
	sub, err := e.b.Conn().Subscribe(protocol.AgentWildcard(protocol.KindEvent), func(m *nats.Msg) {
		var ev protocol.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil || m.Header.Get(nats.MsgIdHdr) != ev.ID {
			t.Errorf("event %q (%v), want a JSON event with its id as the message id", m.Data, err)
		}
		events <- ev
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_, forger, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := protocol.Seal(forger, request(id, protocol.CommandPing, nil, true))
	if err != nil {
		t.Fatal(err)
	}
	replayed := e.seal(t, request(id, protocol.CommandPing, nil, false))
	if r := e.send(t, id, replayed, 1, 5*time.Second); len(r) != 1 || !r[0].OK {
		t.Fatalf("first send of a request: %+v", r)
	}
	expired := request(id, protocol.CommandPing, nil, true)
	expired.IssuedAt, expired.Expires = time.Now().Add(-2*time.Hour), time.Now().Add(-90*time.Minute)

	tests := []struct {
		name string
		data []byte
		want protocol.Refusal
		// nonce is the nonce the refusal must echo, when readable.
		nonce bool
	}{
		{"garbage", []byte("not json"), protocol.RefusedMalformed, false},
		{"no signature", []byte(`{"v":4}`), protocol.RefusedUnsigned, false},
		{"forged", forged, protocol.RefusedForged, false},
		{"replayed", replayed, protocol.RefusedReplayed, true},
		{"mistargeted", e.seal(t, request(other, protocol.CommandPing, nil, true)), protocol.RefusedMistargeted, true},
		{"expired", e.seal(t, expired), protocol.RefusedExpired, true},
		{"unknown command", e.seal(t, request(id, "shell", nil, true)), protocol.RefusedUnknown, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// An ack would come before the outcome: a refusal first means none.
			replies := e.send(t, id, tt.data, 1, 5*time.Second)
			if len(replies) != 1 {
				t.Fatal("no reply")
			}
			r := replies[0]
			if r.OK || r.State != "" || r.Refused != tt.want || r.Error == "" || r.InstanceID != id || (r.Nonce != "") != tt.nonce {
				t.Errorf("reply %+v, want refused %s", r, tt.want)
			}
			select {
			case ev := <-events:
				if ev.Type != protocol.EventCommandRefused || ev.InstanceID != id || ev.Data["reason"] != string(tt.want) ||
					ev.Data["nonce"] != r.Nonce {
					t.Errorf("event %+v, want command.refused for %s", ev, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Error("no command.refused event")
			}
		})
	}
	st := s.Stats()
	for _, tt := range tests {
		if st.Refused[tt.want] != 1 {
			t.Errorf("Stats().Refused[%s] = %d, want 1", tt.want, st.Refused[tt.want])
		}
	}
}

func TestOfflineAndBack(t *testing.T) {
	e := start(t, 50)
	s := e.sim(t, fleetsim.Options{Offline: 0.1})
	if st := s.Stats(); st.Offline != 5 || st.Connected != 45 || st.Enrolled != 50 {
		t.Fatalf("Stats() = %+v, want 5 offline, 45 connected, 50 enrolled", st)
	}
	ping := func(id string, wait time.Duration) error { return e.ping(t, id, wait) }
	for _, id := range s.IDs(fleetsim.Offline) {
		if err := ping(id, 5*time.Second); !errors.Is(err, broker.ErrNoAgent) {
			t.Errorf("ping %s (offline): %v, want no responders", id, err)
		}
	}

	// A share replaces the last: other agents go offline, the first come back.
	was := s.IDs(fleetsim.Offline)
	if n, err := s.Set(fleetsim.Offline, 0.2); err != nil || n != 10 {
		t.Fatalf("Set(offline, 20%%) = %d, %v, want 10", n, err)
	}
	now := s.IDs(fleetsim.Offline)
	// The server drops a closed connection's interest a moment later: a
	// request sent meanwhile goes unanswered, so poll with short waits.
	for _, id := range now {
		proctest.Until(t, id+" unreachable", func() bool { return errors.Is(ping(id, 100*time.Millisecond), broker.ErrNoAgent) })
	}
	for _, id := range was {
		if !slices.Contains(now, id) {
			t.Errorf("%s was offline and is not in the larger share %v", id, now)
		}
	}

	if err := s.Reset(); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	for _, c := range e.creds {
		if err := ping(c.InstanceID, 5*time.Second); err != nil {
			t.Errorf("ping %s after Reset: %v", c.InstanceID, err)
		}
	}
	if st := s.Stats(); st.Offline != 0 || st.Connected != 50 {
		t.Errorf("Stats() = %+v, want everyone connected", st)
	}
	if got := e.enr.count(); got != 50 {
		t.Errorf("%d enrollments, want 50: back online is not a new enrollment", got)
	}

	if _, err := s.Set(fleetsim.Normal, 0.5); err == nil {
		t.Error("Set(normal, 50%) did not fail")
	}
	if _, err := s.Set(fleetsim.Failing, 0.8); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Set(fleetsim.Silent, 0.3); err == nil {
		t.Error("Set(silent, 30%) with 80% failing did not fail")
	}
	if n, err := s.SetIDs(fleetsim.Offline, e.creds[0].InstanceID, "i-not-here"); err != nil || n != 1 {
		t.Errorf("SetIDs(offline, one of ours, one not) = %d, %v, want 1", n, err)
	}
}

func TestReadCredentials(t *testing.T) {
	tests := []struct {
		name, in string
		want     int // credentials, or -1 for an error
	}{
		{"two", `{"instance_id":"i-a","token":"x"}` + "\n\n" + `{"instance_id":"i-b","token":"y"}`, 2},
		{"unknown field", `{"instance_id":"i-a","token":"x","seed":"S"}`, -1},
		{"bad id", `{"instance_id":"web-1","token":"x"}`, -1},
		{"no token", `{"instance_id":"i-a"}`, -1},
		{"duplicate", `{"instance_id":"i-a","token":"x"}` + "\n" + `{"instance_id":"i-a","token":"y"}`, -1},
		{"not json", `i-a x`, -1},
		{"empty", "\n", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds, err := fleetsim.ReadCredentials(strings.NewReader(tt.in))
			if got := len(creds); (err != nil) != (tt.want < 0) || (err == nil && got != tt.want) {
				t.Errorf("ReadCredentials = %d, %v, want %d", got, err, tt.want)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "agents.jsonl")
	want := []fleetsim.Credential{{InstanceID: "i-a", Token: "x"}, {InstanceID: "i-b", Token: "y"}}
	writeCredentials(t, path, want)
	got, err := fleetsim.LoadCredentials(path)
	if err != nil || len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("LoadCredentials after WriteCredentials = %v, %v, want %v", got, err, want)
	}
}

func writeCredentials(t testing.TB, path string, creds []fleetsim.Credential) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := fleetsim.WriteCredentials(f, creds); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSignedPing measures signed pings, asked with acknowledgement as
// a run asks, through 1000 simulated agents, and what one agent costs the
// simulator.
func BenchmarkSignedPing(b *testing.B) {
	agents := 1000
	if testing.Short() { // make test's smoke run
		agents = 50
	}
	e := start(b, agents)
	before := runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap := ms.HeapAlloc
	e.sim(b, fleetsim.Options{})
	runtime.GC()
	runtime.ReadMemStats(&ms)
	goroutines, heapPerAgent := float64(runtime.NumGoroutine()-before)/float64(agents), float64(ms.HeapAlloc-heap)/float64(agents)
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := e.creds[next.Add(1)%int64(agents)].InstanceID
			// A ping ends at once: its outcome is its only answer, even
			// when a run asks for acknowledgements.
			if r := e.send(b, id, e.seal(b, request(id, protocol.CommandPing, nil, true)), 1, 5*time.Second); len(r) != 1 || !r[0].OK {
				b.Errorf("ping %s: %+v", id, r)
			}
		}
	})
	b.ReportMetric(goroutines, "goroutines/agent") // ResetTimer drops metrics reported before
	b.ReportMetric(heapPerAgent, "heap-bytes/agent")
}
