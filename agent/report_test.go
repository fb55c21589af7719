package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/agent/internal/link"
	"github.com/stackpro/stackpro/agent/internal/nonces"
	"github.com/stackpro/stackpro/agent/internal/outbox"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/buildinfo"
	"github.com/stackpro/stackpro/shared/protocol"
)

const testInstance = "i-0123456789abcdef"

// runBroker starts a real nats-server with JetStream on port, letting in
// only the given agent key, the enrollment user and a plain user for the
// test itself.
func runBroker(t *testing.T, port int, storeDir, agentKey string) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: storeDir,
		Nkeys: []*server.NkeyUser{{Nkey: agentKey}},
		Users: []*server.User{{Username: "test", Password: "test"}, {Username: protocol.EnrollUser}}})
	if err != nil {
		t.Fatalf("server.NewServer: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats: not ready after 10s")
	}
	return ns
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestOutboxSurvivesBrokerOutage: while the broker is down the agent keeps
// producing events and metrics; after it is back, every event and every
// sample is in its stream exactly once and in the order it was produced.
func TestOutboxSurvivesBrokerOutage(t *testing.T) {
	dir := t.TempDir()
	port, storeDir := freePort(t), filepath.Join(dir, "js")
	id, err := link.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	ns := runBroker(t, port, storeDir, id.PublicKey())
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	admin, err := nats.Connect(url, nats.UserInfo("test", "test"), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, samples := createStreams(ctx, t, admin)

	rep, box, nc := newTestReporter(t, dir, url, id, outbox.Options{})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- rep.Run(runCtx) }()
	defer func() { stop(); <-done }()

	emit := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			rep.Emit("test.tick", protocol.SeverityInfo, strconv.Itoa(i), nil)
			if err := rep.Metrics(protocol.Metrics{V: protocol.Version, InstanceID: testInstance, UptimeSeconds: uint64(i)}); err != nil {
				t.Fatalf("Metrics %d: %v", i, err)
			}
		}
	}
	emit(0, 10)
	proctest.Until(t, "10 events and 10 samples stored", func() bool {
		return streamMsgs(ctx, stream) == 10 && streamMsgs(ctx, samples) == 10
	})

	ns.Shutdown()
	ns.WaitForShutdown()
	proctest.Until(t, "the agent to see the link down", func() bool { return !nc.IsConnected() })
	emit(10, 60) // produced while the broker is down
	if st := box.Stats(); st.Pending != 100 {
		t.Errorf("spooled %d entries during the outage, want 50 events and 50 samples", st.Pending)
	}

	ns = runBroker(t, port, storeDir, id.PublicKey())
	defer ns.Shutdown()
	emit(60, 70)
	proctest.Until(t, "70 events and 70 samples stored", func() bool {
		return streamMsgs(ctx, stream) >= 70 && streamMsgs(ctx, samples) >= 70
	})

	events := readAll(ctx, t, stream, func(ev protocol.Event) string { return ev.Message })
	metrics := readAll(ctx, t, samples, func(m protocol.Metrics) string { return strconv.FormatUint(m.UptimeSeconds, 10) })
	for what, got := range map[string][]string{"event": events, "sample": metrics} {
		if len(got) != 70 {
			t.Fatalf("the stream holds %d of each %s, want 70 (each once)", len(got), what)
		}
		for i, msg := range got {
			if msg != strconv.Itoa(i) {
				t.Fatalf("%s %d is %q, want %q: order or uniqueness broken\nall: %v", what, i, msg, strconv.Itoa(i), got)
			}
		}
	}
	if st := box.Stats(); st.Pending != 0 {
		t.Errorf("%d entries still spooled after the flush", st.Pending)
	}
}

