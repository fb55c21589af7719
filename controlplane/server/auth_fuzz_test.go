package server

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/internal/mail"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	dashboardapi "github.com/stackpro/stackpro/dashboard-api"
)

// authServer is the real API over the real accounts service and store,
// in process, with its mail in a file outbox.
type authServer struct {
	url    string
	svc    *accounts.Service
	outbox *mail.FileOutbox
}

func newAuthServer(tb testing.TB) authServer {
	tb.Helper()
	dir := tb.TempDir()
	st, err := store.Open(filepath.Join(dir, "stackpro.db"), time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	outbox, err := mail.NewFileOutbox(filepath.Join(dir, "mail"), "test@example.com")
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := accounts.NewSigner(st, accounts.SignerOptions{Issuer: "http://test", Audience: audience})
	if err != nil {
		tb.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := accounts.NewService(st, signer, mailer{outbox}, accounts.Options{Plans: []string{"starter"}, AppURL: "http://test",
		Hasher: accounts.Hasher{Memory: 64, Time: 1, Threads: 1}, Log: log})
	api, err := dashboardapi.New(dashboardapi.Options{Tokens: tokens{st, signer}, Auth: authAPI{svc, signer}, Log: log,
		Limits: dashboardapi.AuthLimits{PerIP: dashboardapi.Limit{Attempts: 1 << 30, Window: time.Second},
			PerAccount: dashboardapi.Limit{Attempts: 1 << 30, Window: time.Second}}})
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	tb.Cleanup(srv.Close)
	return authServer{url: srv.URL, svc: svc, outbox: outbox}
}

// FuzzAuthBodies posts arbitrary bodies to every public auth route of the
// real API over the real accounts service and store: whatever comes in,
// the answer is a problem document or a success, never a 500.
func FuzzAuthBodies(f *testing.F) {
	srv := newAuthServer(f)
	routes := []string{"signup", "token", "verify", "resend", "recover", "reset"}
	for _, seed := range []string{
		`{"email":"ann@example.com","password":"a long unusual passphrase","first_name":"Ann","last_name":"S","company":"A","plan":"starter"}`,
		`{"grant_type":"password","email":"ann@example.com","password":"a long unusual passphrase"}`,
		`{"grant_type":"refresh_token","refresh_token":"spr_x.y"}`,
		`{"token":"spv_AAAA","password":"x"}`, `{"email":"ann@example.com"}`,
		``, `null`, `[]`, `{}`, `{"email":1e999}`, `{"email":"a@b"}{"email":"c@d"}`, `{"email":"\u0000@x.y"}`,
		`{"email":"` + string(bytes.Repeat([]byte("é"), 300)) + `@x.y"}`, `{"plan":{"nested":[1,2,3]}}`, "\xff\xfe", `{"email":"a@b.c","email":"d@e.f"}`,
	} {
		for i := range routes {
			f.Add(uint8(i), []byte(seed))
		}
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := "/api/v1/auth/" + routes[int(route)%len(routes)]
		resp, err := http.Post(srv.url+path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 500 {
			t.Fatalf("POST %s %q: %d %s", path, body, resp.StatusCode, raw)
		}
		if resp.StatusCode >= 400 {
			var p struct{ Status int }
			if err := json.Unmarshal(raw, &p); err != nil || p.Status != resp.StatusCode {
				t.Errorf("POST %s %q: %d with a body that is not a problem document: %s", path, body, resp.StatusCode, raw)
			}
		}
	})
}
