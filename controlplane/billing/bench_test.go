package billing_test

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkWebhook measures what a webhook costs before it is answered:
// verify the signature, record the event id, queue the event, into a real
// bbolt file; from one sender, and from 32 at once as Stripe delivers.
func BenchmarkWebhook(b *testing.B) {
	for _, senders := range []int{1, 32} {
		b.Run(fmt.Sprintf("senders=%d", senders), func(b *testing.B) {
			h := newHarness(b, false)
			payloads, sigs := make([][]byte, b.N), make([]string, b.N)
			at := time.Now()
			for i := range b.N {
				payloads[i] = event(fmt.Sprintf("evt_bench_%d", i), "invoice.paid", at, invoiceObj("c1", "sub_1", 2900))
				sigs[i] = sign(payloads[i], at)
			}
			var next atomic.Int64
			b.SetParallelism(max(senders/runtime.GOMAXPROCS(0), 1))
			b.ResetTimer()
			send := func() {
				i := next.Add(1) - 1
				if err := h.s.Webhook(payloads[i], sigs[i]); err != nil {
					b.Error(err)
				}
			}
			if senders == 1 {
				for range b.N {
					send()
				}
			} else {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						send()
					}
				})
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
