package telemetry

import (
	"reflect"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    cpuTimes
		wantErr bool
	}{
		{"all fields, guest not counted twice", "cpu  10 1 20 300 5 2 3 4 7 9\ncpu0 1 2 3 4\nintr 1 2\n", cpuTimes{total: 345, idle: 305}, false},
		{"kernel without iowait", "cpu 10 1 20 300\n", cpuTimes{total: 331, idle: 300}, false},
		{"per-cpu line first", "cpu0 10 1 20 300 5\n", cpuTimes{}, true},
		{"too few fields", "cpu 10 1 20\n", cpuTimes{}, true},
		{"malformed number", "cpu 10 1 x 300 5\n", cpuTimes{}, true},
		{"empty", "", cpuTimes{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStat error = %v, want error %t", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseStat = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseMeminfo(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    protocol.Memory
		wantErr bool
	}{
		{
			name: "kB to bytes",
			text: "MemTotal:       4000 kB\nMemFree:        1000 kB\nMemAvailable:   3000 kB\nHugePages_Total:       0\n",
			want: protocol.Memory{TotalBytes: 4000 * 1024, UsedBytes: 1000 * 1024, AvailableBytes: 3000 * 1024},
		},
		{name: "no MemAvailable", text: "MemTotal:       4000 kB\nMemFree:        1000 kB\n", wantErr: true},
		{name: "no MemTotal", text: "MemAvailable:   3000 kB\n", wantErr: true},
		{name: "malformed number", text: "MemTotal:       4x00 kB\nMemAvailable:   3000 kB\n", wantErr: true},
		{name: "unknown unit", text: "MemTotal:       4000 MB\nMemAvailable:   3000 kB\n", wantErr: true},
		{name: "available above total", text: "MemTotal:       3000 kB\nMemAvailable:   4000 kB\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMeminfo(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseMeminfo error = %v, want error %t", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseMeminfo = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseLoadavg(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    protocol.Load
		wantErr bool
	}{
		{"five fields", "0.30 0.11 0.03 1/102 3600\n", protocol.Load{One: 0.30, Five: 0.11, Fifteen: 0.03}, false},
		{"too few fields", "0.30 0.11\n", protocol.Load{}, true},
		{"malformed number", "0.30 abc 0.03 1/102 3600\n", protocol.Load{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLoadavg(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseLoadavg error = %v, want error %t", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseLoadavg = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseUptime(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    uint64
		wantErr bool
	}{
		{"fraction dropped", "5274.98 10415.98\n", 5274, false},
		{"whole seconds", "42 80\n", 42, false},
		{"empty", "\n", 0, true},
		{"malformed number", "52x4.48 10415.98\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseUptime(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseUptime error = %v, want error %t", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseUptime = %d, want %d", got, tt.want)
			}
		})
	}
}

const netDevHeader = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
`

func TestParseNetDev(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    protocol.Network
		wantErr bool
	}{
		{
			name: "loopback and container interfaces excluded",
			text: netDevHeader +
				"    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0\n" +
				"  eth0:    1000      10    0    0    0     0          0         0      200       3    0    0    0     0       0          0\n" +
				"  ens5:      30       1    0    0    0     0          0         0        4       1    0    2    0     0       0          0\n" +
				"docker0:    500       1    0    0    0     0          0         0      500       1    0    2    0     0       0          0\n" +
				"veth12ab:   500       1    0    0    0     0          0         0      500       1    0    2    0     0       0          0\n" +
				"br-5f3e:    500       1    0    0    0     0          0         0      500       1    0    2    0     0       0          0\n",
			want: protocol.Network{RxBytes: 1030, TxBytes: 204},
		},
		{
			name: "no space after the colon",
			text: netDevHeader + "  eth0:1000      10    0    0    0     0          0         0      200       3    0    0    0     0       0          0\n",
			want: protocol.Network{RxBytes: 1000, TxBytes: 200},
		},
		{name: "headers only", text: netDevHeader},
		{name: "missing fields", text: netDevHeader + "  eth0: 1000 10 0 0\n", wantErr: true},
		{
			name:    "malformed number",
			text:    netDevHeader + "  eth0:    1000      10    0    0    0     0          0         0      2x0       3    0    0    0     0       0          0\n",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseNetDev(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseNetDev error = %v, want error %t", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseNetDev = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseMounts(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    []protocol.Disk
		wantErr bool
	}{
		{
			name: "virtual filesystems skipped",
			text: `proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=12334492k 0 0
tmpfs /dev/shm tmpfs rw,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,relatime 0 0
nsfs /run/netns/x nsfs rw 0 0
/dev/loop0 /snap/core/1 squashfs ro 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw,lowerdir=/a 0 0
/dev/vda1 / ext4 rw,relatime 0 0
/dev/vda15 /boot/efi vfat rw 0 0
/dev/nvme1n1 /data xfs rw 0 0
`,
			want: []protocol.Disk{
				{Mount: "/", FSType: "ext4"},
				{Mount: "/boot/efi", FSType: "vfat"},
				{Mount: "/data", FSType: "xfs"},
			},
		},
		{
			name: "duplicated device keeps its first mount",
			text: "/dev/vda / ext4 rw 0 0\n/dev/vda /var/lib/docker ext4 rw 0 0\n/dev/sdb /srv btrfs rw 0 0\n/dev/sdb /home btrfs rw 0 0\n",
			want: []protocol.Disk{{Mount: "/", FSType: "ext4"}, {Mount: "/srv", FSType: "btrfs"}},
		},
		{
			name: "escaped mount point",
			text: `/dev/sdc /mnt/my\040disk\011x ext4 rw 0 0` + "\n",
			want: []protocol.Disk{{Mount: "/mnt/my disk\tx", FSType: "ext4"}},
		},
		{name: "empty", text: ""},
		{name: "missing fields", text: "/dev/vda /\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMounts(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseMounts error = %v, want error %t", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseMounts = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestUnescape(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{`/plain`, `/plain`},
		{`/a\040b`, `/a b`},
		{`/a\134b\012`, "/a\\b\n"},
		{`/not\999octal`, `/not\999octal`},
		{`/short\04`, `/short\04`},
		{`/trailing\`, `/trailing\`},
	}
	for _, tt := range tests {
		if got := unescape(tt.in); got != tt.want {
			t.Errorf("unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseBootTime(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    time.Time
		wantErr bool
	}{
		{"btime among others", "cpu 1 2 3 4\nintr 5\nbtime 1795532645\nprocesses 9\n", time.Unix(1795532645, 0).UTC(), false},
		{"no btime", "cpu 1 2 3 4\n", time.Time{}, true},
		{"malformed", "btime soon\n", time.Time{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseBootTime(tt.text)
			if (err != nil) != tt.wantErr || !got.Equal(tt.want) {
				t.Errorf("parseBootTime = %v, %v; want %v, error %t", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
