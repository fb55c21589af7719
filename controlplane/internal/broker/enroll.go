package broker

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Tokens redeems a one-time enrollment token for instanceID on behalf of
// publicKey, atomically (the store). Its error is Forbidden (package
// fault) when the token is no good.
type Tokens interface {
	RedeemToken(instanceID, token, publicKey string, now time.Time) error
}

// handleEnroll answers one EnrollRequest. Garbage and refusals are logged
// and answered; nothing is written unless the token is good. A request
// whose reply subject the server did not map for the enroll account's
// import is not read at all: its answer could land on any subject.
func (b *Broker) handleEnroll(m *nats.Msg) {
	if !strings.HasPrefix(m.Reply, mappedReplyPrefix) {
		b.log.Warn("enrollment request ignored: its reply subject does not lead back to the enroll account", "reply", m.Reply)
		return
	}
	reply := func(r protocol.EnrollReply) {
		r.V = protocol.Version
		data, _ := json.Marshal(r)
		if err := m.Respond(data); err != nil {
			b.log.Error("answering enrollment", "err", err)
		}
	}
	var req protocol.EnrollRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		b.log.Warn("enrollment refused: malformed request", "err", err, "bytes", len(m.Data))
		reply(protocol.EnrollReply{Code: protocol.EnrollBadRequest, Error: "malformed enrollment request"})
		return
	}
	if msg := validate(req); msg != "" {
		b.log.Warn("enrollment refused: invalid request", "instance", req.InstanceID, "problem", msg)
		reply(protocol.EnrollReply{Code: protocol.EnrollBadRequest, Error: msg})
		return
	}
	now := time.Now()
	err := b.tokens.RedeemToken(req.InstanceID, req.Token, req.PublicKey, now)
	switch {
	case errors.Is(err, fault.ErrForbidden):
		b.log.Warn("enrollment refused", "instance", req.InstanceID, "key", req.PublicKey, "reason", err)
		reply(protocol.EnrollReply{Code: protocol.EnrollRefused, Error: "enrollment refused"})
		return
	case err != nil:
		b.log.Error("enrollment failed", "instance", req.InstanceID, "err", err)
		reply(protocol.EnrollReply{Code: protocol.EnrollInternal, Error: "enrollment failed, try again"})
		return
	}
	b.auth.authorize(req.PublicKey, req.InstanceID)
	b.presence.Enrolled(req.InstanceID, now)
	b.log.Info("agent enrolled", "instance", req.InstanceID, "key", req.PublicKey,
		"hostname", req.Hostname, "agent_version", req.AgentVersion)
	reply(protocol.EnrollReply{OK: true, InstanceID: req.InstanceID, CommandKey: protocol.FormatCommandKey(b.CommandKey())})
}

// validate returns what is wrong with req, or "".
func validate(req protocol.EnrollRequest) string {
	switch {
	case req.V < 1:
		return "missing protocol version"
	case protocol.ValidInstanceID(req.InstanceID) != nil:
		return "invalid instance_id"
	case req.Token == "" || len(req.Token) > 256:
		return "invalid token"
	case !nkeys.IsValidPublicUserKey(req.PublicKey):
		return "public_key is not an NKey user public key"
	}
	return ""
}
