package accounts

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are what an access token says of its bearer: the user (Subject),
// their role, their customer and the session the token was issued for.
type Claims struct {
	Role       Role   `json:"role"`
	CustomerID string `json:"cid,omitempty"`
	SessionID  string `json:"sid"`
	jwt.RegisteredClaims
}

// KeyStore keeps the signing keys.
type KeyStore interface {
	SigningKeys() ([]SigningKey, error)
	ReplaceSigningKeys(keys []SigningKey) error
}

// SignerOptions configure a Signer. Issuer and Audience are required.
type SignerOptions struct {
	Issuer   string // iss, e.g. the control plane's public URL
	Audience string // aud
	// AccessTTL is an access token's lifetime; 15 minutes if zero.
	AccessTTL time.Duration
	// RotateEvery is how long a key signs before the next one takes over;
	// 30 days if zero.
	RotateEvery time.Duration
	// Leeway is the clock skew Verify forgives; 30 seconds if zero.
	Leeway time.Duration
	Now    func() time.Time // time.Now if nil
}

// Signer issues and verifies access tokens: JWTs signed with EdDSA
// (Ed25519), their key named by the kid header. A new key takes over every
// RotateEvery; the ones before stay published, and good for verifying, as
// long as a token they signed may be unexpired, then are dropped.
type Signer struct {
	o  SignerOptions
	st KeyStore

	mu   sync.Mutex
	keys []SigningKey // oldest first; the last one signs

	// verified remembers the claims of tokens whose signature was checked,
	// until they expire: a client sends the same token with every request
	// for 15 minutes, and the Ed25519 check is most of a request's cost.
	vmu      sync.Mutex
	verified map[string]Claims
}

// maxVerified bounds the verified-token cache.
const maxVerified = 1 << 16

// NewSigner loads the key set from st, rotating it if it is due.
func NewSigner(st KeyStore, o SignerOptions) (*Signer, error) {
	if o.Issuer == "" || o.Audience == "" {
		return nil, errors.New("accounts: a signer needs an issuer and an audience")
	}
	o.AccessTTL = orDefault(o.AccessTTL, 15*time.Minute)
	o.RotateEvery = orDefault(o.RotateEvery, 30*24*time.Hour)
	o.Leeway = orDefault(o.Leeway, 30*time.Second)
	if o.Now == nil {
		o.Now = time.Now
	}
	keys, err := st.SigningKeys()
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	s := &Signer{o: o, st: st, keys: keys}
	if _, err := s.keySet(); err != nil {
		return nil, err
	}
	return s, nil
}

// orDefault returns d, or def if d is zero.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// keySet returns the keys in use now, after adding a key if the newest is
// due for rotation and dropping those no unexpired token can carry.
func (s *Signer) keySet() ([]SigningKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.o.Now()
	keys := s.keys
	changed := false
	if len(keys) == 0 || !now.Before(keys[len(keys)-1].CreatedAt.Add(s.o.RotateEvery)) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("accounts: generating a signing key: %w", err)
		}
		keys = append(slices.Clip(keys), SigningKey{ID: newID("key-"), PrivateKey: priv, CreatedAt: now})
		changed = true
	}
	// A key signs until its successor's creation; the last token it signed
	// is good for AccessTTL after that, give or take the leeway.
	for len(keys) > 1 && !now.Before(keys[1].CreatedAt.Add(s.o.AccessTTL+s.o.Leeway)) {
		keys = keys[1:]
		changed = true
	}
	if changed {
		if err := s.st.ReplaceSigningKeys(keys); err != nil {
			return nil, fmt.Errorf("accounts: %w", err)
		}
		s.keys = keys
	}
	return keys, nil
}

// Sign returns an access token carrying c's role, customer, session and
// subject, signed with the current key, and when it expires.
func (s *Signer) Sign(c Claims) (string, time.Time, error) {
	keys, err := s.keySet()
	if err != nil {
		return "", time.Time{}, err
	}
	key := keys[len(keys)-1]
	now := s.o.Now()
	c.RegisteredClaims = jwt.RegisteredClaims{
		Issuer:    s.o.Issuer,
		Subject:   c.Subject,
		Audience:  jwt.ClaimStrings{s.o.Audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(s.o.AccessTTL)),
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	t.Header["kid"] = key.ID
	signed, err := t.SignedString(ed25519.PrivateKey(key.PrivateKey))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("accounts: signing an access token: %w", err)
	}
	return signed, c.ExpiresAt.Time, nil
}

// Verify checks an access token — algorithm, key id, signature, expiry,
// issue time, issuer and audience — and returns its claims. Every refusal
// wraps ErrInvalidToken.
func (s *Signer) Verify(token string) (Claims, error) {
	now := s.o.Now()
	s.vmu.Lock()
	c, ok := s.verified[token]
	s.vmu.Unlock()
	if ok && now.Before(c.ExpiresAt.Add(s.o.Leeway)) {
		return c, nil
	}
	c, err := s.verify(token)
	if err == nil {
		s.remember(token, c, now)
	}
	return c, err
}

// remember caches the claims of a verified token; when the cache is full
// it first forgets the expired ones, then, if that is not enough, all.
func (s *Signer) remember(token string, c Claims, now time.Time) {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	if len(s.verified) >= maxVerified {
		maps.DeleteFunc(s.verified, func(_ string, c Claims) bool { return !now.Before(c.ExpiresAt.Add(s.o.Leeway)) })
		if len(s.verified) >= maxVerified {
			clear(s.verified)
		}
	}
	if s.verified == nil {
		s.verified = map[string]Claims{}
	}
	s.verified[token] = c
}

// verify is Verify without the cache.
func (s *Signer) verify(token string) (Claims, error) {
	keys, err := s.keySet()
	if err != nil {
		return Claims{}, err
	}
	var c Claims
	_, err = jwt.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		for _, k := range keys {
			if k.ID == kid {
				return ed25519.PrivateKey(k.PrivateKey).Public(), nil
			}
		}
		return nil, fmt.Errorf("unknown key id %q", kid)
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithIssuer(s.o.Issuer),
		jwt.WithAudience(s.o.Audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(s.o.Leeway),
		jwt.WithTimeFunc(s.o.Now),
	)
	if err == nil && (c.Subject == "" || c.Role == "") {
		err = errors.New("token has no subject or role")
	}
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	return c, nil
}

// JWKS returns the public keys as a JSON Web Key Set (RFC 7517, with the
// OKP key type of RFC 8037), newest first.
func (s *Signer) JWKS() ([]byte, error) {
	keys, err := s.keySet()
	if err != nil {
		return nil, err
	}
	type jwk struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		X   string `json:"x"`
		Kid string `json:"kid"`
		Use string `json:"use"`
		Alg string `json:"alg"`
	}
	set := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{}}
	for _, k := range slices.Backward(keys) {
		pub := ed25519.PrivateKey(k.PrivateKey).Public().(ed25519.PublicKey)
		set.Keys = append(set.Keys, jwk{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(pub),
			Kid: k.ID, Use: "sig", Alg: jwt.SigningMethodEdDSA.Alg()})
	}
	return json.Marshal(set)
}
