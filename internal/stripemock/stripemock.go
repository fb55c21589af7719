// Package stripemock gives tests a real stripe-mock process (Stripe's own
// API simulator), on free ports, stopped when the test ends. `make test`
// installs it into bin/; a test that needs it and finds none is skipped,
// or fails under CI (see testenv.Missing).
package stripemock

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stackpro/stackpro/internal/testenv"
)

// Binary is where stripe-mock is looked for: $STRIPE_MOCK, the repo's
// bin/, then $PATH.
func Binary() (string, error) {
	if p := os.Getenv("STRIPE_MOCK"); p != "" {
		return p, nil
	}
	_, self, _, _ := runtime.Caller(0)
	if p := filepath.Join(filepath.Dir(self), "..", "..", "bin", "stripe-mock"); fileExists(p) {
		return p, nil
	}
	return exec.LookPath("stripe-mock")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Start runs stripe-mock for t and returns its HTTP base URL.
func Start(t testing.TB) string {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		testenv.Missing(t, fmt.Sprintf("no stripe-mock here (make test installs it into bin/): %v", err))
	}
	// Another process may take a free port before stripe-mock does: try a
	// few pairs.
	var last error
	for range 3 {
		httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
		cmd := exec.Command(bin, "-http-addr", httpAddr, "-https-addr", httpsAddr)
		logFile := filepath.Join(t.TempDir(), "stripe-mock.log")
		out, err := os.Create(logFile)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait(); out.Close() }()
		base := "http://" + httpAddr
		if last = waitUp(base, exited); last == nil {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			return base
		}
		_ = cmd.Process.Kill()
		<-exited
		logged, _ := os.ReadFile(logFile)
		last = fmt.Errorf("%w\n%s", last, logged)
	}
	t.Fatalf("stripe-mock did not start: %v", last)
	return ""
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitUp waits until stripe-mock answers at base, or it exits.
func waitUp(base string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("stripe-mock exited: %v", err)
		default:
		}
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/customers", nil)
		req.SetBasicAuth("sk_test_123", "")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("stripe-mock does not answer at %s", base)
}
