package monitor_test

import (
	"context"
	"encoding/json"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/controlplane/internal/monitor"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// BenchmarkMetricsIngest measures the durable way of a metrics sample:
// an agent's JetStream publish with a message id, the stream, the
// monitor's consumer, the store's write, and the acknowledgement that
// removes it from the stream. 10,000 samples are published as fast as
// JetStream acknowledges them (at most 256 unacknowledged, as a fleet of
// agents would have them), with the monitor writing every second; the
// clock stops when the last is stored and acknowledged. The CPU is the
// whole process's: broker, monitor, store and publisher together.
func BenchmarkMetricsIngest(b *testing.B) {
	n := 10_000
	if testing.Short() { // make test's smoke run
		n = 500
	}
	r := setup(b, func(o *monitor.Options) { o.PersistEvery = time.Second })
	js, err := jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(256))
	if err != nil {
		b.Fatal(err)
	}
	stream, err := js.Stream(context.Background(), protocol.MetricsStream)
	if err != nil {
		b.Fatal(err)
	}
	subject := protocol.AgentSubject(a, protocol.KindMetrics)
	base := time.Now().Add(-time.Duration(n*b.N+1) * time.Second).Truncate(time.Second)
	round := 0
	for b.Loop() {
		cpu0, start := cpuTime(b), time.Now()
		for i := range n {
			k := round*n + i
			data, _ := json.Marshal(metrics(a, base.Add(time.Duration(k)*time.Second), float64(k%100), 0, 0))
			if _, err := js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data}, jetstream.WithMsgID("bench-"+strconv.Itoa(k))); err != nil {
				b.Fatal(err)
			}
		}
		<-js.PublishAsyncComplete()
		round++
		proctest.Until(b, "every sample stored and acknowledged", func() bool {
			info, err := stream.Info(context.Background())
			return err == nil && info.State.Msgs == 0 && r.mon.Samples() == uint64(round*n)
		})
		took := time.Since(start)
		b.ReportMetric(float64(n)/took.Seconds(), "samples/s")
		b.ReportMetric((cpuTime(b)-cpu0).Seconds()*1e6/float64(n), "cpu-µs/sample")
	}
}

// cpuTime is the CPU this process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
