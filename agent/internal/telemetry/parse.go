package telemetry

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// cpuTimes sums the first line of /proc/stat, in clock ticks since boot.
type cpuTimes struct {
	total uint64
	idle  uint64 // idle and iowait
}

// parseStat reads the "cpu" line of /proc/stat: user nice system idle
// iowait irq softirq steal, then guest and guest_nice, which are already
// counted in user and nice. Kernels before 2.6 stop after idle.
func parseStat(text string) (cpuTimes, error) {
	line, _, _ := strings.Cut(text, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("first line %q is not the cpu total", line)
	}
	var t cpuTimes
	for i, field := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(field, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("cpu field %d: %w", i+1, err)
		}
		t.total += n
		if i == 3 || i == 4 {
			t.idle += n
		}
	}
	return t, nil
}

// parseBootTime reads the "btime" line of /proc/stat: the boot time in
// seconds since the epoch.
func parseBootTime(text string) (time.Time, error) {
	for line := range strings.Lines(text) {
		value, ok := strings.CutPrefix(line, "btime ")
		if !ok {
			continue
		}
		sec, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("btime: %w", err)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	return time.Time{}, errors.New("no btime")
}

// parseMeminfo reads MemTotal and MemAvailable, given in kB.
func parseMeminfo(text string) (protocol.Memory, error) {
	var mem protocol.Memory
	var haveTotal, haveAvail bool
	for line := range strings.Lines(text) {
		key, value, _ := strings.Cut(line, ":")
		var dst *uint64
		switch key {
		case "MemTotal":
			dst, haveTotal = &mem.TotalBytes, true
		case "MemAvailable":
			dst, haveAvail = &mem.AvailableBytes, true
		default:
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return protocol.Memory{}, fmt.Errorf("%s: %w", key, err)
		}
		*dst = kb * 1024
	}
	switch {
	case !haveTotal:
		return protocol.Memory{}, errors.New("no MemTotal")
	case !haveAvail:
		return protocol.Memory{}, errors.New("no MemAvailable")
	case mem.AvailableBytes > mem.TotalBytes:
		return protocol.Memory{}, fmt.Errorf("MemAvailable %d kB exceeds MemTotal %d kB",
			mem.AvailableBytes/1024, mem.TotalBytes/1024)
	}
	mem.UsedBytes = mem.TotalBytes - mem.AvailableBytes
	return mem, nil
}

// parseLoadavg reads the first three fields of /proc/loadavg.
func parseLoadavg(text string) (protocol.Load, error) {
	f := strings.Fields(text)
	if len(f) < 3 {
		return protocol.Load{}, fmt.Errorf("%d fields, want at least 3", len(f))
	}
	var avg [3]float64
	for i := range avg {
		var err error
		if avg[i], err = strconv.ParseFloat(f[i], 64); err != nil {
			return protocol.Load{}, err
		}
	}
	return protocol.Load{One: avg[0], Five: avg[1], Fifteen: avg[2]}, nil
}

// parseUptime reads the whole seconds of the first field of /proc/uptime.
func parseUptime(text string) (uint64, error) {
	f := strings.Fields(text)
	if len(f) == 0 {
		return 0, errors.New("empty")
	}
	whole, _, _ := strings.Cut(f[0], ".")
	return strconv.ParseUint(whole, 10, 64)
}

// virtualNICs are interface name prefixes whose traffic is already counted
// on a real interface: loopback, and the bridges and veth pairs of Docker
// and other container runtimes.
var virtualNICs = []string{"lo", "docker", "veth", "br-", "virbr", "cni", "flannel"}

// parseNetDev sums the received and transmitted bytes of every interface
// but the virtual ones, so a container's traffic is counted once. Each line
// after the two header lines reads "name: rx_bytes (7 more rx fields) tx_bytes ...".
func parseNetDev(text string) (protocol.Network, error) {
	var n protocol.Network
	for line := range strings.Lines(text) {
		name, counters, ok := strings.Cut(line, ":")
		if !ok { // a header line
			continue
		}
		name = strings.TrimSpace(name)
		if slices.ContainsFunc(virtualNICs, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		f := strings.Fields(counters)
		if len(f) < 9 {
			return protocol.Network{}, fmt.Errorf("%s: %d fields, want at least 9", name, len(f))
		}
		rx, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return protocol.Network{}, fmt.Errorf("%s: rx bytes: %w", name, err)
		}
		tx, err := strconv.ParseUint(f[8], 10, 64)
		if err != nil {
			return protocol.Network{}, fmt.Errorf("%s: tx bytes: %w", name, err)
		}
		n.RxBytes += rx
		n.TxBytes += tx
	}
	return n, nil
}

// diskFS are the filesystem types that hold data on a block device.
// Virtual ones (tmpfs, proc, sysfs, cgroup, overlay, squashfs...) are left out.
var diskFS = map[string]bool{
	"ext2": true, "ext3": true, "ext4": true, "xfs": true, "btrfs": true,
	"zfs": true, "vfat": true, "f2fs": true,
}

// parseMounts lists the block-device filesystems of /proc/self/mounts,
// one per device: a device mounted twice is reported at its first mount
// point. Sizes are left to statfs.
func parseMounts(text string) ([]protocol.Disk, error) {
	var disks []protocol.Disk
	var devices []string
	for line := range strings.Lines(text) {
		f := strings.Fields(line) // device mountpoint fstype options dump pass
		if len(f) < 3 {
			return nil, fmt.Errorf("line %q: %d fields, want at least 3", strings.TrimSpace(line), len(f))
		}
		if !diskFS[f[2]] || slices.Contains(devices, f[0]) {
			continue
		}
		devices = append(devices, f[0])
		disks = append(disks, protocol.Disk{Mount: unescape(f[1]), FSType: f[2]})
	}
	return disks, nil
}

// unescape decodes the octal escapes the kernel writes in mount paths
// (\040 for a space, \011 tab, \012 newline, \134 backslash).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if c, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(c))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
