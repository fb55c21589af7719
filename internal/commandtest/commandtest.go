// Package commandtest is the one table of signed requests that every
// implementation of the agent's command checks must answer alike: the
// agent itself (agent/) and the fleet simulator's copy of its checks
// (controlplane/internal/fleetsim). Check sends each case to an agent and
// compares its answers with the table's: the refusal and its reason, an
// outcome, and what command.result says of an earlier request. The
// package imports only the wire contract, so the agent's tests can use it
// without importing the control plane.
package commandtest

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Answer is what Check compares of a CommandReply.
type Answer struct {
	OK bool
	// Refused is the reason of a refusal; a reply neither OK nor refused
	// is a command that failed.
	Refused protocol.Refusal
	// Echoed: the reply names the request's id and nonce, which an agent
	// reads only from a request whose signature verified.
	Echoed bool
	// Known, Finished and Succeeded are command.result's answer about the
	// nonce it asked after: the agent received it, the command has an
	// outcome, and the outcome is OK.
	Known, Finished, Succeeded bool
}

// Send delivers data on the command subject of the agent under test and
// returns its first answer.
type Send func(t testing.TB, data []byte) protocol.CommandReply

// Check sends every case, each a subtest, to the agent of instance target
// through send; the agent trusts key. The cases run in order on the same
// agent, each with requests of its own.
func Check(t *testing.T, target string, key ed25519.PrivateKey, send Send) {
	t.Helper()
	b := builder{t: t, key: key, target: target, now: time.Now()}
	for _, c := range cases(b) {
		t.Run(c.name, func(t *testing.T) {
			for i, s := range c.steps {
				reply := send(t, s.data)
				if got := answer(t, reply, s.req); got != s.want {
					t.Errorf("message %d: answer %+v, want %+v\nreply: %+v", i+1, got, s.want, reply)
				}
				if reply.V != protocol.Version || reply.InstanceID != target || reply.State != "" || !reply.OK && reply.Error == "" {
					t.Errorf("message %d: reply %+v, want an outcome of version %d from %s, with an error unless OK",
						i+1, reply, protocol.Version, target)
				}
			}
		})
	}
}

// answer reads reply, the answer to req.
func answer(t testing.TB, reply protocol.CommandReply, req protocol.CommandRequest) Answer {
	t.Helper()
	a := Answer{OK: reply.OK, Refused: reply.Refused, Echoed: req.ID != "" && reply.ID == req.ID && reply.Nonce == req.Nonce}
	if req.Name == protocol.CommandResult && reply.OK {
		var res protocol.ResultReply
		if err := json.Unmarshal(reply.Result, &res); err != nil {
			t.Errorf("command.result answered %s: %v", reply.Result, err)
		}
		a.Known, a.Finished = res.Known, res.Reply != nil
		a.Succeeded = a.Finished && res.Reply.OK
	}
	return a
}

// testCase is messages sent in order, each with the answer it must get.
type testCase struct {
	name  string
	steps []step
}

type step struct {
	data []byte
	// req is the request data carries, if any, to see it echoed; a reply
	// to data without one echoes nothing.
	req  protocol.CommandRequest
	want Answer
}

// Answers the cases want.
var (
	ok     = Answer{OK: true, Echoed: true}
	failed = Answer{Echoed: true}
	// notKnown is command.result's answer about a nonce the agent never
	// accepted.
	notKnown = ok
)

func refused(r protocol.Refusal, echoed bool) Answer { return Answer{Refused: r, Echoed: echoed} }

