package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/internal/testenv"
)

// chromium finds the browser the console test drives: $CHROMIUM, else the
// usual names on PATH. Without one the test skips, or fails under CI.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("$CHROMIUM: %v", err)
		}
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Missing(t, "no Chromium found ($CHROMIUM, chromium, chromium-browser, google-chrome); apt-get install chromium to run the console test")
	return ""
}

// browser is a headless Chromium tab on the console, with what its
// console said.
type browser struct {
	t    *testing.T
	ctx  context.Context
	out  *proctest.Output // Chromium's own output
	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
	dir  string // where screenshots go
	// artifacts is $TEST_ARTIFACTS: screenshots go there too.
	artifacts string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	// Not a STACKPRO_ variable: the control plane the test starts would
	// take it for configuration and refuse it.
	b := &browser{t: t, out: &proctest.Output{}, dir: t.TempDir(), artifacts: os.Getenv("TEST_ARTIFACTS")}
	path := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // the tests run as root
		chromedp.Flag("disable-gpu", true),
		chromedp.WindowSize(1440, 1000),
		chromedp.CombinedOutput(b.out),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	b.ctx = ctx
	if err := chromedp.Do(ctx); err != nil { // starts the browser and opens the tab
		cancel()
		cancelAlloc()
		t.Fatalf("starting %s: %v\n%s", path, err, b.out)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.msgs = append(b.msgs, m)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		<-done
		if t.Failed() {
			b.mu.Lock()
			defer b.mu.Unlock()
			for _, m := range b.msgs {
				t.Logf("browser console: %s", m)
			}
		}
	})
	return b
}

// do runs actions, failing the test on an error.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		b.fail(what, err)
	}
}

// eval evaluates a JavaScript expression into T.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.fail("evaluating "+expr, err)
	}
	return v
}

// waitJS waits until the JavaScript expression is truthy in the page.
// The deadline is generous: the machine may be slow, speed is not tested.
func (b *browser) waitJS(what, expr string, timeout time.Duration) {
	b.t.Helper()
	_, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		b.fail("waiting for "+what, err)
	}
}

