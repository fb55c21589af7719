package fleet_test

import (
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

// TestProblemsComeAndGo: a heartbeat that reports a problem (a full disk)
// turns the instance degraded with the problem shown; the next heartbeat
// without one turns it online and clears the problem.
func TestProblemsComeAndGo(t *testing.T) {
	tr := newTracker(t, "i-a")
	steps := []struct {
		hb           protocol.Heartbeat
		want         fleet.Status
		wantProblems int
	}{
		{protocol.Heartbeat{InstanceID: "i-a", Health: protocol.HealthOK}, fleet.StatusOnline, 0},
		{protocol.Heartbeat{InstanceID: "i-a", Health: protocol.HealthDegraded, Problems: []string{"disk /data is 95% full"}}, fleet.StatusDegraded, 1},
		{protocol.Heartbeat{InstanceID: "i-a", Health: protocol.HealthOK}, fleet.StatusOnline, 0},
	}
	for i, s := range steps {
		at := t0.Add(time.Duration(i) * 10 * time.Second)
		if !tr.Heartbeat(s.hb, at) {
			t.Fatalf("heartbeat %d: instance unknown", i)
		}
		if got := get(t, tr, "i-a", at); got.Status != s.want || len(got.Problems) != s.wantProblems {
			t.Errorf("after heartbeat %d (%s, %q): status %q, problems %q; want %q with %d problems",
				i, s.hb.Health, s.hb.Problems, got.Status, got.Problems, s.want, s.wantProblems)
		}
	}
}