// cases is the table. Each case sends requests of its own, so that a
// case means the same whatever ran before it.
func cases(b builder) []testCase {
	ping := func() protocol.CommandRequest { return b.request(protocol.CommandPing, nil) }
	badArgs := b.request(protocol.CommandPing, "crm") // arguments are objects
	unknown := b.request("shell", map[string]string{"cmd": "id"})
	expired := ping()
	expired.IssuedAt, expired.Expires = b.now.Add(-2*time.Hour), b.now.Add(-time.Hour)
	early := ping()
	early.IssuedAt, early.Expires = b.now.Add(time.Hour), b.now.Add(time.Hour+time.Minute)
	mistargeted := ping()
	mistargeted.Target = "i-someone-else"
	noNonce := ping()
	noNonce.Nonce = ""
	tooLong := ping()
	tooLong.Expires = tooLong.IssuedAt.Add(protocol.MaxCommandLifetime + time.Minute)
	_, forger, err := ed25519.GenerateKey(nil)
	if err != nil {
		b.t.Fatal(err)
	}
	forged, bare := ping(), ping()
	unsigned, err := json.Marshal(bare)
	if err != nil {
		b.t.Fatal(err)
	}
	replayed, succeeded, asked := ping(), ping(), b.result(protocol.NewNonce())

	return []testCase{
		{"a good ping", []step{b.send(ping(), ok)}},
		{"not JSON", []step{{data: []byte("not json"), want: refused(protocol.RefusedMalformed, false)}}},
		{"unsigned", []step{{data: unsigned, req: bare, want: refused(protocol.RefusedUnsigned, false)}}},
		{"forged", []step{{data: b.sign(forger, forged), req: forged, want: refused(protocol.RefusedForged, false)}}},
		{"signed without a nonce", []step{{data: b.sign(b.key, noNonce), req: noNonce, want: refused(protocol.RefusedMalformed, true)}}},
		{"living past the longest lifetime", []step{{data: b.sign(b.key, tooLong), req: tooLong,
			want: refused(protocol.RefusedMalformed, true)}}},
		{"expired, and not remembered", []step{b.send(expired, refused(protocol.RefusedExpired, true)),
			b.send(b.result(expired.Nonce), notKnown)}},
		{"not valid yet", []step{b.send(early, refused(protocol.RefusedExpired, true))}},
		{"mistargeted, and not remembered", []step{b.send(mistargeted, refused(protocol.RefusedMistargeted, true)),
			b.send(b.result(mistargeted.Nonce), notKnown)}},
		{"not in the catalog, and not remembered", []step{b.send(unknown, refused(protocol.RefusedUnknown, true)),
			b.send(unknown, refused(protocol.RefusedUnknown, true)), b.send(b.result(unknown.Nonce), notKnown)}},
		{"replayed", []step{b.send(replayed, ok), b.send(replayed, refused(protocol.RefusedReplayed, true))}},
		{"arguments that are no object: failed, once", []step{b.send(badArgs, failed),
			b.send(badArgs, refused(protocol.RefusedReplayed, true)),
			b.send(b.result(badArgs.Nonce), Answer{OK: true, Echoed: true, Known: true, Finished: true})}},
		{"command.result of a command that succeeded", []step{b.send(succeeded, ok),
			b.send(b.result(succeeded.Nonce), Answer{OK: true, Echoed: true, Known: true, Finished: true, Succeeded: true})}},
		{"command.result of a nonce never sent", []step{b.send(b.result(protocol.NewNonce()), notKnown)}},
		{"command.result without a nonce", []step{b.send(b.request(protocol.CommandResult, nil), failed)}},
		{"command.result replayed", []step{b.send(asked, notKnown), b.send(asked, refused(protocol.RefusedReplayed, true))}},
	}
}

// builder makes the requests of the cases for one agent.
type builder struct {
	t      testing.TB
	key    ed25519.PrivateKey
	target string
	now    time.Time
}

// request is a new request for the agent, valid for a minute.
func (b builder) request(name string, args any) protocol.CommandRequest {
	req := protocol.CommandRequest{V: protocol.Version, ID: "cmd-" + protocol.NewNonce(), Name: name, Target: b.target,
		Nonce: protocol.NewNonce(), IssuedAt: b.now, Expires: b.now.Add(time.Minute), Run: "r-commandtest"}
	if args != nil {
		var err error
		if req.Args, err = json.Marshal(args); err != nil {
			b.t.Fatal(err)
		}
	}
	return req
}

// result asks after nonce.
func (b builder) result(nonce string) protocol.CommandRequest {
	return b.request(protocol.CommandResult, protocol.ResultArgs{Nonce: nonce})
}

// send is a step sending req sealed with the agent's key.
func (b builder) send(req protocol.CommandRequest, want Answer) step {
	data, err := protocol.Seal(b.key, req)
	if err != nil {
		b.t.Fatal(err)
	}
	return step{data: data, req: req, want: want}
}

// sign signs req with key without Seal's checks, as a broken or hostile
// sender would.
func (b builder) sign(key ed25519.PrivateKey, req protocol.CommandRequest) []byte {
	body, err := json.Marshal(req)
	if err != nil {
		b.t.Fatal(err)
	}
	data, err := json.Marshal(protocol.SignedCommand{V: protocol.Version, Request: body, Sig: ed25519.Sign(key, body)})
	if err != nil {
		b.t.Fatal(err)
	}
	return data
}
