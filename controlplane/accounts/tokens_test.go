package accounts_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/internal/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "data.db"), time.Second)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newSigner(t *testing.T, st *store.Store, clk *clock, issuer string) *accounts.Signer {
	t.Helper()
	s, err := accounts.NewSigner(st, accounts.SignerOptions{Issuer: issuer, Audience: "stackpro", Now: clk.Now})
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return s
}

func sign(t *testing.T, s *accounts.Signer, userID string) string {
	t.Helper()
	token, _, err := s.Sign(accounts.Claims{Role: accounts.RoleOperator, SessionID: "ses-1",
		RegisteredClaims: jwt.RegisteredClaims{Subject: userID}})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return token
}

func TestNewSignerNeedsIssuerAndAudience(t *testing.T) {
	if _, err := accounts.NewSigner(openStore(t), accounts.SignerOptions{Issuer: "https://cp.test"}); err == nil {
		t.Error("NewSigner without an audience succeeded")
	}
}

func TestSignVerify(t *testing.T) {
	clk := &clock{now: t0}
	s := newSigner(t, openStore(t), clk, "https://cp.test")
	c, err := s.Verify(sign(t, s, "usr-1"))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.Subject != "usr-1" || c.Role != accounts.RoleOperator || c.SessionID != "ses-1" || c.Issuer != "https://cp.test" ||
		!c.IssuedAt.Equal(t0) || !c.ExpiresAt.Equal(t0.Add(15*time.Minute)) || len(c.Audience) != 1 || c.Audience[0] != "stackpro" {
		t.Errorf("Verify = %+v", c)
	}
}

// segments splits a JWT into header, payload and signature, decoded.
func segments(t *testing.T, token string) (header, payload map[string]any, sig string) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q has %d parts", token, len(parts))
	}
	decode := func(s string) map[string]any {
		raw, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	return decode(parts[0]), decode(parts[1]), parts[2]
}

func encode(t *testing.T, m map[string]any) string {
	t.Helper()
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(raw)
}

func TestVerifyRefuses(t *testing.T) {
	clk := &clock{now: t0}
	st := openStore(t)
	s := newSigner(t, st, clk, "https://cp.test")
	good := sign(t, s, "usr-1")
	header, payload, sig := segments(t, good)
	kid := header["kid"].(string)
	keys, err := st.SigningKeys()
	if err != nil || len(keys) != 1 {
		t.Fatalf("SigningKeys = %v, %v, want one key", keys, err)
	}
	pub := ed25519.PrivateKey(keys[0].PrivateKey).Public().(ed25519.PublicKey)

	// with returns the token with its header and payload changed, the
	// signature kept.
	with := func(h, p map[string]any) string { return encode(t, h) + "." + encode(t, p) + "." + sig }
	edit := func(m map[string]any, k string, v any) map[string]any {
		out := map[string]any{}
		for key, val := range m {
			out[key] = val
		}
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	// signWith signs claims under the real kid.
	signWith := func(method jwt.SigningMethod, key any, claims map[string]any) string {
		tok := jwt.NewWithClaims(method, jwt.MapClaims(claims))
		tok.Header["kid"] = kid
		signed, err := tok.SignedString(key)
		if err != nil {
			t.Fatalf("signing with %s: %v", method.Alg(), err)
		}
		return signed
	}
	priv := ed25519.PrivateKey(keys[0].PrivateKey)
	if _, err := s.Verify(signWith(jwt.SigningMethodEdDSA, priv, payload)); err != nil {
		t.Fatalf("Verify(a token signed here like the real ones) = %v: the cases below prove nothing", err)
	}
	_, foreign, _ := ed25519.GenerateKey(rand.Reader)
	otherIssuer := newSigner(t, st, clk, "https://evil.test") // same keys, another issuer
	otherAudience, err := accounts.NewSigner(st, accounts.SignerOptions{Issuer: "https://cp.test", Audience: "elsewhere", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	future := &clock{now: t0.Add(time.Hour)}
	fromFuture := newSigner(t, st, future, "https://cp.test")

	tests := []struct {
		name  string
		token string
		after time.Duration // clock moves before Verify
	}{
		{"garbage", "not.a.token", 0},
		{"empty", "", 0},
		{"payload changed", with(header, edit(payload, "role", "admin")), 0},
		{"signature of another token", strings.Join(strings.Split(good, ".")[:2], ".") + "." + strings.Split(sign(t, s, "usr-2"), ".")[2], 0},
		{"alg none", signWith(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, payload), 0},
		{"alg HS256 keyed with the public key", signWith(jwt.SigningMethodHS256, []byte(pub), payload), 0},
		{"alg changed in header", with(edit(header, "alg", "HS256"), payload), 0},
		{"no kid", with(edit(header, "kid", nil), payload), 0},
		{"unknown kid", with(edit(header, "kid", "key-unknown"), payload), 0},
		{"foreign key, known kid", signWith(jwt.SigningMethodEdDSA, foreign, payload), 0},
		{"other issuer", sign(t, otherIssuer, "usr-1"), 0},
		{"other audience", sign(t, otherAudience, "usr-1"), 0},
		{"issued in the future", sign(t, fromFuture, "usr-1"), 0},
		{"no expiry", signWith(jwt.SigningMethodEdDSA, priv, edit(payload, "exp", nil)), 0},
		{"no subject", signWith(jwt.SigningMethodEdDSA, priv, edit(payload, "sub", nil)), 0},
		{"no role", signWith(jwt.SigningMethodEdDSA, priv, edit(payload, "role", nil)), 0},
		{"expired", good, 15*time.Minute + 31*time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifier := newSigner(t, st, &clock{now: t0.Add(tt.after)}, "https://cp.test")
			if _, err := verifier.Verify(tt.token); !errors.Is(err, accounts.ErrInvalidToken) {
				t.Errorf("Verify = %v, want ErrInvalidToken", err)
			}
		})
	}
	// The leeway forgives a little skew.
	if _, err := newSigner(t, st, &clock{now: t0.Add(15*time.Minute + 29*time.Second)}, "https://cp.test").Verify(good); err != nil {
		t.Errorf("Verify within the leeway = %v", err)
	}
}

type jwks struct {
	Keys []struct {
		Kty, Crv, X, Kid, Use, Alg string
	}
}

func readJWKS(t *testing.T, s *accounts.Signer) jwks {
	t.Helper()
	raw, err := s.JWKS()
	if err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	var set jwks
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatalf("JWKS %s: %v", raw, err)
	}
	return set
}

func kids(set jwks) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.Kid)
	}
	return out
}

