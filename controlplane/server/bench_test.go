package server_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/internal/dockertest"
	"github.com/stackpro/stackpro/internal/proctest"
)

// BenchmarkAgentIdle reports what an idle agent costs: its resident memory
// after enrolling and reporting at the default intervals for 40 s (a
// heartbeat every 10 s, metrics every 30 s), and the sizes of both binaries
// built as `make build` builds them. Run it with -benchtime 1x.
func BenchmarkAgentIdle(b *testing.B) {
	dir := b.TempDir()
	sizes := map[string]float64{}
	for name, pkg := range map[string]string{
		"stackpro-controlplane": "./controlplane/cmd/stackpro-controlplane",
		"stackpro-agent":        "./agent/cmd/stackpro-agent",
	} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, name), pkg)
		cmd.Dir, cmd.Env = filepath.Join("..", ".."), append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		sizes[name+"-MiB"] = float64(info.Size()) / (1 << 20)
	}
	data := filepath.Join(dir, "data")
	b.Cleanup(func() { destroyInstances(b, data) })
	cmd := exec.Command(filepath.Join(dir, "stackpro-controlplane"), "dev", "--data", data,
		"--http", proctest.FreeAddr(b), "--nats", proctest.FreeAddr(b), "--demo-instances", "1")
	cmd.Env = append(os.Environ(), "STACKPRO_STACKS_IMAGE="+dockertest.DemoImage(b))
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var ids []string
	proctest.Until(b, "the demo instance to start", func() bool {
		ids, _ = filepath.Glob(filepath.Join(data, "instances", "i-*", "state", "enrolled"))
		return len(ids) == 1
	})
	id := filepath.Base(filepath.Dir(filepath.Dir(ids[0])))
	pid := agentPID(b, data, id)
	idle := 40 * time.Second
	if testing.Short() { // make test's smoke run
		idle = 2 * time.Second
	}
	for b.Loop() {
		time.Sleep(idle)
	}
	rss, err := vmRSS(pid)
	if err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	b.ReportMetric(float64(rss)/1024, "agent-idle-RSS-MiB")
	for unit, v := range sizes {
		b.ReportMetric(v, unit)
	}
}

// vmRSS reads a process's resident set size in KiB from /proc.
func vmRSS(pid int) (int, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
