// Package dockertest gives tests the real Docker engine with a compose
// tool: a test that needs them and finds none is skipped, or fails under
// CI (see testenv.Missing). It builds the demo service's image FROM
// scratch once per test binary, with the script `make images` uses.
package dockertest

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stackpro/stackpro/internal/testenv"
)

// Require ends t through testenv.Missing when the Docker engine does not
// answer or there is no compose tool (the compose v2 plugin or
// docker-compose), as every stack needs one.
func Require(t testing.TB) {
	t.Helper()
	if err := exec.Command("docker", "version").Run(); err != nil {
		testenv.Missing(t, fmt.Sprintf("the Docker engine does not answer: %v", err))
	}
	if exec.Command("docker", "compose", "version").Run() != nil {
		if _, err := exec.LookPath("docker-compose"); err != nil {
			testenv.Missing(t, "no compose tool: neither the docker compose plugin nor docker-compose")
		}
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
