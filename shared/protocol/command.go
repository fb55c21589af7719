package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// SignedCommand is what travels on a CommandSubject: a CommandRequest's JSON
// exactly as signed, and the control plane's Ed25519 signature over it. The
// agent checks the signature before it reads a field, then the target,
// the validity window and the nonce.
type SignedCommand struct {
	V       int             `json:"v"`
	Request json.RawMessage `json:"request"`
	Sig     []byte          `json:"sig"`
}

// Refusal says why an agent would not run a request.
type Refusal string

// Refusals an agent answers and reports. A target (see
// EventTargetRefused) is refused as malformed, mistargeted or stale.
const (
	RefusedMalformed   Refusal = "malformed"
	RefusedUnsigned    Refusal = "unsigned"
	RefusedForged      Refusal = "forged"
	RefusedExpired     Refusal = "expired"
	RefusedReplayed    Refusal = "replayed"
	RefusedMistargeted Refusal = "mistargeted"
	RefusedUnknown     Refusal = "unknown_command"
	// RefusedStale: a target older than one the agent has seen.
	RefusedStale Refusal = "stale"
)

// RefusalError is Open's error: the refusal and what was wrong.
type RefusalError struct {
	Reason Refusal
	Detail string
}

func (e *RefusalError) Error() string {
	return "command refused (" + string(e.Reason) + "): " + e.Detail
}

func refuse(reason Refusal, format string, args ...any) *RefusalError {
	return &RefusalError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

const (
	// MaxClockSkew is how far the agent's clock may be from the control
	// plane's: a request is valid from IssuedAt-MaxClockSkew to
	// Expires+MaxClockSkew on the agent's clock.
	MaxClockSkew = 30 * time.Second
	// MaxCommandLifetime bounds Expires-IssuedAt, and with it how long an
	// agent must remember a nonce to refuse its replay.
	MaxCommandLifetime = time.Hour
	// ResultRetention is how long past its expiry an agent keeps a
	// request's outcome for CommandResult.
	ResultRetention = 24 * time.Hour
	// AckAfter is how long an Ack request runs before the agent answers
	// its acknowledgement: a command done sooner (a ping) has its outcome
	// as its only answer, which spares a fleet-wide run a third of its
	// messages.
	AckAfter = 100 * time.Millisecond
)

// DelayedAck calls send after d unless done is called first. done must be
// called before the outcome is answered: once it returns, no
// acknowledgement is sent, and one being sent has gone out, so an
// acknowledgement never follows its outcome.
// With d at most 0 it sends at once.
func DelayedAck(d time.Duration, send func()) (done func()) {
	if d <= 0 {
		send()
		return func() {}
	}
	var mu sync.Mutex
	finished := false
	timer := time.AfterFunc(d, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			send()
		}
	})
	return func() {
		timer.Stop()
		mu.Lock()
		finished = true
		mu.Unlock()
	}
}

// NewNonce returns 16 random bytes, base64url-encoded.
func NewNonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

// Seal signs req with key. The caller fills Target, Nonce, IssuedAt and
// Expires; Seal refuses a request without them, so nothing unbound is ever
// signed.
func Seal(key ed25519.PrivateKey, req CommandRequest) ([]byte, error) {
	switch {
	case ValidInstanceID(req.Target) != nil:
		return nil, fmt.Errorf("protocol: sealing %s: %w", req.Name, ValidInstanceID(req.Target))
	case req.Nonce == "":
		return nil, fmt.Errorf("protocol: sealing %s: no nonce", req.Name)
	case req.IssuedAt.IsZero() || !req.Expires.After(req.IssuedAt) || req.Expires.Sub(req.IssuedAt) > MaxCommandLifetime:
		return nil, fmt.Errorf("protocol: sealing %s: expiry must be after issue and at most %s later", req.Name, MaxCommandLifetime)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return json.Marshal(SignedCommand{V: Version, Request: body, Sig: ed25519.Sign(key, body)})
}

// Open checks a SignedCommand received by instance self at now against
// the control plane's key and returns its request. Every refusal is a
// *RefusalError. Open does not know which nonces were seen: the caller
// refuses replays (RefusedReplayed) by remembering each nonce until
// Expires+MaxClockSkew.
func Open(data []byte, key ed25519.PublicKey, self string, now time.Time) (CommandRequest, error) {
	var req CommandRequest
	var sc SignedCommand
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&sc); err != nil {
		return req, refuse(RefusedMalformed, "not a signed command: %v", err)
	}
	if len(sc.Request) == 0 || len(sc.Sig) == 0 {
		return req, refuse(RefusedUnsigned, "no signed request")
	}
	if len(key) != ed25519.PublicKeySize {
		return req, refuse(RefusedForged, "no control plane key to check it with")
	}
	if len(sc.Sig) != ed25519.SignatureSize || !ed25519.Verify(key, sc.Request, sc.Sig) {
		return req, refuse(RefusedForged, "signature does not verify")
	}
	if err := json.Unmarshal(sc.Request, &req); err != nil {
		return req, refuse(RefusedMalformed, "signed request: %v", err)
	}
	if req.Target != self {
		return req, refuse(RefusedMistargeted, "meant for %q", req.Target)
	}
	if req.Nonce == "" || req.Expires.Sub(req.IssuedAt) > MaxCommandLifetime || !req.Expires.After(req.IssuedAt) {
		return req, refuse(RefusedMalformed, "no nonce or no valid expiry")
	}
	if now.Before(req.IssuedAt.Add(-MaxClockSkew)) || now.After(req.Expires.Add(MaxClockSkew)) {
		return req, refuse(RefusedExpired, "valid %s to %s, now %s", req.IssuedAt.Format(time.RFC3339),
			req.Expires.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return req, nil
}

// ParseCommandKey decodes EnrollReply.CommandKey.
func ParseCommandKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("protocol: command key is not a base64 Ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}

// FormatCommandKey encodes a public key as EnrollReply.CommandKey.
func FormatCommandKey(key ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(key) }