// fail reports err with what the page showed, and a screenshot of it.
func (b *browser) fail(what string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`)); err == nil {
		b.t.Logf("the page said:\n%s", text)
	}
	if shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		b.save("console-failure.png", shot)
	}
	b.t.Fatalf("%s: %v", what, err)
}

// save writes a screenshot under the test's temp dir and, when
// $TEST_ARTIFACTS is set, there too; it returns the first path.
func (b *browser) save(name string, data []byte) string {
	b.t.Helper()
	path := filepath.Join(b.dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
	if dir := b.artifacts; dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			b.t.Fatal(err)
		}
		b.t.Logf("screenshot: %s", filepath.Join(dir, name))
	}
	return path
}

// screenshot takes a full-page PNG, checks it shows something and saves it.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	shot, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.fail("screenshot", err)
	}
	b.save(name, shot)
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		b.t.Fatalf("%s does not decode as PNG: %v", name, err)
	}
	if n := colours(img); n < 16 {
		b.t.Errorf("%s looks blank: %d colours", name, n)
	}
}

// colours counts the distinct colours of img, up to 1,000.
func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y += 3 {
		for x := r.Min.X; x < r.Max.X; x += 3 {
			cr, cg, cb, ca := img.At(x, y).RGBA()
			seen[[4]uint32{cr, cg, cb, ca}] = true
			if len(seen) >= 1000 {
				return len(seen)
			}
		}
	}
	return len(seen)
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

// TestConsoleInBrowser drives the ops console in headless Chromium: log in
// as an operator, watch an instance provisioned meanwhile turn online in
// the fleet table without a reload, open it, see its metrics chart and
// provisioning log, send it a command; then start a ping run to the whole
// fleet from the Runs page and follow it to its end.
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	b := newBrowser(t)
	data := filepath.Join(t.TempDir(), "data")
	httpAddr, natsAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
	t.Cleanup(func() { destroyInstances(t, data) })
	cp := startControlPlane(t, data, httpAddr, natsAddr, 0)
	base := "http://" + httpAddr

	// The page and its assets come with the headers the console relies on.
	for path, ctype := range map[string]string{"/": "text/html", "/console/app.js": "text/javascript", "/console/style.css": "text/css"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) ||
			resp.Header.Get("Cache-Control") != "no-cache" {
			t.Errorf("GET %s: %d %q %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); path == "/" && !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET /: Content-Security-Policy %q", csp)
		}
	}

	const email, password = "olga@example.com", "a long operator passphrase"
	operator := fmt.Sprintf(`{"email":%q,"password":%q,"first_name":"Olga","last_name":"Ops","role":"operator"}`, email, password)
	if code := call(t, base, http.MethodPost, "/api/v1/admin/operators", cp.token(), operator, nil); code != http.StatusCreated {
		t.Fatalf("creating an operator: %d", code)
	}

	// Log in through the form, as an operator does.
	b.do("opening the console", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	loadedAt := eval[float64](b, `window.stackpro.loadedAt`)
	b.do("marking the page", chromedp.Evaluate[chromedp.Void](`window.__notReloaded = true`))
	b.do("logging in",
		chromedp.SendKeys(chromedp.CSS("#login-email"), email),
		chromedp.SendKeys(chromedp.CSS("#login-password"), password),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#fleet-table")))
	b.waitJS("the empty fleet and the live stream",
		`document.querySelector('#live').dataset.state === 'connected' && document.querySelector('#fleet-count').textContent === '0 instances'`,
		time.Minute)
	if who := eval[string](b, `document.querySelector('#whoami').textContent`); who != email {
		t.Errorf("signed in as %q, want %q", who, email)
	}

	// Provision an instance while the page stays loaded: its row comes
	// over SSE and turns online.
	var started struct {
		Instance fleet.Instance
		Job      provision.Job
	}
	if code := cp.send(http.MethodPost, "/api/v1/instances", `{"customer":"cus_console","plan":"starter"}`, &started); code != http.StatusAccepted {
		t.Fatalf("POST /api/v1/instances: %d", code)
	}
	id := started.Instance.ID
	row := `#fleet-table tr[data-id=` + js(id) + `]`
	b.waitJS("the new instance's row", `document.querySelector(`+js(row)+`) !== null`, 2*time.Minute)
	b.waitJS("the instance online in the table",
		`document.querySelector(`+js(row+`[data-status="online"] .badge[data-status="online"]`)+`) !== null`, 4*time.Minute)
	if !eval[bool](b, `window.__notReloaded === true`) || eval[float64](b, `window.stackpro.loadedAt`) != loadedAt {
		t.Fatal("the page was reloaded; the row should have come over SSE")
	}
	b.waitJS("the fleet summary to count it", `document.querySelector('#fleet-total')?.textContent === '1'`, time.Minute)
	b.screenshot("console-fleet.png")

	// Open it: the chart draws, the provisioning log shows every step.
	b.do("opening the instance", chromedp.Click(chromedp.CSS(row+" a")), chromedp.WaitVisible(chromedp.CSS("#instance-view")))
	if hash := eval[string](b, `location.hash`); hash != "#/instances/"+id {
		t.Errorf("location.hash = %q, want #/instances/%s", hash, id)
	}
	b.waitJS("the metrics chart to draw",
		`document.querySelector('#metrics-chart [data-chart="cpu"] svg path.line, #metrics-chart [data-chart="cpu"] svg circle.dot') !== null`,
		3*time.Minute)
	job := cp.waitJob(started.Job.ID)
	if job.State != provision.JobSucceeded {
		t.Fatalf("provision job: %+v", job)
	}
	var logged []string
	for _, l := range job.Log {
		if !slices.Contains(logged, l.Step) {
			logged = append(logged, l.Step)
		}
	}
	if len(logged) == 0 {
		t.Fatalf("the provision job logged nothing: %+v", job)
	}
	provision := `#jobs details[data-job=` + js(job.ID) + `]`
	for _, step := range job.Steps {
		b.waitJS("step "+step+" done in the provisioning log",
			`document.querySelector(`+js(provision+` li[data-step=`+js(step)+`][data-done="true"]`)+`) !== null`, 2*time.Minute)
	}
	shown := eval[[]string](b, `[...new Set([...document.querySelectorAll(`+js(provision+` tr[data-step]`)+`)].map(tr => tr.dataset.step))]`)
	for _, step := range logged {
		if !slices.Contains(shown, step) {
			t.Errorf("the provisioning log lacks step %q: shows %v", step, shown)
		}
	}
	b.waitJS("the services of the stack", `document.querySelectorAll('#services tbody tr[data-service]').length > 0`, time.Minute)

	// A command through the form, its reply pretty-printed.
	b.do("sending ping",
		chromedp.SetValue(chromedp.CSS("#command-name"), "ping"),
		chromedp.Click(chromedp.CSS("#command-submit")))
	b.waitJS("the ping's reply", `document.querySelector('#command-result').dataset.state === 'ok'`, 2*time.Minute)
	if reply := eval[string](b, `document.querySelector('#command-reply').textContent`); !strings.Contains(reply, `"ok": true`) ||
		!strings.Contains(reply, id) {
		t.Errorf("ping reply shown as %q", reply)
	}
	b.screenshot("console.png")

	// The Runs page: its form offers the instance form's commands; a ping
	// to all runs to completion on the run's own page, updated live.
	b.do("opening the runs", chromedp.Click(chromedp.CSS("#nav-runs")), chromedp.WaitVisible(chromedp.CSS("#run-form")))
	if hash := eval[string](b, `location.hash`); hash != "#/runs" {
		t.Errorf("location.hash = %q, want #/runs", hash)
	}
	const options = `[...document.querySelectorAll(%q)].map(o => o.value)`
	if got, want := eval[[]string](b, fmt.Sprintf(options, "#run-command option")),
		eval[[]string](b, fmt.Sprintf(options, "#command-name option")); !slices.Equal(got, want) || len(got) == 0 {
		t.Errorf("the run form offers %v, the instance form %v", got, want)
	}
	b.waitJS("the empty runs list", `!document.querySelector('#runs-empty').hidden`, time.Minute)

	// Bad arguments are caught before sending; a selection the API
	// refuses shows its problem detail.
	formError := `document.querySelector('#run-form-error')`
	b.do("starting a run with arguments that are not an object",
		chromedp.SetValue(chromedp.CSS("#run-args"), "[1]"),
		chromedp.Click(chromedp.CSS("#run-submit")))
	b.waitJS("the arguments refused", `!`+formError+`.hidden && `+formError+`.textContent.includes('JSON object')`, time.Minute)
	b.do("starting a run to instances of a plan there is none of",
		chromedp.Evaluate[chromedp.Void](`void (document.querySelector('#run-args').value = '')`),
		chromedp.Click(chromedp.CSS("#run-scope-match")),
		chromedp.WaitVisible(chromedp.CSS("#run-plan")),
		chromedp.SendKeys(chromedp.CSS("#run-plan"), "no-such-plan"),
		chromedp.Click(chromedp.CSS("#run-submit")))
	b.waitJS("the API's refusal", formError+`.textContent.includes('matches no instance')`, time.Minute)
	b.screenshot("console-run-refused.png")
	if hash := eval[string](b, `location.hash`); hash != "#/runs" {
		t.Errorf("after a refused run, location.hash = %q, want #/runs", hash)
	}

	b.do("starting a ping run to all",
		chromedp.SetValue(chromedp.CSS("#run-command"), "ping"),
		chromedp.Click(chromedp.CSS("#run-scope-all")),
		chromedp.Click(chromedp.CSS("#run-submit")))
	b.waitJS("the run's page", `location.hash.startsWith('#/runs/r-') && !document.querySelector('#run-view').hidden`, time.Minute)
	runID := strings.TrimPrefix(eval[string](b, `decodeURIComponent(location.hash)`), "#/runs/")
	b.waitJS("the run completed with 1 succeeded",
		`document.querySelector('#run-view').dataset.state === 'completed' &&
		 document.querySelector('#run-counts [data-state="succeeded"] b')?.textContent === '1'`, 2*time.Minute)
	target := `#targets-table tr[data-instance=` + js(id) + `][data-state="succeeded"]`
	b.waitJS("the instance's target succeeded", `document.querySelector(`+js(target)+`) !== null`, time.Minute)
	if eval[bool](b, `!document.querySelector('#run-cancel').hidden`) {
		t.Error("a completed run still offers Cancel")
	}
	var run rollout.Run
	if code := cp.api(http.MethodGet, "/api/v1/runs/"+runID, &run); code != http.StatusOK {
		t.Fatalf("GET /api/v1/runs/%s: %d", runID, code)
	}
	if run.Spec.Command != "ping" || !run.Spec.Select.All || run.State != rollout.RunCompleted || run.Total != 1 ||
		run.Counts[rollout.TargetSucceeded] != 1 {
		t.Errorf("the run the form started: %+v", run)
	}
	b.screenshot("console-run.png")
	b.do("back to the runs", chromedp.Click(chromedp.CSS(`#run-view .crumbs a`)), chromedp.WaitVisible(chromedp.CSS("#runs-table")))
	b.waitJS("the run listed as completed",
		`document.querySelector(`+js(`#runs-table tr[data-id=`+js(runID)+`][data-state="completed"]`)+`) !== null`, time.Minute)
	b.screenshot("console-runs.png")

	if !eval[bool](b, `window.__notReloaded === true`) {
		t.Error("the page was reloaded")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.msgs {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("browser console: %s", m)
		}
	}
}
