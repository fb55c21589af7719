package telemetry

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// procFiles is a small host: 2 GiB of memory, two disks, one network card.
var procFiles = map[string]string{
	"stat":    "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n",
	"meminfo": "MemTotal:        2097152 kB\nMemFree:          524288 kB\nMemAvailable:    1048576 kB\n",
	"loadavg": "0.50 0.25 0.12 1/102 3600\n",
	"uptime":  "86400.42 170000.00\n",
	"net/dev": netDevHeader +
		"    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0\n" +
		"  eth0:  123456    5092    0    0    0     0          0         0   654321    3275    0    0    0     0       0          0\n",
	"self/mounts": "proc /proc proc rw 0 0\n/dev/vda / ext4 rw 0 0\n/dev/vda /var/lib/docker ext4 rw 0 0\n/dev/vdb /srv\\040data xfs rw 0 0\n",
}

// sizes are what the fake statfs reports: total, free, avail, in bytes.
var sizes = map[string][3]uint64{
	"/":         {32 << 30, 24 << 30, 22 << 30},
	"/srv data": {8 << 30, 8 << 30, 8 << 30},
}

var wantDisks = []protocol.Disk{
	{Mount: "/", FSType: "ext4", TotalBytes: 32 << 30, UsedBytes: 8 << 30, FreeBytes: 22 << 30},
	{Mount: "/srv data", FSType: "xfs", TotalBytes: 8 << 30, UsedBytes: 0, FreeBytes: 8 << 30},
}

// writeProc writes files, named by their path under the proc root, into a
// temporary directory and returns it.
func writeProc(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, text := range files {
		writeFile(t, filepath.Join(root, name), text)
	}
	return root
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeSampler reads root and answers statfs from sizes.
func fakeSampler(t *testing.T, root string) *Sampler {
	t.Helper()
	s := NewSampler(root)
	s.statfs = func(path string) (total, free, avail uint64, err error) {
		sz, ok := sizes[path]
		if !ok {
			return 0, 0, 0, fmt.Errorf("no fake size for %q: %w", path, fs.ErrNotExist)
		}
		return sz[0], sz[1], sz[2], nil
	}
	return s
}

func TestSample(t *testing.T) {
	got, err := fakeSampler(t, writeProc(t, procFiles)).Sample()
	if err != nil {
		t.Fatalf("Sample: %v", err)
	}
	want := protocol.Metrics{
		Load:          protocol.Load{One: 0.5, Five: 0.25, Fifteen: 0.12},
		Memory:        protocol.Memory{TotalBytes: 2 << 30, UsedBytes: 1 << 30, AvailableBytes: 1 << 30},
		Disks:         wantDisks,
		Network:       protocol.Network{RxBytes: 123456, TxBytes: 654321},
		UptimeSeconds: 86400,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Sample = %+v\nwant %+v", got, want)
	}
}

// TestSampleSources checks the error rule: only stat and meminfo make
// Sample fail, and whatever could be read is returned either way.
func TestSampleSources(t *testing.T) {
	tests := []struct {
		name    string
		change  map[string]string // replaces files; "" removes one
		wantErr error             // matched with errors.Is, so nil wants no error
		check   func(t *testing.T, m protocol.Metrics)
	}{
		{
			name:   "optional sources missing",
			change: map[string]string{"loadavg": "", "uptime": "", "net/dev": "", "self/mounts": ""},
			check: func(t *testing.T, m protocol.Metrics) {
				if m.Load != (protocol.Load{}) || m.UptimeSeconds != 0 || m.Network != (protocol.Network{}) || m.Disks != nil {
					t.Errorf("optional fields = %+v %d %+v %+v, want zero", m.Load, m.UptimeSeconds, m.Network, m.Disks)
				}
				if m.Memory.TotalBytes != 2<<30 {
					t.Errorf("Memory.TotalBytes = %d, want %d", m.Memory.TotalBytes, 2<<30)
				}
			},
		},
		{
			name:   "optional source malformed",
			change: map[string]string{"net/dev": netDevHeader + "  eth0: 1 2 3\n"},
			check: func(t *testing.T, m protocol.Metrics) {
				if m.Network != (protocol.Network{}) {
					t.Errorf("Network = %+v, want zero", m.Network)
				}
			},
		},
		{
			name:   "mounts read from the proc root without self",
			change: map[string]string{"self/mounts": "", "mounts": procFiles["self/mounts"]},
			check: func(t *testing.T, m protocol.Metrics) {
				if !reflect.DeepEqual(m.Disks, wantDisks) {
					t.Errorf("Disks = %+v, want %+v", m.Disks, wantDisks)
				}
			},
		},
		{
			name:   "disk without statfs left out",
			change: map[string]string{"self/mounts": procFiles["self/mounts"] + "/dev/vdc /gone ext4 rw 0 0\n"},
			check: func(t *testing.T, m protocol.Metrics) {
				if !reflect.DeepEqual(m.Disks, wantDisks) {
					t.Errorf("Disks = %+v, want %+v", m.Disks, wantDisks)
				}
			},
		},
		{
			name:    "meminfo missing",
			change:  map[string]string{"meminfo": ""},
			wantErr: fs.ErrNotExist,
			check: func(t *testing.T, m protocol.Metrics) {
				if m.Memory != (protocol.Memory{}) || m.UptimeSeconds != 86400 || len(m.Disks) != 2 {
					t.Errorf("Memory = %+v, UptimeSeconds = %d, %d disks; want zero, 86400, 2", m.Memory, m.UptimeSeconds, len(m.Disks))
				}
			},
		},
		{
			name:    "stat malformed",
			change:  map[string]string{"stat": "cpu  1x0 0 100 800 0 0 0 0 0 0\n"},
			wantErr: strconv.ErrSyntax,
			check: func(t *testing.T, m protocol.Metrics) {
				if m.Memory.TotalBytes != 2<<30 {
					t.Errorf("Memory.TotalBytes = %d, want %d", m.Memory.TotalBytes, 2<<30)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := maps.Clone(procFiles)
			for name, text := range tt.change {
				if text == "" {
					delete(files, name)
				} else {
					files[name] = text
				}
			}
			m, err := fakeSampler(t, writeProc(t, files)).Sample()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Sample error = %v, want %v", err, tt.wantErr)
			}
			tt.check(t, m)
		})
	}
}

func TestSampleErrorNamesFiles(t *testing.T) {
	files := maps.Clone(procFiles)
	files["meminfo"] = "MemTotal: 12 kB\n"
	delete(files, "net/dev")
	root := writeProc(t, files)
	_, err := fakeSampler(t, root).Sample()
	if err == nil {
		t.Fatal("Sample: no error, want one for meminfo and net/dev")
	}
	for _, name := range []string{"meminfo", "net/dev"} {
		if path := filepath.Join(root, name); !strings.Contains(err.Error(), path) {
			t.Errorf("Sample error %q does not name %s", err, path)
		}
	}
}

func TestSampleCPUPercent(t *testing.T) {
	root := writeProc(t, procFiles)
	s := fakeSampler(t, root)
	// Each step rewrites stat and wants the busy share since the step before.
	steps := []struct {
		stat string
		want float64
	}{
		{"cpu  100 0 100 800 0 0 0 0 0 0\n", 0},       // first sample: nothing to compare
		{"cpu  150 0 150 880 20 0 0 0 0 0\n", 50},     // 200 ticks, 100 idle or iowait
		{"cpu  150 0 150 880 20 0 0 0 0 0\n", 0},      // no time passed
		{"cpu  450 0 150 880 20 0 0 100 50 0\n", 100}, // user and steal only; guest is in user
	}
	for i, step := range steps {
		writeFile(t, filepath.Join(root, "stat"), step.stat)
		m, err := s.Sample()
		if err != nil {
			t.Fatalf("sample %d: %v", i, err)
		}
		if m.CPUPercent != step.want {
			t.Errorf("sample %d: CPUPercent = %v, want %v", i, m.CPUPercent, step.want)
		}
	}
}

func TestBusyPercent(t *testing.T) {
	tests := []struct {
		name       string
		prev, next cpuTimes
		want       float64
	}{
		{"first sample", cpuTimes{}, cpuTimes{total: 1000, idle: 500}, 0},
		{"quarter busy", cpuTimes{total: 1000, idle: 500}, cpuTimes{total: 1400, idle: 800}, 25},
		{"idle", cpuTimes{total: 1000, idle: 500}, cpuTimes{total: 1400, idle: 900}, 0},
		{"iowait ran backwards", cpuTimes{total: 1000, idle: 500}, cpuTimes{total: 1100, idle: 450}, 100},
		{"counters went back", cpuTimes{total: 1000, idle: 500}, cpuTimes{total: 900, idle: 400}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Sampler{prev: tt.prev}
			if got := s.busyPercent(tt.next); got != tt.want {
				t.Errorf("busyPercent(%+v) after %+v = %v, want %v", tt.next, tt.prev, got, tt.want)
			}
			if s.prev != tt.next {
				t.Errorf("prev = %+v, want %+v", s.prev, tt.next)
			}
		})
	}
}

