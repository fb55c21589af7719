package protocol_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

var update = flag.Bool("update", false, "rewrite the golden files from the samples")

var at = time.Date(2026, 11, 24, 15, 4, 5, 0, time.UTC)

// samples holds one filled-in value of every message, named after its golden file.
var samples = map[string]any{
	"enroll_request.json": &protocol.EnrollRequest{V: protocol.Version, InstanceID: "i-0123456789abcdef",
		Token: "4f3c2b1a", PublicKey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4",
		Hostname: "ip-10-0-0-12", AgentVersion: "v0.1.0"},
	"enroll_reply_ok.json": &protocol.EnrollReply{V: protocol.Version, OK: true, InstanceID: "i-0123456789abcdef",
		CommandKey: protocol.FormatCommandKey(sampleKey.Public().(ed25519.PublicKey))},
	"enroll_reply_refused.json": &protocol.EnrollReply{V: protocol.Version, Code: protocol.EnrollRefused,
		Error: "enrollment refused"},
	"heartbeat.json": &protocol.Heartbeat{V: protocol.Version, InstanceID: "i-0123456789abcdef", Seq: 42, At: at,
		AgentVersion: "v0.1.0", Health: protocol.HealthDegraded, Problems: []string{"disk / is 93% full"},
		Outbox: protocol.OutboxStats{Pending: 3, DroppedMetrics: 1, DroppedEvents: 2},
		Stack: &protocol.StackStatus{AppliedVersion: 3, FailedVersion: 4, FailedReason: "files is running unhealthy",
			ComposeTool: "docker-compose",
			Services: []protocol.ServiceState{
				{Service: "crm", State: "running", Health: "healthy", RestartCount: 1, StartedAt: at},
				{Service: "files", State: "exited"}}}},
	"metrics.json": &protocol.Metrics{V: protocol.Version, InstanceID: "i-0123456789abcdef", At: at,
		CPUPercent: 12.5, Load: protocol.Load{One: 0.5, Five: 0.25, Fifteen: 0.125},
		Memory:  protocol.Memory{TotalBytes: 4 << 30, UsedBytes: 1 << 30, AvailableBytes: 3 << 30},
		Disks:   []protocol.Disk{{Mount: "/", FSType: "ext4", TotalBytes: 32 << 30, UsedBytes: 8 << 30, FreeBytes: 22 << 30}},
		Network: protocol.Network{RxBytes: 123456, TxBytes: 654321}, UptimeSeconds: 86400},
	"event.json": &protocol.Event{V: protocol.Version, ID: "evt-01", InstanceID: "i-0123456789abcdef", At: at,
		Type: protocol.EventAgentStarted, Severity: protocol.SeverityInfo, Message: "agent v0.1.0 started",
		Data: map[string]string{"version": "v0.1.0"}},
	"event_target_refused.json": &protocol.Event{V: protocol.Version, ID: "evt-02", InstanceID: "i-0123456789abcdef",
		At: at, Type: protocol.EventTargetRefused, Severity: protocol.SeverityError,
		Message: "target refused (stale): version 2 is older than version 5, the newest seen",
		Data:    map[string]string{"reason": string(protocol.RefusedStale), "version": "2", "newest": "5"}},
	"command_request.json": &sampleRequest,
	"signed_command.json":  sampleSigned(),
	"target.json": &protocol.Target{V: protocol.Version, InstanceID: "i-0123456789abcdef", Version: 3,
		Compose: "services:\n  crm:\n    image: stackpro/crm:1\n", Env: map[string]string{"SUBDOMAIN": "acme"},
		Files: map[string]string{"config/crm.yaml": "title: Acme\n"}},
	"command_reply.json": &protocol.CommandReply{V: protocol.Version, ID: "cmd-01", InstanceID: "i-0123456789abcdef",
		Nonce: "bm9uY2Utb25l", OK: true, Result: json.RawMessage(`{"pong":true}`)},
	"command_reply_running.json": &protocol.CommandReply{V: protocol.Version, ID: "cmd-01",
		InstanceID: "i-0123456789abcdef", Nonce: "bm9uY2Utb25l", State: "running"},
	"command_reply_refused.json": &protocol.CommandReply{V: protocol.Version, ID: "cmd-01",
		InstanceID: "i-0123456789abcdef", Nonce: "bm9uY2Utb25l", Refused: protocol.RefusedReplayed,
		Error: "command refused (replayed): nonce already seen"},
}

// payloads are the results commands answer with inside a CommandReply:
// they travel in a versioned message, so they carry no version of their own.
var payloads = map[string]any{
	"stack_status.json": &protocol.StackStatus{AppliedVersion: 3, FailedVersion: 4,
		FailedReason: "files is running unhealthy", ComposeTool: "docker compose",
		Services: []protocol.ServiceState{
			{Service: "crm", State: "running", Health: "healthy", RestartCount: 1, StartedAt: at},
			{Service: "files", State: "exited"}}},
	"result_reply.json": &protocol.ResultReply{Known: true, Reply: &protocol.CommandReply{V: protocol.Version,
		ID: "cmd-01", InstanceID: "i-0123456789abcdef", Nonce: "bm9uY2Utb25l", OK: true,
		Result: json.RawMessage(`{"done":true}`)}},
	"facts.json": &protocol.Facts{InstanceID: "i-0123456789abcdef", Hostname: "ip-10-0-0-12",
		AgentVersion: "v0.1.0", AgentCommit: "f9a2f0d", Protocol: protocol.Version, OS: "linux", Arch: "arm64",
		CPUs: 2, MemoryBytes: 4 << 30, BootedAt: at.Add(-24 * time.Hour), AgentStarted: at.Add(-time.Hour),
		ComposeTool: "docker compose", StackVersion: 3, StackServices: []string{"crm", "files"},
		CommandsRun: map[string]uint64{protocol.CommandPing: 12, protocol.CommandStackRestart: 1}},
}

