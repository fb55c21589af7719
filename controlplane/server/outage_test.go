package server_test

import (
	"bufio"
	"context"
	"net/http"
	"net/url"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/internal/proctest"
)

// TestMetricsSurviveControlPlaneStops: an agent sends a sample every
// second while its control plane is killed (SIGKILL) at moments spread
// over several sample periods and persist periods, and is then stopped
// (SIGTERM) with an event stream open, which must end at once. Afterwards
// the history holds a point for every second the agent sampled: no
// sample it sent was lost.
func TestMetricsSurviveControlPlaneStops(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	httpAddr, natsAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
	t.Cleanup(func() { destroyInstances(t, data) })
	cp := startControlPlane(t, data, httpAddr, natsAddr, 1)
	var inst struct {
		fleet.Instance
		Metrics *struct{ At time.Time }
	}
	proctest.Until(t, "the demo instance's first sample", func() bool {
		insts := cp.instances()
		if len(insts) == 1 {
			cp.api(http.MethodGet, "/api/v1/instances/"+insts[0].ID, &inst)
		}
		return inst.Metrics != nil
	})
	from := inst.Metrics.At.Truncate(time.Second)

	// Kill it 1.3 s, 3.7 s and 6.1 s after it is ready: inside the
	// monitor's 5 s persist period, and across it.
	for _, after := range []time.Duration{1300 * time.Millisecond, 3700 * time.Millisecond, 6100 * time.Millisecond} {
		time.Sleep(after) // the moment of the crash is what this test varies
		if err := cp.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-cp.exited
		cp = startControlPlane(t, data, httpAddr, natsAddr, 1)
	}

	// A SIGTERM while a client streams events: the stream ends, and the
	// control plane exits cleanly without waiting out its HTTP timeout.
	time.Sleep(2 * time.Second)
	ended := streamEvents(t, cp)
	cp.stop() // fails on an unclean exit, as when the shutdown times out
	<-ended
	cp = startControlPlane(t, data, httpAddr, natsAddr, 1)

	// Samples a killed control plane had taken come back when JetStream
	// gives up waiting for their acknowledgement (the monitor's ackWait).
	// Sampling drifts a little past each second, so now and then a second
	// holds no sample; two in a row never lack one.
	to := time.Now().Add(-2 * time.Second).Truncate(time.Second)
	var gaps []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("samples missing from the history: %v", gaps)
		}
	})
	proctest.Until(t, "every sample from "+from.Format(time.TimeOnly)+" to "+to.Format(time.TimeOnly)+" stored", func() bool {
		var h fleet.MetricsHistory
		q := url.Values{"from": {from.Format(time.RFC3339)}, "to": {time.Now().Format(time.RFC3339)}}
		if cp.api(http.MethodGet, "/api/v1/instances/"+inst.ID+"/metrics?"+q.Encode(), &h) != http.StatusOK {
			return false
		}
		gaps = missing(from, to, h.Points)
		return len(gaps) == 0
	})
}

// missing says where, from from to to, two seconds or more pass without a
// point.
func missing(from, to time.Time, points []fleet.MetricsPoint) []string {
	var gaps []string
	last := from.Add(-time.Second) // as if a point came a second before from
	for _, p := range append(points, fleet.MetricsPoint{At: to.Add(time.Second)}) {
		if p.At.Sub(last) > 2*time.Second {
			gaps = append(gaps, last.Add(time.Second).Format(time.TimeOnly)+" to "+p.At.Add(-time.Second).Format(time.TimeOnly))
		}
		last = p.At
	}
	return gaps
}

// streamEvents opens the event stream with the admin token and returns a
// channel closed once the server has ended it.
func streamEvents(t *testing.T, cp *controlPlane) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cp.httpAddr+"/api/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cp.token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/v1/events: %d", resp.StatusCode)
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		defer resp.Body.Close()
		for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		}
	}()
	return ended
}
