package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/agent/internal/link"
	"github.com/stackpro/stackpro/agent/internal/outbox"
	"github.com/stackpro/stackpro/internal/poll"
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
// producing events; after it is back, every event is in the stream exactly
// once and in the order it was produced.
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
	js, _ := jetstream.New(admin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: protocol.EventsStream,
		Subjects: []string{protocol.AgentWildcard(protocol.KindEvent)}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	box, err := outbox.Open(filepath.Join(dir, "outbox.db"), outbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer box.Close()
	nc, err := link.Connect(link.Options{URL: url, InstanceID: testInstance, Log: log}, id, link.Handlers{})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rep, err := newReporter(testInstance, nc, box, log)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- rep.Run(runCtx) }()
	defer func() { stop(); <-done }()

	emit := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if err := rep.Emit("test.tick", protocol.SeverityInfo, strconv.Itoa(i), nil); err != nil {
				t.Fatalf("Emit %d: %v", i, err)
			}
		}
	}
	emit(0, 10)
	poll.Until(t, "10 events in the stream", func() bool { return streamMsgs(ctx, stream) == 10 })

	ns.Shutdown()
	ns.WaitForShutdown()
	poll.Until(t, "the agent to see the link down", func() bool { return !nc.IsConnected() })
	emit(10, 60) // produced while the broker is down
	if pending, _ := box.Stats(); pending != 50 {
		t.Errorf("spooled %d events during the outage, want 50", pending)
	}

	ns = runBroker(t, port, storeDir, id.PublicKey())
	defer ns.Shutdown()
	emit(60, 70)
	poll.Until(t, "70 events in the stream", func() bool { return streamMsgs(ctx, stream) >= 70 })

	var got []string
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(100, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		var ev protocol.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Message)
	}
	if len(got) != 70 {
		t.Fatalf("stream holds %d events, want 70 (each once)", len(got))
	}
	for i, msg := range got {
		if msg != strconv.Itoa(i) {
			t.Fatalf("event %d is %q, want %q: order or uniqueness broken\nall: %v", i, msg, strconv.Itoa(i), got)
		}
	}
	if pending, _ := box.Stats(); pending != 0 {
		t.Errorf("%d entries still spooled after the flush", pending)
	}
}

func streamMsgs(ctx context.Context, s jetstream.Stream) uint64 {
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

func TestCommands(t *testing.T) {
	a := &Agent{cfg: Config{Bootstrap: protocol.Bootstrap{InstanceID: testInstance}}, started: time.Now(),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), stackErr: "docker engine not available"}
	tests := []struct {
		name, command string
		ok            bool
	}{
		{"ping", protocol.CommandPing, true},
		{"stack status without an engine", protocol.CommandStackStatus, true},
		{"stack command without an engine", protocol.CommandStackRestart, false},
		{"version", protocol.CommandVersion, true},
		{"facts", protocol.CommandFacts, true},
		{"result without a nonce", protocol.CommandResult, false},
		{"not in the catalog", "shell", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			result, err := a.run(context.Background(), protocol.CommandRequest{V: protocol.Version, ID: "c1", Name: tt.command})
			if (err == nil) != tt.ok {
				t.Fatalf("run(%q) error = %v, want ok=%v", tt.command, err, tt.ok)
			}
			if tt.ok && !json.Valid(result) {
				t.Errorf("run(%q) result %q is not JSON", tt.command, result)
			}
		})
	}
}
