package store_test

import (
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
)

// point is a raw sample at at with cpu as its CPU; the rest follows from cpu
// so rollups can be checked by hand.
func point(at time.Time, cpu float64) fleet.MetricsPoint {
	return fleet.MetricsPoint{At: at, CPUPercent: cpu, CPUMax: cpu, MemoryUsed: uint64(cpu) << 20, MemoryTotal: 4 << 30,
		DiskUsed: uint64(cpu) << 30, DiskTotal: 100 << 30, RxBps: cpu * 10, TxBps: cpu * 100, Samples: 1}
}

func appendMetrics(t *testing.T, s *store.Store, id string, points ...fleet.MetricsPoint) {
	t.Helper()
	var batch []fleet.InstancePoint
	for _, p := range points {
		batch = append(batch, fleet.InstancePoint{InstanceID: id, Point: p})
	}
	if err := s.AppendMetrics(batch); err != nil {
		t.Fatalf("AppendMetrics: %v", err)
	}
}

func history(t *testing.T, s *store.Store, id string, from, to time.Time, res fleet.Resolution) []fleet.MetricsPoint {
	t.Helper()
	got, err := s.MetricsHistory(id, from, to, res)
	if err != nil {
		t.Fatalf("MetricsHistory(%s, %v, %v, %s): %v", id, from, to, res, err)
	}
	return got
}

func TestMetricsSurviveReopen(t *testing.T) {
	s, path := newStore(t)
	putInstances(t, s, "a")
	odd := fleet.MetricsPoint{At: t0, CPUPercent: 12.345, CPUMax: 99.5, MemoryUsed: math.MaxUint64, MemoryTotal: 1,
		DiskUsed: 7 << 40, DiskTotal: 8 << 40, RxBps: 1e9 / 3, TxBps: 0.001, Samples: 1}
	want := []fleet.MetricsPoint{odd, point(t0.Add(30*time.Second), 20), point(t0.Add(time.Minute), 30)}
	appendMetrics(t, s, "a", want...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path)
	got := history(t, s, "a", t0, t0.Add(time.Hour), fleet.ResolutionRaw)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after reopening:\n got %+v\nwant %+v", got, want)
	}
}

func TestMetricsHourlyRollup(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "a")
	h := t0.Truncate(time.Hour)
	appendMetrics(t, s, "a", point(h.Add(10*time.Minute), 30), point(h.Add(59*time.Minute+59*time.Second), 10),
		point(h.Add(time.Hour), 50))
	// A point of the first hour arriving late folds into it too; the disk is the last appended.
	appendMetrics(t, s, "a", point(h.Add(20*time.Minute), 20))
	got := history(t, s, "a", h, h.Add(2*time.Hour), fleet.ResolutionHourly)
	want := []fleet.MetricsPoint{
		{At: h, CPUPercent: 20, CPUMax: 30, MemoryUsed: 20 << 20, MemoryTotal: 4 << 30, DiskUsed: 20 << 30, DiskTotal: 100 << 30,
			RxBps: 200, TxBps: 2000, Samples: 3},
		point(h.Add(time.Hour), 50),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hourly:\n got %+v\nwant %+v", got, want)
	}
}

func TestAppendMetricsIsIdempotent(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "a")
	batch := []fleet.MetricsPoint{point(t0, 10), point(t0.Add(30*time.Second), 20)}
	appendMetrics(t, s, "a", batch...)
	appendMetrics(t, s, "a", batch...) // a flush retried after its commit
	// The same second twice in one batch is stored once too.
	appendMetrics(t, s, "a", point(t0.Add(time.Minute), 30), point(t0.Add(time.Minute+time.Millisecond), 90))
	raw := history(t, s, "a", t0, t0.Add(time.Hour), fleet.ResolutionRaw)
	if len(raw) != 3 || raw[2].CPUPercent != 30 {
		t.Errorf("raw = %+v, want 3 points, the last of 30%%", raw)
	}
	hourly := history(t, s, "a", t0, t0.Add(time.Hour), fleet.ResolutionHourly)
	if len(hourly) != 1 || hourly[0].Samples != 3 || hourly[0].CPUPercent != 20 {
		t.Errorf("hourly = %+v, want one rollup of 3 samples averaging 20%%", hourly)
	}
}

