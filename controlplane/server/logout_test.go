package server

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/stackpro/stackpro/controlplane/accounts"
)

const testPassword = "a long unusual passphrase"

// post sends body as JSON with bearer (none if empty) and returns the
// status and the answer.
func (s authServer) post(t *testing.T, path, bearer, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: reading the answer: %v", path, err)
	}
	return resp.StatusCode, raw
}

var verifyLink = regexp.MustCompile(`token=(\S+)`)

// customer signs a customer up and verifies their address.
func (s authServer) customer(t *testing.T, email string) {
	t.Helper()
	_, err := s.svc.Signup(t.Context(), accounts.Meta{}, accounts.SignupInput{Email: email, Password: testPassword,
		FirstName: "A", LastName: "B", Company: "C", Plan: "starter"})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.outbox.Latest(email)
	if err != nil {
		t.Fatal(err)
	}
	m := verifyLink.FindStringSubmatch(msg.Text)
	if m == nil {
		t.Fatalf("no link in the email to %s:\n%s", email, msg.Text)
	}
	if err := s.svc.VerifyEmail(t.Context(), accounts.Meta{}, m[1]); err != nil {
		t.Fatal(err)
	}
}

type tokenPair struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

// grant asks POST /auth/token for a session and returns its status and,
// on a success, the tokens.
func (s authServer) grant(t *testing.T, body string) (int, tokenPair) {
	t.Helper()
	code, raw := s.post(t, "/api/v1/auth/token", "", body)
	var tp tokenPair
	if code == http.StatusOK {
		if err := json.Unmarshal(raw, &tp); err != nil {
			t.Fatalf("decoding %s: %v", raw, err)
		}
	}
	return code, tp
}

// login starts a session of the user with the address.
func (s authServer) login(t *testing.T, email string) tokenPair {
	t.Helper()
	code, tp := s.grant(t, `{"grant_type":"password","email":"`+email+`","password":"`+testPassword+`"}`)
	if code != http.StatusOK {
		t.Fatalf("login of %s: %d", email, code)
	}
	return tp
}

// refresh trades a refresh token for the next session tokens: 200 while
// its session lives.
func (s authServer) refresh(t *testing.T, token string) (int, tokenPair) {
	t.Helper()
	return s.grant(t, `{"grant_type":"refresh_token","refresh_token":"`+token+`"}`)
}

// TestLogoutOwnership ends sessions through the real API, accounts
// service and store: the bearer credentials say who asks, and a session
// ends only when its user or an admin (a user or an API token) asks.
// Anyone else is refused, and the session goes on.
func TestLogoutOwnership(t *testing.T) {
	srv := newAuthServer(t)
	srv.customer(t, "ann@example.com")
	srv.customer(t, "bob@example.com")
	for email, role := range map[string]accounts.Role{"oscar@stackpro.example": accounts.RoleOperator, "ada@stackpro.example": accounts.RoleAdmin} {
		if _, err := srv.svc.CreateOperator(t.Context(), accounts.Meta{}, email, testPassword, "O", "P", role); err != nil {
			t.Fatal(err)
		}
	}
	apiToken := func(role accounts.Role) string {
		token, _, err := srv.svc.CreateAPIToken(t.Context(), accounts.Meta{}, "ci-"+string(role), role)
		if err != nil {
			t.Fatal(err)
		}
		return token
	}
	ann := srv.login(t, "ann@example.com")
	logout := func(bearer, refreshToken string) (int, []byte) {
		return srv.post(t, "/api/v1/auth/logout", bearer, `{"refresh_token":"`+refreshToken+`"}`)
	}

	for _, tt := range []struct{ who, bearer string }{
		{"another customer", srv.login(t, "bob@example.com").AccessToken},
		{"an operator", srv.login(t, "oscar@stackpro.example").AccessToken},
		{"an operator's API token", apiToken(accounts.RoleOperator)},
	} {
		code, raw := logout(tt.bearer, ann.RefreshToken)
		var p struct{ Detail string }
		if err := json.Unmarshal(raw, &p); code != http.StatusForbidden || err != nil ||
			p.Detail != "the session is another user's: only its user or an admin may end it" {
			t.Errorf("%s ending ann's session: %d %s, want 403 with why", tt.who, code, raw)
		}
		code, next := srv.refresh(t, ann.RefreshToken)
		if code != http.StatusOK {
			t.Fatalf("ann's session after %s tried to end it: refresh answered %d, want 200", tt.who, code)
		}
		ann = next
	}

	for _, tt := range []struct{ who, bearer string }{
		{"its user", ann.AccessToken},
		{"an admin", srv.login(t, "ada@stackpro.example").AccessToken},
		{"an admin's API token", apiToken(accounts.RoleAdmin)},
	} {
		session := srv.login(t, "ann@example.com")
		if code, raw := logout(tt.bearer, session.RefreshToken); code != http.StatusNoContent {
			t.Errorf("%s ending ann's session: %d %s, want 204", tt.who, code, raw)
		}
		if code, _ := srv.refresh(t, session.RefreshToken); code != http.StatusUnauthorized {
			t.Errorf("refreshing after %s ended the session: %d, want 401", tt.who, code)
		}
	}
}