// Events the outbox refuses at its hard cap during an outage are counted
// and, once there is room, reported to the control plane by one event.
func TestDroppedEventsReported(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	id, err := link.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	// A hard cap of 8; no broker yet: 8 events spooled, 2 refused.
	rep, box, _ := newTestReporter(t, dir, url, id, outbox.Options{MaxEntries: 2})
	for i := range 10 {
		rep.Emit("test.tick", protocol.SeverityInfo, strconv.Itoa(i), nil)
	}
	if st := box.Stats(); st.Pending != 8 || st.UnreportedEvents != 2 {
		t.Fatalf("outbox %+v, want 8 pending and 2 events dropped, unreported", st)
	}

	ns := runBroker(t, port, filepath.Join(dir, "js"), id.PublicKey())
	defer ns.Shutdown()
	admin, err := nats.Connect(url, nats.UserInfo("test", "test"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, _ := createStreams(ctx, t, admin)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- rep.Run(runCtx) }()
	defer func() { stop(); <-done }()
	proctest.Until(t, "9 events stored", func() bool { return streamMsgs(ctx, stream) >= 9 })
	got := readAll(ctx, t, stream, func(ev protocol.Event) string { return ev.Type + " " + ev.Data["dropped"] })
	want := []string{"test.tick ", "test.tick ", "test.tick ", "test.tick ", "test.tick ", "test.tick ", "test.tick ", "test.tick ",
		protocol.EventEventsDropped + " 2"}
	if !slices.Equal(got, want) {
		t.Errorf("stored %q, want %q", got, want)
	}
	if st := box.Stats(); st.UnreportedEvents != 0 || st.DroppedEvents != 2 {
		t.Errorf("outbox %+v after the report, want 2 dropped, none unreported", st)
	}
}

// newTestReporter is a reporter of the agent of id, spooling in dir with
// opts, on a link to url that reconnects forever; the test closes them.
func newTestReporter(t *testing.T, dir, url string, id *link.Identity, opts outbox.Options) (*reporter, *outbox.Outbox, *nats.Conn) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	box, err := outbox.Open(filepath.Join(dir, "outbox.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { box.Close() })
	nc, err := link.Connect(link.Options{URL: url, InstanceID: testInstance, Log: log}, id, link.Handlers{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	rep, err := newReporter(testInstance, nc, box, log)
	if err != nil {
		t.Fatal(err)
	}
	return rep, box, nc
}

// createStreams makes the events and metrics streams, as the control
// plane's broker does, and returns them.
func createStreams(ctx context.Context, t *testing.T, nc *nats.Conn) (events, metrics jetstream.Stream) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for name, kind := range map[string]string{protocol.EventsStream: protocol.KindEvent, protocol.MetricsStream: protocol.KindMetrics} {
		s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{protocol.AgentWildcard(kind)},
			Storage: jetstream.FileStorage})
		if err != nil {
			t.Fatal(err)
		}
		if kind == protocol.KindEvent {
			events = s
		} else {
			metrics = s
		}
	}
	return events, metrics
}

// readAll reads every message of s, in order, as T, and returns what key
// says of each.
func readAll[T any](ctx context.Context, t *testing.T, s jetstream.Stream, key func(T) string) []string {
	t.Helper()
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for m := range batch.Messages() {
		var v T
		if err := json.Unmarshal(m.Data(), &v); err != nil {
			t.Fatal(err)
		}
		got = append(got, key(v))
	}
	return got
}

func streamMsgs(ctx context.Context, s jetstream.Stream) uint64 {
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

// TestCommands runs each command of the catalog that needs no engine, on
// an agent without one, and reads what it answers.
func TestCommands(t *testing.T) {
	seen, err := nonces.Open(filepath.Join(t.TempDir(), "nonces.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer seen.Close()
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	const noEngine = "docker engine not available"
	started := time.Now().Add(-90 * time.Second)
	a := &Agent{cfg: Config{Bootstrap: protocol.Bootstrap{InstanceID: testInstance}}, started: started, nonces: seen,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), stackErr: noEngine}

	var asked time.Time // when the command being checked was run

	// decode reads a result into v, which names every field it may have.
	decode := func(t *testing.T, result json.RawMessage, v any) {
		t.Helper()
		dec := json.NewDecoder(strings.NewReader(string(result)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			t.Fatalf("result %s: %v", result, err)
		}
	}
	tests := []struct {
		name, command, args string
		// check reads the result of a command that succeeds; wantErr is
		// what the error of one that fails must say.
		check   func(t *testing.T, result json.RawMessage)
		wantErr string
	}{
		{name: "ping", command: protocol.CommandPing, check: func(t *testing.T, result json.RawMessage) {
			var pong struct {
				Pong bool      `json:"pong"`
				At   time.Time `json:"at"`
			}
			decode(t, result, &pong)
			if !pong.Pong || pong.At.Before(asked) || pong.At.After(time.Now()) {
				t.Errorf("ping = %s, want pong at the time of asking", result)
			}
		}},
		{name: "stack status without an engine", command: protocol.CommandStackStatus, check: func(t *testing.T, result json.RawMessage) {
			var st protocol.StackStatus
			decode(t, result, &st)
			if st.Error != noEngine || st.AppliedVersion != 0 || st.FailedVersion != 0 || st.FailedReason != "" ||
				len(st.Services) != 0 || st.ComposeTool != "" {
				t.Errorf("stack.status = %s, want only the error %q", result, noEngine)
			}
		}},
		{name: "stack command without an engine", command: protocol.CommandStackRestart, args: `{"service":"crm"}`, wantErr: noEngine},
		{name: "malformed arguments", command: protocol.CommandStackRestart, args: `{"service":1}`, wantErr: "malformed arguments"},
		{name: "version", command: protocol.CommandVersion, check: func(t *testing.T, result json.RawMessage) {
			var v struct {
				Version  string `json:"version"`
				Commit   string `json:"commit"`
				Protocol int    `json:"protocol"`
				Uptime   int    `json:"uptime_seconds"`
			}
			decode(t, result, &v)
			if v.Version != buildinfo.Version || v.Commit != buildinfo.Commit || v.Protocol != protocol.Version ||
				v.Uptime < 90 || v.Uptime > int(time.Since(started).Seconds()) {
				t.Errorf("agent.version = %s, want %s (%s), protocol %d, up 90s", result, buildinfo.Version, buildinfo.Commit, protocol.Version)
			}
		}},
		{name: "facts", command: protocol.CommandFacts, check: func(t *testing.T, result json.RawMessage) {
			var f protocol.Facts
			decode(t, result, &f)
			if f.InstanceID != testInstance || f.Hostname != hostname || f.AgentVersion != buildinfo.Version ||
				f.AgentCommit != buildinfo.Commit || f.Protocol != protocol.Version || f.OS != runtime.GOOS ||
				f.Arch != runtime.GOARCH || f.CPUs != runtime.NumCPU() || !f.AgentStarted.Equal(started) {
				t.Errorf("facts = %s, want this agent on this host", result)
			}
			if f.ComposeTool != "" || f.StackVersion != 0 || len(f.StackServices) != 0 {
				t.Errorf("facts = %s, want no stack without an engine", result)
			}
			if _, err := os.Stat("/proc/meminfo"); err == nil &&
				(f.MemoryBytes == 0 || f.BootedAt.IsZero() || f.BootedAt.After(started)) {
				t.Errorf("facts = %s, want the memory and boot time /proc tells", result)
			}
		}},
		{name: "result of a nonce never received", command: protocol.CommandResult, args: `{"nonce":"n-never-sent"}`,
			check: func(t *testing.T, result json.RawMessage) {
				var r protocol.ResultReply
				decode(t, result, &r)
				if r.Known || r.Reply != nil {
					t.Errorf("command.result = %s, want unknown", result)
				}
			}},
		{name: "result without a nonce", command: protocol.CommandResult, wantErr: "needs the nonce"},
		{name: "not in the catalog", command: "shell", wantErr: `unknown command "shell"`},
		{name: "empty", command: "", wantErr: `unknown command ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := protocol.CommandRequest{V: protocol.Version, ID: "c1", Name: tt.command}
			if tt.args != "" {
				req.Args = json.RawMessage(tt.args)
			}
			asked = time.Now()
			result, err := a.run(context.Background(), req)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("run(%q) = %s, %v; want an error saying %q", tt.command, result, err, tt.wantErr)
				}
			case err != nil:
				t.Errorf("run(%q): %v", tt.command, err)
			default:
				tt.check(t, result)
			}
		})
	}
}