// sampleKey signs the golden SignedCommand. Ed25519 signatures are
// deterministic, so the file does not change from run to run.
var sampleKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

var sampleRequest = protocol.CommandRequest{V: protocol.Version, ID: "cmd-01", Name: protocol.CommandStackRestart,
	Args: json.RawMessage(`{"service":"crm"}`), Target: "i-0123456789abcdef", Nonce: "bm9uY2Utb25l",
	IssuedAt: at, Expires: at.Add(time.Minute), Run: "run-01", Ack: true}

func sampleSigned() *protocol.SignedCommand {
	data, err := protocol.Seal(sampleKey, sampleRequest)
	if err != nil {
		panic(err)
	}
	var sc protocol.SignedCommand
	if err := json.Unmarshal(data, &sc); err != nil {
		panic(err)
	}
	return &sc
}

// TestGolden checks every message both ways: the sample encodes to its golden
// file, and the golden file decodes to the sample.
func TestGolden(t *testing.T) {
	for name, sample := range all() {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", name)
			got, err := json.MarshalIndent(sample, "", "  ")
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			got = append(got, '\n')
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("reading golden file (run go test -update once): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("encoding changed:\n got: %s\nwant: %s", got, want)
			}
			decoded := reflect.New(reflect.TypeOf(sample).Elem()).Interface()
			dec := json.NewDecoder(bytes.NewReader(want))
			dec.DisallowUnknownFields()
			if err := dec.Decode(decoded); err != nil {
				t.Fatalf("decode golden: %v", err)
			}
			// Raw JSON fields keep the golden file's indentation, so the two
			// sides are compared in compact form.
			gotCompact, _ := json.Marshal(decoded)
			wantCompact, _ := json.Marshal(sample)
			if !bytes.Equal(gotCompact, wantCompact) {
				t.Errorf("decoded golden = %s, want %s", gotCompact, wantCompact)
			}
		})
	}
}

func all() map[string]any {
	m := maps.Clone(samples)
	maps.Copy(m, payloads)
	return m
}

func TestEveryMessageHasAVersion(t *testing.T) {
	for name, sample := range samples {
		if v := reflect.ValueOf(sample).Elem().FieldByName("V"); !v.IsValid() || v.Int() != protocol.Version {
			t.Errorf("%s: V = %v, want protocol.Version", name, v)
		}
	}
}

func TestSubjects(t *testing.T) {
	id := "i-0123456789abcdef"
	tests := []struct{ got, want string }{
		{protocol.AgentSubject(id, protocol.KindHeartbeat), "stackpro.agent.i-0123456789abcdef.heartbeat"},
		{protocol.AgentSubjects(id), "stackpro.agent.i-0123456789abcdef.>"},
		{protocol.AgentWildcard(protocol.KindEvent), "stackpro.agent.*.event"},
		{protocol.CommandSubject(id), "stackpro.cmd.i-0123456789abcdef"},
		{protocol.ReplySubject(id, "run.r1"), "stackpro.agent.i-0123456789abcdef.reply.run.r1"},
		{protocol.ReplyWildcard("run"), "stackpro.agent.*.reply.run.>"},
		{protocol.InboxPrefix(id), "_INBOX.i-0123456789abcdef"},
		{protocol.TargetSubject(id), "$KV.targets.i-0123456789abcdef"},
		{protocol.TargetGetSubject(id), "$JS.API.DIRECT.GET.KV_targets.$KV.targets.i-0123456789abcdef"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestInstanceFromSubject(t *testing.T) {
	tests := []struct {
		subject string
		want    string
		ok      bool
	}{
		{"stackpro.agent.i-abc.heartbeat", "i-abc", true},
		{"stackpro.agent.i-abc.event", "i-abc", true},
		{"stackpro.agent.i-abc", "", false},
		{"stackpro.agent.*.event", "", false},
		{"stackpro.cmd.i-abc", "", false},
		{"other.agent.i-abc.event", "", false},
	}
	for _, tt := range tests {
		got, ok := protocol.InstanceFromSubject(tt.subject)
		if got != tt.want || ok != tt.ok {
			t.Errorf("InstanceFromSubject(%q) = %q, %v; want %q, %v", tt.subject, got, ok, tt.want, tt.ok)
		}
	}
}

func TestValidInstanceID(t *testing.T) {
	for _, id := range []string{"i-0123456789abcdef", "i-a", "i-local-1"} {
		if err := protocol.ValidInstanceID(id); err != nil {
			t.Errorf("ValidInstanceID(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range []string{"", "i-", "enroll", "a", "i-A", "i-a.b", "i-a*", "i->", "i-a b", "i-" + strings.Repeat("a", 62)} {
		if err := protocol.ValidInstanceID(id); err == nil {
			t.Errorf("ValidInstanceID(%q) = nil, want an error", id)
		}
	}
}
