package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/internal/proctest"
)

// call makes one JSON request with an optional bearer token and decodes
// the answer into out when it is a success.
func call(t *testing.T, base, method, path, token, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// linkToken is the token in the link of the newest email to addr.
func linkToken(t *testing.T, outbox *mail.FileOutbox, addr string) string {
	t.Helper()
	msg, err := outbox.Latest(addr)
	if err != nil {
		t.Fatalf("no email to %s: %v", addr, err)
	}
	m := regexp.MustCompile(`token=([A-Za-z0-9_\-.]+)`).FindStringSubmatch(msg.Text)
	if m == nil {
		t.Fatalf("no token link in the email to %s:\n%s", addr, msg.Text)
	}
	return m[1]
}

type session struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

// TestAccountsEndToEnd signs a customer up through the real control plane,
// reads the verification email from the file outbox, logs in, sees only
// their own instance, rotates and reuses a refresh token, resets the
// password, and runs into the login limit.
func TestAccountsEndToEnd(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	t.Cleanup(func() { destroyInstances(t, data) })
	cp := startControlPlane(t, data, proctest.FreeAddr(t), proctest.FreeAddr(t), 0, "STACKPRO_AUTH_PER_ACCOUNT_ATTEMPTS=4")
	base := "http://" + cp.httpAddr
	outbox, err := mail.NewFileOutbox(filepath.Join(data, "mail"), "test@example.com")
	if err != nil {
		t.Fatal(err)
	}
	const email, password = "ann@acme.example", "a long and unusual passphrase"

	signup := `{"email":"` + email + `","password":"` + password + `","first_name":"Ann","last_name":"Smith","company":"Acme","plan":"starter"}`
	if code := call(t, base, "POST", "/api/v1/auth/signup", "", signup, nil); code != http.StatusAccepted {
		t.Fatalf("signup: %d", code)
	}
	login := `{"grant_type":"password","email":"` + email + `","password":"` + password + `"}`
	if code := call(t, base, "POST", "/api/v1/auth/token", "", login, nil); code != http.StatusForbidden {
		t.Errorf("login before verifying: %d, want 403", code)
	}
	verify := `{"token":"` + linkToken(t, outbox, email) + `"}`
	if code := call(t, base, "POST", "/api/v1/auth/verify", "", verify, nil); code != http.StatusOK {
		t.Fatalf("verify: %d", code)
	}
	if code := call(t, base, "POST", "/api/v1/auth/verify", "", verify, nil); code != http.StatusUnauthorized {
		t.Errorf("verifying twice: %d, want 401", code)
	}
	var s session
	if code := call(t, base, "POST", "/api/v1/auth/token", "", login, &s); code != http.StatusOK || s.AccessToken == "" {
		t.Fatalf("login: %d %+v", code, s)
	}
	var me struct {
		ID       string
		Email    string
		Customer struct{ ID, Status, Plan string }
	}
	if code := call(t, base, "GET", "/api/v1/me", s.AccessToken, "", &me); code != http.StatusOK ||
		me.Email != email || me.Customer.Status != "trial" || me.Customer.Plan != "starter" {
		t.Fatalf("me: %d %+v", code, me)
	}
	var jwks struct {
		Keys []struct{ Kid, Kty, Crv string }
	}
	if code := call(t, base, "GET", "/.well-known/jwks.json", "", "", &jwks); code != http.StatusOK ||
		len(jwks.Keys) == 0 || jwks.Keys[0].Crv != "Ed25519" {
		t.Errorf("jwks: %d %+v", code, jwks)
	}

	// The operator provisions an instance for this customer and one for
	// another; the customer sees only theirs and cannot act on it.
	var mine, theirs struct{ Instance fleet.Instance }
	cp.send(http.MethodPost, "/api/v1/instances", fmt.Sprintf(`{"customer":%q,"plan":"starter"}`, me.Customer.ID), &mine)
	cp.send(http.MethodPost, "/api/v1/instances", `{"customer":"cus_other","plan":"starter"}`, &theirs)
	var list struct{ Instances []fleet.Instance }
	if code := call(t, base, "GET", "/api/v1/instances", s.AccessToken, "", &list); code != http.StatusOK ||
		len(list.Instances) != 1 || list.Instances[0].ID != mine.Instance.ID {
		t.Errorf("the customer's instances: %d %+v, want only %s", code, list.Instances, mine.Instance.ID)
	}
	if code := call(t, base, "GET", "/api/v1/instances/"+theirs.Instance.ID, s.AccessToken, "", nil); code != http.StatusNotFound {
		t.Errorf("another customer's instance: %d, want 404", code)
	}
	if code := call(t, base, "DELETE", "/api/v1/instances/"+mine.Instance.ID, s.AccessToken, "", nil); code != http.StatusForbidden {
		t.Errorf("a customer terminating: %d, want 403", code)
	}

	// The admin makes an operator, who logs in and sees the whole fleet.
	operator := `{"email":"oscar@stackpro.example","password":"an operator passphrase","first_name":"Oscar","last_name":"Olsen","role":"operator"}`
	if code := call(t, base, "POST", "/api/v1/admin/operators", cp.token(), operator, nil); code != http.StatusCreated {
		t.Fatalf("creating an operator: %d", code)
	}
	if code := call(t, base, "POST", "/api/v1/admin/operators", s.AccessToken, operator, nil); code != http.StatusForbidden {
		t.Errorf("a customer creating an operator: %d, want 403", code)
	}
	var opSession session
	opLogin := `{"grant_type":"password","email":"oscar@stackpro.example","password":"an operator passphrase"}`
	if code := call(t, base, "POST", "/api/v1/auth/token", "", opLogin, &opSession); code != http.StatusOK {
		t.Fatalf("operator login: %d", code)
	}
	if code := call(t, base, "GET", "/api/v1/instances", opSession.AccessToken, "", &list); code != http.StatusOK || len(list.Instances) != 2 {
		t.Errorf("the operator's instances: %d, %d of them, want both", code, len(list.Instances))
	}

	// Refresh rotates; presenting the old token again revokes the family.
	var s2 session
	refresh := func(tok string, out any) int {
		return call(t, base, "POST", "/api/v1/auth/token", "", `{"grant_type":"refresh_token","refresh_token":"`+tok+`"}`, out)
	}
	if code := refresh(s.RefreshToken, &s2); code != http.StatusOK || s2.RefreshToken == s.RefreshToken {
		t.Fatalf("refresh: %d", code)
	}
	if code := refresh(s.RefreshToken, nil); code != http.StatusUnauthorized {
		t.Errorf("reusing a rotated refresh token: %d, want 401", code)
	}
	if code := refresh(s2.RefreshToken, nil); code != http.StatusUnauthorized {
		t.Errorf("the family's newest token after a reuse: %d, want 401", code)
	}

	// A reset ends every session; the new password works, the old does not.
	if code := call(t, base, "POST", "/api/v1/auth/recover", "", `{"email":"`+email+`"}`, nil); code != http.StatusAccepted {
		t.Fatalf("recover: %d", code)
	}
	if code := call(t, base, "POST", "/api/v1/auth/recover", "", `{"email":"nobody@acme.example"}`, nil); code != http.StatusAccepted {
		t.Errorf("recover for an unknown address: %d, want the same 202", code)
	}
	const newPassword = "another long unusual passphrase"
	reset := `{"token":"` + linkToken(t, outbox, email) + `","password":"` + newPassword + `"}`
	if code := call(t, base, "POST", "/api/v1/auth/reset", "", reset, nil); code != http.StatusOK {
		t.Fatalf("reset: %d", code)
	}
	if code := call(t, base, "POST", "/api/v1/auth/token", "", login, nil); code != http.StatusUnauthorized {
		t.Errorf("login with the old password: %d, want 401", code)
	}
	// That was the 3rd password attempt at this account (limit 4): the
	// 4th works, the 5th is refused even with the right password.
	newLogin := strings.Replace(login, password, newPassword, 1)
	if code := call(t, base, "POST", "/api/v1/auth/token", "", newLogin, nil); code != http.StatusOK {
		t.Errorf("login with the new password: %d", code)
	}
	if code := call(t, base, "POST", "/api/v1/auth/token", "", newLogin, nil); code != http.StatusTooManyRequests {
		t.Errorf("login past the limit: %d, want 429", code)
	}
}
