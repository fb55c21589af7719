package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// writeBootstrap writes content as a bootstrap file in a fresh temp dir.
func writeBootstrap(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bootstrap.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("os.WriteFile: %v", err)
	}
	return path
}

// wantErrMentions fails unless err mentions every one of want.
func wantErrMentions(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want an error mentioning %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("err = %q, want it to mention %q", err, w)
		}
	}
}

const minimalBootstrap = `
instance_id: i-0abc123
nats_url: nats://127.0.0.1:4222
enrollment_token: tok-123
`

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		content string
		environ []string
		want    protocol.Bootstrap
	}{
		{
			name:    "defaults fill what the file leaves out",
			content: minimalBootstrap,
			want: protocol.Bootstrap{InstanceID: "i-0abc123", NATSURL: "nats://127.0.0.1:4222",
				EnrollmentToken: "tok-123", StateDir: "/var/lib/stackpro",
				HeartbeatInterval: 10 * time.Second, MetricsInterval: 30 * time.Second, HealthTimeout: 2 * time.Minute, LogLevel: "info"},
		},
		{
			name: "the file overrides defaults",
			content: minimalBootstrap + `
state_dir: /tmp/agent
heartbeat_interval: 2s
metrics_interval: 1m
log_level: debug
`,
			want: protocol.Bootstrap{InstanceID: "i-0abc123", NATSURL: "nats://127.0.0.1:4222",
				EnrollmentToken: "tok-123", StateDir: "/tmp/agent",
				HeartbeatInterval: 2 * time.Second, MetricsInterval: time.Minute, HealthTimeout: 2 * time.Minute, LogLevel: "debug"},
		},
		{
			name:    "the environment overrides the file",
			content: minimalBootstrap + "log_level: debug\n",
			environ: []string{
				"HOME=/root",
				"STACKPRO_HTTP_ADDR=ignored:1", // the control plane's, not ours
				"STACKPRO_AGENT_INSTANCE_ID=i-from-env",
				"STACKPRO_AGENT_NATS_URL=tls://nats.example.com:4222",
				"STACKPRO_AGENT_ENROLLMENT_TOKEN=tok-env",
				"STACKPRO_AGENT_STATE_DIR=/srv/agent",
				"STACKPRO_AGENT_LOG_LEVEL=warn",
				"STACKPRO_AGENT_HEARTBEAT_INTERVAL=5s",
				"STACKPRO_AGENT_METRICS_INTERVAL=15s",
			},
			want: protocol.Bootstrap{InstanceID: "i-from-env", NATSURL: "tls://nats.example.com:4222",
				EnrollmentToken: "tok-env", StateDir: "/srv/agent",
				HeartbeatInterval: 5 * time.Second, MetricsInterval: 15 * time.Second, HealthTimeout: 2 * time.Minute, LogLevel: "warn"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadConfig(writeBootstrap(t, tt.content), tt.environ)
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			if got.Bootstrap != tt.want {
				t.Errorf("LoadConfig:\n got %+v\nwant %+v", got.Bootstrap, tt.want)
			}
		})
	}
}

func TestLoadConfigWithoutFile(t *testing.T) {
	got, err := LoadConfig("", []string{
		"STACKPRO_AGENT_INSTANCE_ID=i-envonly",
		"STACKPRO_AGENT_NATS_URL=nats://10.0.0.1:4222",
	})
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if got.InstanceID != "i-envonly" || got.StateDir != "/var/lib/stackpro" {
		t.Errorf("LoadConfig = %+v, want i-envonly with the default state dir", got.Bootstrap)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		environ []string
		want    []string // each must appear in the error
	}{
		{
			name:    "unknown key",
			content: minimalBootstrap + "heartbeat_intervall: 5s\n",
			want:    []string{"heartbeat_intervall"},
		},
		{
			name:    "malformed",
			content: "instance_id: [i-1\n",
			want:    []string{"line 1"},
		},
		{
			name:    "unknown environment variable",
			content: minimalBootstrap,
			environ: []string{"STACKPRO_AGENT_X=1"},
			want:    []string{"unknown environment variable STACKPRO_AGENT_X"},
		},
		{
			name:    "every environment problem at once",
			content: minimalBootstrap,
			environ: []string{"STACKPRO_AGENT_X=1", "STACKPRO_AGENT_HEARTBEAT_INTERVAL=often"},
			want: []string{
				"unknown environment variable STACKPRO_AGENT_X",
				`STACKPRO_AGENT_HEARTBEAT_INTERVAL: want a duration such as 10s, got "often"`,
			},
		},
		{
			name: "every validation problem at once",
			content: `
instance_id: Not-An-ID
heartbeat_interval: -1s
metrics_interval: 0s
log_level: loud
state_dir: ""
`,
			want: []string{
				`instance_id: invalid instance id "Not-An-ID"`,
				"nats_url is required",
				"state_dir is required",
				"heartbeat_interval must be positive, got -1s",
				"metrics_interval must be positive, got 0s",
				`log_level must be debug, info, warn or error, got "loud"`,
			},
		},
		{
			name:    "a command key that is not one",
			content: minimalBootstrap + "command_key: bm90IGEga2V5\n",
			want:    []string{"command_key: protocol: command key is not a base64 Ed25519 public key"},
		},
		{
			name:    "missing instance id",
			content: "nats_url: nats://127.0.0.1:4222\n",
			want:    []string{`instance_id: invalid instance id ""`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(writeBootstrap(t, tt.content), tt.environ)
			wantErrMentions(t, err, tt.want...)
		})
	}
}

func TestLoadConfigCommandKey(t *testing.T) {
	const key = "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
	const other = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
	got, err := LoadConfig(writeBootstrap(t, minimalBootstrap+"command_key: "+key+"\n"), nil)
	if err != nil || got.CommandKey != key {
		t.Errorf("LoadConfig = %q, %v; want the file's command key", got.CommandKey, err)
	}
	got, err = LoadConfig(writeBootstrap(t, minimalBootstrap+"command_key: "+key+"\n"),
		[]string{"STACKPRO_AGENT_COMMAND_KEY=" + other})
	if err != nil || got.CommandKey != other {
		t.Errorf("LoadConfig = %q, %v; want the environment's command key", got.CommandKey, err)
	}
	got, err = LoadConfig(writeBootstrap(t, minimalBootstrap), nil)
	if err != nil || got.CommandKey != "" {
		t.Errorf("LoadConfig = %q, %v; want no command key", got.CommandKey, err)
	}
}

func TestLoadConfigInvalidInstanceIDIsSentinel(t *testing.T) {
	_, err := LoadConfig(writeBootstrap(t, "instance_id: bad\nnats_url: nats://x:1\n"), nil)
	if !errors.Is(err, protocol.ErrInvalidInstanceID) {
		t.Errorf("LoadConfig = %v, want protocol.ErrInvalidInstanceID", err)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := LoadConfig(filepath.Join(t.TempDir(), "nope.yaml"), nil)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadConfig of a missing file = %v, want fs.ErrNotExist", err)
	}
}
