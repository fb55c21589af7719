package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stackpro/stackpro/agent/internal/link"
	"github.com/stackpro/stackpro/agent/internal/outbox"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// TestDiskProblems: a disk 90 % full or more is a problem, named with its
// mount and how full it is; a disk of unknown size is none.
func TestDiskProblems(t *testing.T) {
	const gib = 1 << 30
	disk := func(mount string, usedGiB, totalGiB uint64) protocol.Disk {
		return protocol.Disk{Mount: mount, TotalBytes: totalGiB * gib, UsedBytes: usedGiB * gib}
	}
	tests := []struct {
		name  string
		disks []protocol.Disk
		want  []string
	}{
		{"89 %", []protocol.Disk{disk("/", 89, 100)}, nil},
		{"a byte short of 90 %", []protocol.Disk{{Mount: "/", TotalBytes: 100 * gib, UsedBytes: 90*gib - 1}}, nil},
		{"90 %", []protocol.Disk{disk("/", 90, 100)}, []string{"disk / is 90% full"}},
		{"95 %", []protocol.Disk{disk("/", 95, 100)}, []string{"disk / is 95% full"}},
		{"full", []protocol.Disk{disk("/", 32, 32)}, []string{"disk / is 100% full"}},
		{"unknown size", []protocol.Disk{{Mount: "/", UsedBytes: gib}}, nil},
		{"one disk of two", []protocol.Disk{disk("/", 10, 20), disk("/data", 950, 1000)}, []string{"disk /data is 95% full"}},
		{"no disks", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := diskProblems(tt.disks); !slices.Equal(got, tt.want) {
				t.Errorf("diskProblems(%+v) = %q, want %q", tt.disks, got, tt.want)
			}
		})
	}
}

// TestFullDiskDegradesHeartbeat: what a metrics sample finds wrong makes
// the heartbeats degraded, naming the problem, and a later sample that
// finds nothing wrong makes them ok again. The control plane's side (a
// degraded heartbeat turns the instance degraded) is fleet's and monitor's.
func TestFullDiskDegradesHeartbeat(t *testing.T) {
	dir := t.TempDir()
	id, err := link.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	ns := runBroker(t, port, filepath.Join(dir, "js"), id.PublicKey())
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect("nats://127.0.0.1:"+strconv.Itoa(port), nats.UserInfo("test", "test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	box, err := outbox.Open(filepath.Join(dir, "outbox.db"), outbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { box.Close() })
	sub, err := nc.SubscribeSync(protocol.AgentSubject(testInstance, protocol.KindHeartbeat))
	if err != nil {
		t.Fatal(err)
	}

	a := &Agent{cfg: Config{Bootstrap: protocol.Bootstrap{InstanceID: testInstance, HeartbeatInterval: 10 * time.Millisecond}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), nc: nc, box: box, problems: make(chan []string, 1)}
	disks := []protocol.Disk{{Mount: "/", TotalBytes: 100, UsedBytes: 40}, {Mount: "/data", TotalBytes: 100, UsedBytes: 95}}
	a.setProblems(diskProblems(disks))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.heartbeats(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("heartbeats = %v, want nil after a cancel", err)
		}
	})

	hb := heartbeatWhere(t, sub, "the first heartbeat", func(protocol.Heartbeat) bool { return true })
	if hb.Health != protocol.HealthDegraded || !slices.Equal(hb.Problems, []string{"disk /data is 95% full"}) {
		t.Errorf("heartbeat with /data 95 %% full: health %q, problems %q; want degraded, the disk named", hb.Health, hb.Problems)
	}
	disks[1].UsedBytes = 89
	a.setProblems(diskProblems(disks))
	heartbeatWhere(t, sub, "an ok heartbeat once /data is 89 % full", func(hb protocol.Heartbeat) bool {
		return hb.Health == protocol.HealthOK && len(hb.Problems) == 0
	})
}

// heartbeatWhere reads heartbeats from sub until one satisfies cond, and
// fails t if none does within proctest.Timeout.
func heartbeatWhere(t *testing.T, sub *nats.Subscription, what string, cond func(protocol.Heartbeat) bool) protocol.Heartbeat {
	t.Helper()
	deadline := time.Now().Add(proctest.Timeout)
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		var hb protocol.Heartbeat
		if err := json.Unmarshal(m.Data, &hb); err != nil {
			t.Fatalf("heartbeat %s: %v", m.Data, err)
		}
		if cond(hb) {
			return hb
		}
	}
}
