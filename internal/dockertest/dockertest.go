// Package dockertest gives tests the real Docker engine: it fails a test
// that needs one under CI=true when there is none (and skips it elsewhere),
// and builds the demo service's image FROM scratch once per test binary,
// with the script `make images` uses.
package dockertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Require skips t when the Docker engine does not answer, or fails it when
// CI=true: in CI a missing dependency is an error, never a skip.
func Require(t testing.TB) {
	t.Helper()
	if err := exec.Command("docker", "version").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and the Docker engine does not answer: %v", err)
		}
		t.Skipf("no Docker engine here: %v", err)
	}
}

var (
	once  sync.Once
	image string
	err   error
)

// DemoImage returns the tag of the demo service's image, building it on
// first use under a tag of this test binary's own.
func DemoImage(t testing.TB) string {
	t.Helper()
	Require(t)
	once.Do(func() {
		_, self, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(self), "..", "..", "deploy", "stacks", "build-images.sh")
		tag := fmt.Sprintf("stackpro-test/demo:%d", time.Now().UnixNano())
		out, buildErr := exec.Command("bash", script, tag).CombinedOutput()
		if buildErr != nil {
			err = fmt.Errorf("build-images.sh: %v\n%s", buildErr, out)
			return
		}
		image = tag
	})
	if err != nil {
		t.Fatal(err)
	}
	return image
}

// RemoveImage removes the image DemoImage built, if any; call it from TestMain.
func RemoveImage() {
	if image != "" {
		_ = exec.Command("docker", "rmi", "-f", image).Run()
	}
}
