package broker

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fault"
)

type nobody struct{}

func (nobody) RedeemToken(string, string, string, time.Time) error { return fault.ErrForbidden }
func (nobody) Enrolled(string, time.Time) bool                     { return false }
func (nobody) Connected(string, bool, time.Time) bool              { return false }

// BenchmarkAgentAccounts measures what an instance's account costs the
// server: the time to make it with its imports and export, and the heap it
// keeps (with b.N accounts made, after a collection).
func BenchmarkAgentAccounts(b *testing.B) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	brk, err := Start(context.Background(), Options{Listen: "127.0.0.1:0", StoreDir: b.TempDir(), Tokens: nobody{},
		Presence: nobody{}, CommandKey: key, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer brk.Shutdown()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range b.N {
		if _, err := brk.auth.accounts.agent(fmt.Sprintf("i-bench%08d", i)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N)/1024, "heap-KiB/account")
}
