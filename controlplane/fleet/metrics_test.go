package fleet_test

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

var sampledAt = time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC)

func sample(at time.Duration, uptime, rx, tx uint64, disks ...protocol.Disk) protocol.Metrics {
	return protocol.Metrics{V: 1, InstanceID: "i-1", At: sampledAt.Add(at), CPUPercent: 40,
		Memory:  protocol.Memory{TotalBytes: 4 << 30, UsedBytes: 1 << 30},
		Disks:   disks,
		Network: protocol.Network{RxBytes: rx, TxBytes: tx}, UptimeSeconds: uptime}
}

func TestPointFrom(t *testing.T) {
	root := protocol.Disk{Mount: "/", TotalBytes: 100, UsedBytes: 10}
	big := protocol.Disk{Mount: "/data", TotalBytes: 1000, UsedBytes: 500}
	small := protocol.Disk{Mount: "/boot", TotalBytes: 50, UsedBytes: 5}
	prev := sample(0, 1000, 1000, 5000)
	tests := []struct {
		name                string
		prev                *protocol.Metrics
		cur                 protocol.Metrics
		rx, tx              float64
		diskUsed, diskTotal uint64
	}{
		{"first sample", nil, sample(30*time.Second, 1030, 4000, 8000, root), 0, 0, 10, 100},
		{"rates over 30 s", &prev, sample(30*time.Second, 1030, 4000, 8000, big, root), 100, 100, 10, 100},
		{"largest disk without root", &prev, sample(30*time.Second, 1030, 4000, 8000, small, big), 100, 100, 500, 1000},
		{"no disks", &prev, sample(30*time.Second, 1030, 1000, 5000), 0, 0, 0, 0},
		{"counter went down", &prev, sample(30*time.Second, 1030, 10, 5300), 0, 10, 0, 0},
		{"rebooted", &prev, sample(30*time.Second, 20, 4000, 8000), 0, 0, 0, 0},
		{"same time", &prev, sample(0, 1030, 4000, 8000), 0, 0, 0, 0},
		{"time went back", &prev, sample(-time.Second, 1030, 4000, 8000), 0, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fleet.PointFrom(tt.prev, tt.cur)
			want := fleet.MetricsPoint{At: tt.cur.At, CPUPercent: 40, CPUMax: 40, MemoryUsed: 1 << 30, MemoryTotal: 4 << 30,
				DiskUsed: tt.diskUsed, DiskTotal: tt.diskTotal, RxBps: tt.rx, TxBps: tt.tx, Samples: 1}
			if got != want {
				t.Errorf("PointFrom = %+v, want %+v", got, want)
			}
		})
	}
}

func TestFold(t *testing.T) {
	at := sampledAt
	a := fleet.MetricsPoint{At: at, CPUPercent: 10, CPUMax: 10, MemoryUsed: 100, MemoryTotal: 1000,
		DiskUsed: 5, DiskTotal: 50, RxBps: 1, TxBps: 2, Samples: 1}
	b := fleet.MetricsPoint{At: at.Add(30 * time.Second), CPUPercent: 40, CPUMax: 40, MemoryUsed: 400, MemoryTotal: 1000,
		DiskUsed: 6, DiskTotal: 50, RxBps: 4, TxBps: 8, Samples: 1}
	tests := []struct {
		name string
		p, q fleet.MetricsPoint
		want fleet.MetricsPoint
	}{
		{"two samples", a, b, fleet.MetricsPoint{At: at, CPUPercent: 25, CPUMax: 40, MemoryUsed: 250, MemoryTotal: 1000,
			DiskUsed: 6, DiskTotal: 50, RxBps: 2.5, TxBps: 5, Samples: 2}},
		{"weighted by samples", func() fleet.MetricsPoint { p := b; p.Samples = 3; return p }(), a,
			fleet.MetricsPoint{At: b.At, CPUPercent: 32.5, CPUMax: 40, MemoryUsed: 325, MemoryTotal: 1000,
				DiskUsed: 6, DiskTotal: 50, RxBps: 3.25, TxBps: 6.5, Samples: 4}},
		{"into an empty span", fleet.MetricsPoint{At: at.Truncate(time.Hour)}, b,
			func() fleet.MetricsPoint { p := b; p.At = at.Truncate(time.Hour); return p }()},
		{"nothing to fold", a, fleet.MetricsPoint{At: at.Add(time.Minute)}, a},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.p
			got.Fold(tt.q)
			if got != tt.want {
				t.Errorf("Fold:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestFoldHugeMemory(t *testing.T) {
	// Weighted sums of large byte counts would overflow 64 bits.
	p := fleet.MetricsPoint{MemoryUsed: math.MaxUint64 - 1, Samples: 1 << 20}
	p.Fold(fleet.MetricsPoint{MemoryUsed: math.MaxUint64 - 3, Samples: 1 << 20})
	if p.MemoryUsed != math.MaxUint64-2 {
		t.Errorf("MemoryUsed = %d, want %d", p.MemoryUsed, uint64(math.MaxUint64-2))
	}
}

func TestDownsample(t *testing.T) {
	points := make([]fleet.MetricsPoint, 10)
	for i := range points {
		points[i] = fleet.MetricsPoint{At: sampledAt.Add(time.Duration(i) * time.Minute), CPUPercent: float64(i),
			CPUMax: float64(i), Samples: 1}
	}
	tests := []struct {
		limit   int
		wantAt  []int // minutes of each point
		wantCPU []float64
	}{
		{0, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{10, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{5, []int{0, 2, 4, 6, 8}, []float64{0.5, 2.5, 4.5, 6.5, 8.5}},
		{4, []int{0, 3, 6, 9}, []float64{1, 4, 7, 9}},
		{1, []int{0}, []float64{4.5}},
	}
	for _, tt := range tests {
		got := fleet.Downsample(points, tt.limit)
		if len(got) != len(tt.wantAt) {
			t.Fatalf("Downsample(10 points, %d) has %d points, want %d", tt.limit, len(got), len(tt.wantAt))
		}
		samples := 0
		for i, p := range got {
			if p.At != sampledAt.Add(time.Duration(tt.wantAt[i])*time.Minute) || p.CPUPercent != tt.wantCPU[i] {
				t.Errorf("Downsample(10 points, %d)[%d] = at %v cpu %v, want minute %d cpu %v",
					tt.limit, i, p.At, p.CPUPercent, tt.wantAt[i], tt.wantCPU[i])
			}
			samples += p.Samples
		}
		if samples != 10 {
			t.Errorf("Downsample(10 points, %d) stands for %d samples, want 10", tt.limit, samples)
		}
	}
}

func TestMetricsHistoryJSON(t *testing.T) {
	h := fleet.MetricsHistory{InstanceID: "i-1", Resolution: fleet.ResolutionRaw, Points: []fleet.MetricsPoint{}}
	data, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"points":[]`) {
		t.Errorf("empty history = %s, want points []", data)
	}
	data, _ = json.Marshal(fleet.MetricsPoint{})
	for _, field := range []string{"at", "cpu_percent", "cpu_max", "memory_used", "memory_total", "disk_used", "disk_total", "rx_bps", "tx_bps", "samples"} {
		if !strings.Contains(string(data), `"`+field+`":`) {
			t.Errorf("MetricsPoint JSON %s lacks %q", data, field)
		}
	}
}
