package stackctl

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
)

func TestLogin(t *testing.T) {
	e := newTestEnv(t)

	// A config left readable by others is replaced by one only its owner reads.
	if err := os.WriteFile(e.config, []byte(`{"url":"http://old.example","token":"old"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	res := exec(context.Background(), tokenOperator+"\n", "login", "--url", e.url, "--token-stdin")
	wantCode(t, res, ExitOK, "login with an operator's API token")
	if !strings.Contains(res.stdout, `with the API token "oscar" (operator)`) {
		t.Errorf("login said %q", res.stdout)
	}
	if strings.Contains(res.stdout+res.stderr, tokenOperator) {
		t.Errorf("login printed the token:\n%s%s", res.stdout, res.stderr)
	}
	fi, err := os.Stat(e.config)
	if err != nil {
		t.Fatalf("config not saved: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode = %v, want 0600", fi.Mode().Perm())
	}
	var saved config
	data, _ := os.ReadFile(e.config)
	if err := json.Unmarshal(data, &saved); err != nil || saved != (config{URL: e.url, Token: tokenOperator}) {
		t.Errorf("saved config = %+v (%v), want the URL and the token", saved, err)
	}

	// The saved login serves the next commands.
	res = exec(context.Background(), "", "instances", "ls")
	wantCode(t, res, ExitOK, "instances ls with the saved login")

	// An admin's user token from the environment; the URL is the saved one.
	t.Setenv(envToken, tokenAdmin)
	res = exec(context.Background(), "", "login")
	wantCode(t, res, ExitOK, "login with an admin's token from the environment")
	if !strings.Contains(res.stdout, "ada@ops.example (admin)") {
		t.Errorf("login said %q, want who the token is", res.stdout)
	}
	t.Setenv(envToken, "")

	before, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, token string
		want        string
	}{
		{"customer", tokenCustomer, "stackctl needs an operator's or an admin's"},
		{"unknown", "sp_nobody", "invalid bearer token"},
	} {
		res = exec(context.Background(), tt.token+"\n", "login", "--url", e.url, "--token-stdin")
		wantCode(t, res, ExitAuth, "login with a "+tt.name+" token")
		if !strings.Contains(res.stderr, tt.want) {
			t.Errorf("login with a %s token: stderr %q, want %q", tt.name, res.stderr, tt.want)
		}
		if after, err := os.ReadFile(e.config); err != nil || string(after) != string(before) {
			t.Errorf("login with a %s token changed the saved login: %q (%v), was %q", tt.name, after, err, before)
		}
	}

	res = exec(context.Background(), "", "login", "--url", e.url, "--token-stdin")
	wantCode(t, res, ExitUsage, "login with an empty standard input")
	res = exec(context.Background(), "", "login", "--url", "ftp://x", "--token-stdin")
	wantCode(t, res, ExitUsage, "login with a bad URL")

	res = exec(context.Background(), "", "logout")
	wantCode(t, res, ExitOK, "logout")
	if _, err := os.Stat(e.config); !os.IsNotExist(err) {
		t.Errorf("logout left the config: %v", err)
	}
	res = exec(context.Background(), "", "instances", "ls")
	wantCode(t, res, ExitAuth, "instances ls after logout")
}

func TestLoginNeedsAToken(t *testing.T) {
	e := newTestEnv(t)
	res := exec(t.Context(), "", "login", "--url", e.url)
	wantCode(t, res, ExitUsage, "login without a token or a terminal")
	if !strings.Contains(res.stderr, "--token-stdin") {
		t.Errorf("stderr %q does not say how to give the token", res.stderr)
	}
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	e := newTestEnv(t)
	t.Setenv(envURL, e.url)
	t.Setenv(envToken, "sp_nobody")
	res := exec(context.Background(), "", "instances", "ls")
	wantCode(t, res, ExitAuth, "a refused token from the environment")
	if !strings.Contains(res.stderr, "401") || !strings.Contains(res.stderr, "request id") {
		t.Errorf("stderr %q, want the status and the request id", res.stderr)
	}
	res = exec(context.Background(), "", "--token", tokenOperator, "instances", "ls")
	wantCode(t, res, ExitOK, "--token over the environment's")
}

func TestUnexpectedErrors(t *testing.T) {
	e := newTestEnv(t)
	res := exec(context.Background(), "", "--url", e.url, "--token", tokenBroken, "instances", "ls")
	wantCode(t, res, ExitFailure, "a server error")
	if !strings.Contains(res.stderr, "500 Internal Server Error: internal error (request id ") {
		t.Errorf("stderr %q, want the problem and its request id", res.stderr)
	}
	closed := httptest.NewServer(nil)
	closed.Close()
	res = exec(context.Background(), "", "--url", closed.URL, "--token", tokenOperator, "runs", "ls")
	wantCode(t, res, ExitFailure, "an unreachable server")
}

func TestInstancesList(t *testing.T) {
	e := newTestEnv(t)
	res := e.stackctl(t, "instances", "ls")
	wantCode(t, res, ExitOK, "instances ls")
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 5 {
		t.Fatalf("instances ls printed %d lines, want a header and 4:\n%s", len(lines), res.stdout)
	}
	if f := strings.Fields(lines[0]); !slices.Equal(f, []string{"ID", "CUSTOMER", "PLAN", "REGION", "STATUS", "VERSION", "LAST", "SEEN", "TAGS"}) {
		t.Errorf("header = %q", lines[0])
	}
	if f := strings.Fields(lines[2]); !slices.Equal(f[:6], []string{"i-b", "cus_b", "pro", "eu-west-1", "online", "1.4.0"}) ||
		!strings.HasSuffix(f[7], "ago") || f[8] != "env=prod,tier=gold" {
		t.Errorf("line of i-b = %q", lines[2])
	}

	res = e.stackctl(t, "instances", "ls", "--select", "tag.env=prod,region=eu-west-1,plan=basic", "--json")
	wantCode(t, res, ExitOK, "instances ls --select --json")
	var insts []fleet.Instance
	if err := json.Unmarshal([]byte(res.stdout), &insts); err != nil {
		t.Fatalf("--json: %v\n%s", err, res.stdout)
	}
	if len(insts) != 1 || insts[0].ID != "i-c" || insts[0].Status != fleet.StatusOnline {
		t.Errorf("--select picked %+v, want i-c online", insts)
	}

	res = e.stackctl(t, "instances", "ls", "--select", "colour=red")
	wantCode(t, res, ExitUsage, "a bad selector")
}

func TestInstancesListReadsEveryPage(t *testing.T) {
	var many []fleet.Instance
	for i := range pageLimit + 100 {
		many = append(many, fleet.Instance{ID: fmt.Sprintf("i-x%04d", i), Provider: "local", Tags: map[string]string{"batch": "x"}})
	}
	e := newTestEnv(t, many...)
	res := e.stackctl(t, "instances", "ls", "--select", "tag.batch=x,status=provisioning", "--json")
	wantCode(t, res, ExitOK, "instances ls")
	var insts []fleet.Instance
	if err := json.Unmarshal([]byte(res.stdout), &insts); err != nil {
		t.Fatalf("--json: %v", err)
	}
	if len(insts) != len(many) || insts[0].ID != many[0].ID || insts[len(insts)-1].ID != many[len(many)-1].ID {
		t.Errorf("instances ls listed %d instances, want the %d of two pages", len(insts), len(many))
	}
}

func TestInstanceShowAndTag(t *testing.T) {
	e := newTestEnv(t)
	res := e.stackctl(t, "instances", "show", "i-a")
	wantCode(t, res, ExitOK, "instances show")
	for _, want := range []string{"Customer:", "cus_a", "online, connected", "version 3 (docker compose)", "Services:", "web", "healthy", "env=prod"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("instances show lacks %q:\n%s", want, res.stdout)
		}
	}
	res = e.stackctl(t, "instances", "show", "i-zz")
	wantCode(t, res, ExitNotFound, "instances show of an unknown instance")

	res = e.stackctl(t, "instances", "tag", "i-b", "env=staging", "owner=ops", "--remove", "tier")
	wantCode(t, res, ExitOK, "instances tag")
	inst, err := e.tracker.Get("i-b", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"env": "staging", "owner": "ops"}; !reflect.DeepEqual(inst.Tags, want) {
		t.Errorf("tags = %v, want %v", inst.Tags, want)
	}
	for _, args := range [][]string{{"i-b"}, {"i-b", "novalue"}, {"i-b", "Bad Key=x"}} {
		res = e.stackctl(t, append([]string{"instances", "tag"}, args...)...)
		wantCode(t, res, ExitUsage, "instances tag "+strings.Join(args, " "))
	}
	res = e.stackctl(t, "instances", "tag", "i-zz", "a=b")
	wantCode(t, res, ExitNotFound, "instances tag of an unknown instance")
}