func TestSampleHost(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc")
	}
	s := NewSampler("/proc")
	if _, err := s.Sample(); err != nil {
		t.Fatalf("first Sample: %v", err)
	}
	m, err := s.Sample()
	if err != nil {
		t.Fatalf("second Sample: %v", err)
	}
	if m.CPUPercent < 0 || m.CPUPercent > 100 {
		t.Errorf("CPUPercent = %v, want within [0, 100]", m.CPUPercent)
	}
	if m.Memory.TotalBytes == 0 || m.Memory.UsedBytes > m.Memory.TotalBytes {
		t.Errorf("Memory = %+v, want a total above zero and above used", m.Memory)
	}
	if m.UptimeSeconds == 0 {
		t.Error("UptimeSeconds = 0, want more")
	}
	if len(m.Disks) == 0 {
		t.Fatal("no disks")
	}
	for _, d := range m.Disks {
		if d.TotalBytes == 0 || d.UsedBytes > d.TotalBytes || d.FreeBytes > d.TotalBytes {
			t.Errorf("disk %+v: want a total above zero, used and free", d)
		}
	}
	t.Logf("%+v", m)
}

func TestReadHost(t *testing.T) {
	files := maps.Clone(procFiles)
	files["stat"] += "btime 1795532645\n"
	got, err := ReadHost(writeProc(t, files))
	if want := (Host{MemoryBytes: 2 << 30, BootedAt: time.Unix(1795532645, 0).UTC()}); err != nil || got != want {
		t.Errorf("ReadHost = %+v, %v; want %+v", got, err, want)
	}
	delete(files, "meminfo")
	got, err = ReadHost(writeProc(t, files))
	if !errors.Is(err, fs.ErrNotExist) || got.MemoryBytes != 0 || got.BootedAt.IsZero() {
		t.Errorf("ReadHost without meminfo = %+v, %v; want the boot time and fs.ErrNotExist", got, err)
	}
}
