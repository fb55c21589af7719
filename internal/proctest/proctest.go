// Package proctest is where the tests' shared helpers live: it builds the
// project's binaries once per test process, finds free loopback addresses
// for them to listen on, keeps what they print while they run, and waits
// for a condition to hold (Until, Within) instead of sleeping.
package proctest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds stackpro-controlplane, stackpro-agent, stackctl and
// stackpro-sim (static, CGO off) once per test process and returns their directory.
// TestMain calls Cleanup after the tests.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "stackpro-test-bin-"); buildErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", binDir, "./controlplane/cmd/stackpro-controlplane",
			"./agent/cmd/stackpro-agent", "./controlplane/cmd/stackctl", "./controlplane/cmd/stackpro-sim")
		cmd.Dir, cmd.Env = filepath.Join(filepath.Dir(file), "..", ".."), append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Cleanup removes the binaries Binaries built.
func Cleanup() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// FreeAddr is a loopback address nothing listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Output collects a process's output; a test reads it while it grows.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}
