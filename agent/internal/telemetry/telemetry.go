// Package telemetry samples the host for the agent's metrics: CPU, load,
// memory, disks, network and uptime, read from /proc and statfs, and what
// the host is made of for the agent's facts.
package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Sampler reads host metrics. CPU percent is the busy share of all CPUs
// between two samples (0 on the first). A Sampler is not safe for
// concurrent use.
type Sampler struct {
	procRoot string
	// statfs reports the size of the filesystem mounted at path, in bytes:
	// all of it, what is free, and what is free to unprivileged users.
	statfs func(path string) (total, free, avail uint64, err error)
	prev   cpuTimes     // the previous sample's CPU counters; zero before the first
	buf    bytes.Buffer // reused for every file read
}

// NewSampler returns a Sampler reading the proc filesystem at procRoot,
// normally "/proc".
func NewSampler(procRoot string) *Sampler {
	return &Sampler{procRoot: procRoot, statfs: statfs}
}

// Sample reads every source and fills CPUPercent, Load, Memory, Disks,
// Network and UptimeSeconds, leaving V, InstanceID and At to the caller.
//
// The rule for errors: stat and meminfo are required, the rest is optional.
// Sample always returns what it could read; a source that failed leaves its
// fields zero (a disk whose statfs failed is left out). The error is nil
// unless a required source failed, and then it joins every failure, required
// or not.
func (s *Sampler) Sample() (protocol.Metrics, error) {
	var m protocol.Metrics
	var memErr, loadErr, uptimeErr, netErr, diskErr error
	cpu, cpuErr := source(s, "stat", parseStat)
	m.Memory, memErr = source(s, "meminfo", parseMeminfo)
	m.Load, loadErr = source(s, "loadavg", parseLoadavg)
	m.UptimeSeconds, uptimeErr = source(s, "uptime", parseUptime)
	m.Network, netErr = source(s, "net/dev", parseNetDev)
	m.Disks, diskErr = s.disks()
	if cpuErr == nil {
		m.CPUPercent = s.busyPercent(cpu)
	}
	if cpuErr != nil || memErr != nil {
		return m, errors.Join(cpuErr, memErr, loadErr, uptimeErr, netErr, diskErr)
	}
	return m, nil
}

// busyPercent returns the busy share of CPU time between the previous
// sample and t, and remembers t.
func (s *Sampler) busyPercent(t cpuTimes) float64 {
	prev := s.prev
	s.prev = t
	if prev.total == 0 || t.total <= prev.total {
		return 0
	}
	total := float64(t.total - prev.total)
	idle := float64(t.idle) - float64(prev.idle) // iowait may run backwards
	return min(100, max(0, 100*(total-idle)/total))
}

// disks lists the block-device filesystems and their sizes. A mount whose
// statfs fails is left out and its error returned with the others.
func (s *Sampler) disks() ([]protocol.Disk, error) {
	disks, err := source(s, "self/mounts", parseMounts)
	if errors.Is(err, fs.ErrNotExist) {
		disks, err = source(s, "mounts", parseMounts)
	}
	if err != nil {
		return nil, err
	}
	var errs []error
	kept := disks[:0]
	for _, d := range disks {
		total, free, avail, err := s.statfs(d.Mount)
		if err != nil {
			errs = append(errs, fmt.Errorf("telemetry: statfs %s: %w", d.Mount, err))
			continue
		}
		d.TotalBytes, d.UsedBytes, d.FreeBytes = total, total-free, avail
		kept = append(kept, d)
	}
	return kept, errors.Join(errs...)
}

// Host is what the host is made of, for the agent's facts.
type Host struct {
	MemoryBytes uint64
	BootedAt    time.Time
}

// ReadHost reads the host's memory and boot time from the proc filesystem
// at procRoot. A field whose source cannot be read stays zero, and the
// error joins the failures.
func ReadHost(procRoot string) (Host, error) {
	s := NewSampler(procRoot)
	mem, memErr := source(s, "meminfo", parseMeminfo)
	booted, bootErr := source(s, "stat", parseBootTime)
	return Host{MemoryBytes: mem.TotalBytes, BootedAt: booted}, errors.Join(memErr, bootErr)
}

// source reads the file name under procRoot and parses its text. Its errors
// name the file.
func source[T any](s *Sampler, name string, parse func(text string) (T, error)) (T, error) {
	var zero T
	path := filepath.Join(s.procRoot, name)
	f, err := os.Open(path)
	if err != nil {
		return zero, fmt.Errorf("telemetry: %w", err) // the *fs.PathError names the file
	}
	defer f.Close()
	s.buf.Reset()
	if _, err := s.buf.ReadFrom(f); err != nil {
		return zero, fmt.Errorf("telemetry: %w", err)
	}
	v, err := parse(s.buf.String())
	if err != nil {
		return zero, fmt.Errorf("telemetry: reading %s: %w", path, err)
	}
	return v, nil
}

func statfs(path string) (total, free, avail uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, 0, err
	}
	bsize := uint64(st.Bsize)
	return st.Blocks * bsize, st.Bfree * bsize, st.Bavail * bsize, nil
}