// A third party verifies an access token with nothing but the JWKS.
func TestJWKSVerifiesTokens(t *testing.T) {
	s := newSigner(t, openStore(t), &clock{now: t0}, "https://cp.test")
	token := sign(t, s, "usr-1")
	set := readJWKS(t, s)
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS has %d keys, want 1", len(set.Keys))
	}
	k := set.Keys[0]
	if k.Kty != "OKP" || k.Crv != "Ed25519" || k.Use != "sig" || k.Alg != "EdDSA" || k.Kid == "" {
		t.Errorf("JWK = %+v", k)
	}
	x, err := base64.RawURLEncoding.DecodeString(k.X)
	if err != nil || len(x) != ed25519.PublicKeySize {
		t.Fatalf("x = %q: %v, want %d bytes of base64url", k.X, err, ed25519.PublicKeySize)
	}
	_, err = jwt.Parse(token, func(tok *jwt.Token) (any, error) {
		if tok.Header["kid"] != k.Kid {
			return nil, errors.New("unknown kid")
		}
		return ed25519.PublicKey(x), nil
	}, jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithTimeFunc(func() time.Time { return t0 }))
	if err != nil {
		t.Errorf("verifying with the JWKS key: %v", err)
	}
}

// A rotated key keeps verifying the tokens it signed until they expire,
// and is published until then, across restarts.
func TestKeyRotation(t *testing.T) {
	st := openStore(t)
	clk := &clock{now: t0}
	s := newSigner(t, st, clk, "https://cp.test")
	first := kids(readJWKS(t, s))

	clk.Advance(30*24*time.Hour - time.Minute)
	old := sign(t, s, "usr-1") // the last token of the first key
	clk.Advance(2 * time.Minute)
	fresh := sign(t, s, "usr-2")
	if h, _, _ := segments(t, fresh); h["kid"] == first[0] {
		t.Fatal("no new key after 30 days")
	}
	both := kids(readJWKS(t, s))
	if len(both) != 2 || both[1] != first[0] {
		t.Fatalf("JWKS kids = %v, want the new key then %s", both, first[0])
	}

	restarted := newSigner(t, st, clk, "https://cp.test")
	for name, token := range map[string]string{"old": old, "fresh": fresh} {
		if _, err := restarted.Verify(token); err != nil {
			t.Errorf("Verify(%s) after rotation and restart: %v", name, err)
		}
	}
	if got := kids(readJWKS(t, restarted)); strings.Join(got, ",") != strings.Join(both, ",") {
		t.Errorf("JWKS after restart = %v, want %v", got, both)
	}

	clk.Advance(15*time.Minute + 31*time.Second) // the old token has expired, leeway included
	if got := kids(readJWKS(t, restarted)); len(got) != 1 || got[0] != both[0] {
		t.Errorf("JWKS once the old key's tokens expired = %v, want [%s]", got, both[0])
	}
	if keys, err := st.SigningKeys(); err != nil || len(keys) != 1 {
		t.Errorf("stored keys = %d, %v, want the old one dropped", len(keys), err)
	}
	if _, err := restarted.Verify(sign(t, restarted, "usr-3")); err != nil {
		t.Errorf("Verify(a token of the remaining key) = %v", err)
	}
}

// TestVerifyCacheHonoursExpiry: a token verified once (and so cached) is
// still refused once it has expired.
func TestVerifyCacheHonoursExpiry(t *testing.T) {
	clk := &clock{now: t0}
	s := newSigner(t, openStore(t), clk, "https://cp.test")
	token := sign(t, s, "usr-1")
	for range 2 {
		if _, err := s.Verify(token); err != nil {
			t.Fatalf("Verify of a fresh token: %v", err)
		}
	}
	clk.Advance(16 * time.Minute) // past the 15 minutes and the 30 s leeway
	if _, err := s.Verify(token); !errors.Is(err, accounts.ErrInvalidToken) {
		t.Errorf("Verify of an expired, cached token: %v, want ErrInvalidToken", err)
	}
}
