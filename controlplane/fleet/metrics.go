package fleet

import (
	"math/bits"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// MetricsPoint is an instance's resources at one time, or averaged over a
// span of time. A raw point is one agent sample: Samples is 1 and CPUMax is
// CPUPercent. A rollup (an hour, or neighbours merged to shorten a chart)
// averages CPU, memory and network rates over its samples, keeps the
// highest CPU in CPUMax and the disk of its latest sample.
type MetricsPoint struct {
	// At is when the sample was taken; for a rollup, when its span starts.
	At         time.Time `json:"at"`
	CPUPercent float64   `json:"cpu_percent"`
	CPUMax     float64   `json:"cpu_max"`
	// Memory in bytes.
	MemoryUsed  uint64 `json:"memory_used"`
	MemoryTotal uint64 `json:"memory_total"`
	// Disk in bytes, of the root filesystem (see PointFrom).
	DiskUsed  uint64 `json:"disk_used"`
	DiskTotal uint64 `json:"disk_total"`
	// Network in bytes per second, received and sent, since the previous sample.
	RxBps float64 `json:"rx_bps"`
	TxBps float64 `json:"tx_bps"`
	// Samples is how many agent samples the point stands for.
	Samples int `json:"samples"`
}

// InstancePoint is a metrics point of one instance, as written to history.
type InstancePoint struct {
	InstanceID string
	Point      MetricsPoint
}

// Resolution is how fine a metrics history is.
type Resolution string

// Resolutions kept by the control plane.
const (
	// ResolutionRaw: every agent sample (one each 30 s), kept for a day.
	ResolutionRaw Resolution = "raw"
	// ResolutionHourly: one rollup per hour, kept for a month.
	ResolutionHourly Resolution = "1h"
)

// MetricsHistory is an instance's metrics over a window, oldest first.
type MetricsHistory struct {
	InstanceID string     `json:"instance_id"`
	From       time.Time  `json:"from"`
	To         time.Time  `json:"to"`
	Resolution Resolution `json:"resolution"`
	// Points is never nil, so it reads as [] in JSON when empty.
	Points []MetricsPoint `json:"points"`
}

// PointFrom turns an agent sample into a raw point. prev is the
// instance's previous sample, if any: network rates are the growth of its
// cumulative counters over the time between the two. A rate is 0 without
// prev, when time did not advance, after a reboot (uptime went down) or
// when its counter went down (an interface reset).
//
// The disk is the root filesystem "/" when the agent reports it, else the
// largest one: adding every mount up would count bind mounts and
// overlays of the same device twice.
func PointFrom(prev *protocol.Metrics, cur protocol.Metrics) MetricsPoint {
	p := MetricsPoint{At: cur.At, CPUPercent: cur.CPUPercent, CPUMax: cur.CPUPercent,
		MemoryUsed: cur.Memory.UsedBytes, MemoryTotal: cur.Memory.TotalBytes, Samples: 1}
	var disk *protocol.Disk
	for i := range cur.Disks {
		d := &cur.Disks[i]
		if d.Mount == "/" {
			disk = d
			break
		}
		if disk == nil || d.TotalBytes > disk.TotalBytes {
			disk = d
		}
	}
	if disk != nil {
		p.DiskUsed, p.DiskTotal = disk.UsedBytes, disk.TotalBytes
	}
	if prev == nil || !cur.At.After(prev.At) || cur.UptimeSeconds < prev.UptimeSeconds {
		return p
	}
	secs := cur.At.Sub(prev.At).Seconds()
	rate := func(was, is uint64) float64 {
		if is < was {
			return 0
		}
		return float64(is-was) / secs
	}
	p.RxBps = rate(prev.Network.RxBytes, cur.Network.RxBytes)
	p.TxBps = rate(prev.Network.TxBytes, cur.Network.TxBytes)
	return p
}

// Fold merges q into p: averages weighted by Samples, the higher CPUMax,
// and the disk of the later of the two (q on a tie). p keeps its At, so
// folding later points into the first of a span keeps the span's start.
// A point with no samples adds nothing to the averages.
func (p *MetricsPoint) Fold(q MetricsPoint) {
	wp, wq := uint64(max(p.Samples, 0)), uint64(max(q.Samples, 0))
	n := wp + wq
	if n == 0 {
		return
	}
	favg := func(a, b float64) float64 { return (a*float64(wp) + b*float64(wq)) / float64(n) }
	p.CPUPercent = favg(p.CPUPercent, q.CPUPercent)
	p.RxBps = favg(p.RxBps, q.RxBps)
	p.TxBps = favg(p.TxBps, q.TxBps)
	p.MemoryUsed = uavg(p.MemoryUsed, wp, q.MemoryUsed, wq)
	p.MemoryTotal = uavg(p.MemoryTotal, wp, q.MemoryTotal, wq)
	if wp == 0 || q.CPUMax > p.CPUMax {
		p.CPUMax = q.CPUMax
	}
	if wp == 0 || (wq > 0 && !q.At.Before(p.At)) {
		p.DiskUsed, p.DiskTotal = q.DiskUsed, q.DiskTotal
	}
	p.Samples = int(n)
}

// uavg is the average of a weighted wa and b weighted wb, exact in 128
// bits; the average is at most max(a, b), so the quotient fits in 64.
func uavg(a, wa, b, wb uint64) uint64 {
	hi1, lo1 := bits.Mul64(a, wa)
	hi2, lo2 := bits.Mul64(b, wb)
	lo, carry := bits.Add64(lo1, lo2, 0)
	hi, _ := bits.Add64(hi1, hi2, carry)
	q, _ := bits.Div64(hi, lo, wa+wb)
	return q
}

// Downsample shortens points (oldest first) to at most limit by folding
// runs of neighbours: each run of ceil(len/limit) points becomes one, at
// the time of its first. Points already short enough are returned as they
// are. A limit below 1 means no limit.
func Downsample(points []MetricsPoint, limit int) []MetricsPoint {
	if limit < 1 || len(points) <= limit {
		return points
	}
	run := (len(points) + limit - 1) / limit
	out := make([]MetricsPoint, 0, (len(points)+run-1)/run)
	for i := 0; i < len(points); i += run {
		p := points[i]
		for _, q := range points[i+1 : min(i+run, len(points))] {
			p.Fold(q)
		}
		out = append(out, p)
	}
	return out
}
