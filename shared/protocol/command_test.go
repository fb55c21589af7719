package protocol_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

const self = "i-0123456789abcdef"

// request is a valid request for self, issued at `at` for a minute.
func request() protocol.CommandRequest {
	return protocol.CommandRequest{V: protocol.Version, ID: "cmd-01", Name: protocol.CommandPing, Target: self,
		Nonce: protocol.NewNonce(), IssuedAt: at, Expires: at.Add(time.Minute)}
}

func seal(t *testing.T, key ed25519.PrivateKey, req protocol.CommandRequest) []byte {
	t.Helper()
	data, err := protocol.Seal(key, req)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return data
}

// signRaw signs body as Seal would, without Seal's checks, to build what
// only a buggy or hostile control plane would send.
func signRaw(t *testing.T, key ed25519.PrivateKey, body []byte) []byte {
	t.Helper()
	data, err := json.Marshal(protocol.SignedCommand{V: protocol.Version, Request: body, Sig: ed25519.Sign(key, body)})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// mangle decodes a sealed command, lets fn change it and encodes it again.
func mangle(t *testing.T, data []byte, fn func(*protocol.SignedCommand)) []byte {
	t.Helper()
	var sc protocol.SignedCommand
	if err := json.Unmarshal(data, &sc); err != nil {
		t.Fatal(err)
	}
	fn(&sc)
	out, err := json.Marshal(sc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestOpen(t *testing.T) {
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	good := request()
	sealed := seal(t, key, good)
	bare, _ := json.Marshal(good)
	mistargeted := request()
	mistargeted.Target = "i-other"
	tooLong := request()
	tooLong.Expires = tooLong.IssuedAt.Add(protocol.MaxCommandLifetime + time.Second)
	tooLongBody, _ := json.Marshal(tooLong)
	noNonce := request()
	noNonce.Nonce = ""
	noNonceBody, _ := json.Marshal(noNonce)

	tests := []struct {
		name string
		data []byte
		key  ed25519.PublicKey
		now  time.Time
		want protocol.Refusal // empty: opens
	}{
		{"good", sealed, pub, at.Add(time.Second), ""},
		{"at the start of the skew before issue", sealed, pub, at.Add(-protocol.MaxClockSkew), ""},
		{"at the end of the skew after expiry", sealed, pub, good.Expires.Add(protocol.MaxClockSkew), ""},
		{"not JSON", []byte("ping"), pub, at, protocol.RefusedMalformed},
		{"empty", nil, pub, at, protocol.RefusedMalformed},
		{"a bare request", bare, pub, at, protocol.RefusedUnsigned},
		{"no signature", mangle(t, sealed, func(sc *protocol.SignedCommand) { sc.Sig = nil }), pub, at, protocol.RefusedUnsigned},
		{"no request", []byte(`{"v":4,"sig":"AAAA"}`), pub, at, protocol.RefusedUnsigned},
		{"flipped byte in the request", mangle(t, sealed, func(sc *protocol.SignedCommand) {
			sc.Request = bytes.Replace(sc.Request, []byte(`"ping"`), []byte(`"pong"`), 1)
		}), pub, at, protocol.RefusedForged},
		{"flipped byte in the signature", mangle(t, sealed, func(sc *protocol.SignedCommand) { sc.Sig[0] ^= 1 }), pub, at, protocol.RefusedForged},
		{"truncated signature", mangle(t, sealed, func(sc *protocol.SignedCommand) { sc.Sig = sc.Sig[:32] }), pub, at, protocol.RefusedForged},
		{"signed with another key", seal(t, otherKey, good), pub, at, protocol.RefusedForged},
		{"no key to check with", sealed, nil, at, protocol.RefusedForged},
		{"mistargeted", seal(t, key, mistargeted), pub, at, protocol.RefusedMistargeted},
		{"expired", sealed, pub, good.Expires.Add(protocol.MaxClockSkew + time.Second), protocol.RefusedExpired},
		{"not yet valid", sealed, pub, at.Add(-protocol.MaxClockSkew - time.Second), protocol.RefusedExpired},
		{"lifetime over the maximum", signRaw(t, key, tooLongBody), pub, at, protocol.RefusedMalformed},
		{"no nonce", signRaw(t, key, noNonceBody), pub, at, protocol.RefusedMalformed},
		{"signed garbage", signRaw(t, key, []byte(`[1,2]`)), pub, at, protocol.RefusedMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := protocol.Open(tt.data, tt.key, self, tt.now)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Open = %v, want the request", err)
				}
				if req.Nonce != good.Nonce || req.Name != good.Name || req.Target != self {
					t.Errorf("Open = %+v, want %+v", req, good)
				}
				return
			}
			var refusal *protocol.RefusalError
			if !errors.As(err, &refusal) {
				t.Fatalf("Open = %v, want a *protocol.RefusalError (%s)", err, tt.want)
			}
			if refusal.Reason != tt.want {
				t.Errorf("Open refused %q (%v), want %q", refusal.Reason, err, tt.want)
			}
		})
	}
}

func TestSealRefusesUnboundRequests(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(*protocol.CommandRequest)
	}{
		{"no target", func(r *protocol.CommandRequest) { r.Target = "" }},
		{"a target that is no instance id", func(r *protocol.CommandRequest) { r.Target = "stackpro.>" }},
		{"no nonce", func(r *protocol.CommandRequest) { r.Nonce = "" }},
		{"no issue time", func(r *protocol.CommandRequest) { r.IssuedAt = time.Time{} }},
		{"no expiry", func(r *protocol.CommandRequest) { r.Expires = time.Time{} }},
		{"expiring when issued", func(r *protocol.CommandRequest) { r.Expires = r.IssuedAt }},
		{"expiring before issue", func(r *protocol.CommandRequest) { r.Expires = r.IssuedAt.Add(-time.Second) }},
		{"lifetime over the maximum", func(r *protocol.CommandRequest) {
			r.Expires = r.IssuedAt.Add(protocol.MaxCommandLifetime + time.Second)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request()
			tt.change(&req)
			if data, err := protocol.Seal(key, req); err == nil {
				t.Errorf("Seal = %s, want an error", data)
			}
		})
	}
}

func TestNewNonceIsUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n := protocol.NewNonce()
		if seen[n] || len(n) != 22 {
			t.Fatalf("NewNonce = %q: repeated or not 16 bytes base64url", n)
		}
		seen[n] = true
	}
}

func TestCommandKeyRoundTrip(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := protocol.ParseCommandKey(protocol.FormatCommandKey(pub))
	if err != nil || !got.Equal(pub) {
		t.Fatalf("ParseCommandKey(FormatCommandKey(k)) = %v, %v; want k", got, err)
	}
	for _, bad := range []string{"", "not base64!", protocol.FormatCommandKey(pub[:31])} {
		if _, err := protocol.ParseCommandKey(bad); err == nil {
			t.Errorf("ParseCommandKey(%q) = nil error, want one", bad)
		}
	}
}

func TestDelayedAck(t *testing.T) {
	sent := make(chan struct{}, 1)
	send := func() { sent <- struct{}{} }

	protocol.DelayedAck(0, send)
	select {
	case <-sent:
	default:
		t.Error("DelayedAck(0) did not send at once")
	}

	done := protocol.DelayedAck(time.Hour, send)
	done()
	select {
	case <-sent:
		t.Error("an acknowledgement went out after done")
	default:
	}

	done = protocol.DelayedAck(time.Millisecond, send)
	select {
	case <-sent:
	case <-time.After(30 * time.Second):
		t.Fatal("a command still running was never acknowledged")
	}
	done()
}
