package engine_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/internal/fleetsim"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/internal/proctest"
)

// BenchmarkFleet10k measures, against the control plane binary and 10,000
// simulated agents in two simulator processes: the control plane's CPU and
// RSS while every agent heartbeats each 10 s, then a ping to all of them
// (every reply collected), as the latency of each reply from the run's
// start. One iteration is the whole benchmark:
//
//	go test -run '^$' -bench Fleet10k -benchtime 1x -timeout 30m ./controlplane/rollout/engine
func BenchmarkFleet10k(b *testing.B) {
	n, settle, measure := 10000, 20*time.Second, 60*time.Second
	if testing.Short() { // make test's smoke run: the same path, small
		n, settle, measure = 200, time.Second, 2*time.Second
	}
	data := b.TempDir()
	agentsFile := seed(b, data, n)
	httpAddr, natsAddr := proctest.FreeAddr(b), proctest.FreeAddr(b)
	cp := controlPlane(b, data, httpAddr, natsAddr)
	raw, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		b.Fatal(err)
	}
	token, url := strings.TrimSpace(string(raw)), "http://"+httpAddr
	sim, err := fleetsim.StartProcesses(context.Background(), filepath.Join(proctest.Binaries(b), "stackpro-sim"), []string{
		"--nats", "nats://" + natsAddr, "--agents", agentsFile, "--per-process", "5000", "--heartbeat", "10s"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sim.Stop() })
	proctest.Within(b, 15*time.Minute, "10,000 simulated agents to connect", func() bool { return sim.Stats().Connected == n })
	pid := cp.cmd.Process.Pid
	for b.Loop() {
		// Let enrollment's writes and the first heartbeats settle, then
		// measure a minute of steady heartbeats.
		time.Sleep(settle)
		cpu0, at0 := cpuSeconds(b, pid), time.Now()
		time.Sleep(measure)
		cores := (cpuSeconds(b, pid) - cpu0) / time.Since(at0).Seconds()
		b.ReportMetric(cores, "cp-cores")
		b.ReportMetric(float64(rssBytes(b, pid))/(1<<20), "cp-rss-MiB")

		var run rollout.Run
		cpCPU, machineCPU := cpuSeconds(b, pid), machineCPUSeconds(b)
		code := post(b, url+"/api/v1/runs", token, `{"command":"ping","select":{"all":true},"max_concurrency":"100%","max_errors":"100%","timeout":"60s"}`, &run)
		if code != http.StatusCreated {
			b.Fatalf("POST /api/v1/runs: %d", code)
		}
		proctest.Within(b, 5*time.Minute, "the ping run to finish", func() bool {
			getJSON(b, url+"/api/v1/runs/"+run.ID, token, &run)
			return run.Done()
		})
		b.ReportMetric(cpuSeconds(b, pid)-cpCPU, "ping-cp-cpu-s")
		b.ReportMetric(machineCPUSeconds(b)-machineCPU, "ping-machine-cpu-s")
		var lat []time.Duration
		var firstSent time.Time
		for cursor := ""; ; {
			var page struct {
				Targets    []rollout.Target `json:"targets"`
				NextCursor string           `json:"next_cursor"`
			}
			getJSON(b, url+"/api/v1/runs/"+run.ID+"/targets?limit=500&cursor="+cursor, token, &page)
			for _, t := range page.Targets {
				if t.State == rollout.TargetSucceeded {
					lat = append(lat, t.FinishedAt.Sub(run.CreatedAt))
				}
				if firstSent.IsZero() || t.SentAt.Before(firstSent) {
					firstSent = t.SentAt
				}
			}
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
		if len(lat) != n {
			b.Fatalf("%d of %d pings answered: %v", len(lat), n, run.Counts)
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "ping-p50-ms")
		b.ReportMetric(float64(lat[n*99/100].Microseconds())/1000, "ping-p99-ms")
		b.ReportMetric(float64(lat[n-1].Microseconds())/1000, "ping-all-ms")
		b.ReportMetric(float64(firstSent.Sub(run.CreatedAt).Microseconds())/1000, "first-sent-ms")
	}
}

// cpuSeconds is the user+system CPU time process pid has used.
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): utime and
	// stime are the 12th and 13th, in clock ticks (100 a second on Linux).
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100
}

// machineCPUSeconds is the CPU time every process on the machine has
// used: user, nice, system, irq and softirq from /proc/stat.
func machineCPUSeconds(b *testing.B) float64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq ...
	var ticks float64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, _ := strconv.ParseFloat(fields[i], 64)
		ticks += v
	}
	return ticks / 100
}

// rssBytes is process pid's resident set size.
func rssBytes(b *testing.B, pid int) int64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