func TestMetricsHistoryRange(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "a", "b")
	var points []fleet.MetricsPoint
	for i := range 10 {
		points = append(points, point(t0.Add(time.Duration(i)*time.Minute), float64(i)))
	}
	appendMetrics(t, s, "a", points...)
	minute := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	tests := []struct {
		name     string
		id       string
		from, to time.Time
		res      fleet.Resolution
		want     []float64 // CPU of each point
	}{
		{"inclusive", "a", minute(2), minute(5), fleet.ResolutionRaw, []float64{2, 3, 4, 5}},
		{"just after a point", "a", minute(2).Add(time.Nanosecond), minute(5).Add(-time.Nanosecond), fleet.ResolutionRaw, []float64{3, 4}},
		{"one instant", "a", minute(7), minute(7), fleet.ResolutionRaw, []float64{7}},
		{"everything", "a", time.Time{}, minute(60), fleet.ResolutionRaw, []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{"before any", "a", minute(-60), minute(-1), fleet.ResolutionRaw, nil},
		{"after all", "a", minute(10), minute(60), fleet.ResolutionRaw, nil},
		{"reversed", "a", minute(5), minute(2), fleet.ResolutionRaw, nil},
		{"instance without history", "b", minute(0), minute(60), fleet.ResolutionRaw, nil},
		{"unknown instance", "c", minute(0), minute(60), fleet.ResolutionRaw, nil},
		{"hour overlapping the range", "a", minute(5), minute(6), fleet.ResolutionHourly, []float64{4.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []float64
			for _, p := range history(t, s, tt.id, tt.from, tt.to, tt.res) {
				got = append(got, p.CPUPercent)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("CPU of points = %v, want %v", got, tt.want)
			}
		})
	}
	if _, err := s.MetricsHistory("a", minute(0), minute(1), "5m"); err == nil {
		t.Error("MetricsHistory at an unknown resolution succeeded")
	}
}

func TestPruneMetrics(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "a", "b")
	start := t0.Truncate(time.Hour)
	// a: a sample every 15 s for 50 hours, more than one pruning
	// transaction deletes; b: a few at the start only.
	var points []fleet.MetricsPoint
	for i := range 12000 {
		points = append(points, point(start.Add(time.Duration(i)*15*time.Second), 1))
	}
	appendMetrics(t, s, "a", points...)
	appendMetrics(t, s, "b", points[:10]...)
	now := start.Add(50 * time.Hour)

	n, err := s.PruneMetrics(now, 24*time.Hour, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Raw before start+26h: 6240 of a, 10 of b; hourly before start+2h: 2 of a, 1 of b.
	if want := 6240 + 10 + 2 + 1; n != want {
		t.Errorf("PruneMetrics deleted %d, want %d", n, want)
	}
	raw := history(t, s, "a", start, now, fleet.ResolutionRaw)
	if len(raw) != 12000-6240 || !raw[0].At.Equal(start.Add(26*time.Hour)) {
		t.Errorf("a keeps %d raw points from %v, want %d from %v", len(raw), raw[0].At, 12000-6240, start.Add(26*time.Hour))
	}
	hourly := history(t, s, "a", start, now, fleet.ResolutionHourly)
	if len(hourly) != 48 || !hourly[0].At.Equal(start.Add(2*time.Hour)) {
		t.Errorf("a keeps %d hourly points from %v, want 48 from %v", len(hourly), hourly[0].At, start.Add(2*time.Hour))
	}
	for _, res := range []fleet.Resolution{fleet.ResolutionRaw, fleet.ResolutionHourly} {
		if got := history(t, s, "b", start, now, res); len(got) != 0 {
			t.Errorf("b keeps %d %s points, want none", len(got), res)
		}
	}
	// b's history can start again after its buckets were emptied.
	appendMetrics(t, s, "b", point(now, 5))
	if got := history(t, s, "b", start, now, fleet.ResolutionRaw); len(got) != 1 {
		t.Errorf("b has %d raw points after a new sample, want 1", len(got))
	}

	if n, err := s.PruneMetrics(now, 24*time.Hour, 48*time.Hour); err != nil || n != 0 {
		t.Errorf("second PruneMetrics = %d, %v; want 0, nil", n, err)
	}
	if n, err := s.PruneMetrics(now.Add(time.Hour), 0, 0); err != nil || n != 0 {
		t.Errorf("PruneMetrics without retentions = %d, %v; want 0, nil", n, err)
	}
}

func TestDeleteInstanceDeletesMetrics(t *testing.T) {
	s, _ := newStore(t)
	putInstances(t, s, "a", "b")
	appendMetrics(t, s, "a", point(t0, 10))
	appendMetrics(t, s, "b", point(t0, 20))
	if err := s.DeleteInstance("a"); err != nil {
		t.Fatal(err)
	}
	// A flush after the delete brings nothing back.
	appendMetrics(t, s, "a", point(t0.Add(30*time.Second), 10))
	for _, res := range []fleet.Resolution{fleet.ResolutionRaw, fleet.ResolutionHourly} {
		if got := history(t, s, "a", t0, t0.Add(time.Hour), res); len(got) != 0 {
			t.Errorf("deleted a has %s points %+v", res, got)
		}
		if got := history(t, s, "b", t0, t0.Add(time.Hour), res); len(got) != 1 {
			t.Errorf("b has %d %s points, want 1", len(got), res)
		}
	}
}
