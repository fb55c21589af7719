package fleetsim_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/internal/fleetsim"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/controlplane/provision/local"
	"github.com/stackpro/stackpro/internal/commandtest"
	"github.com/stackpro/stackpro/internal/proctest"
	"github.com/stackpro/stackpro/shared/protocol"
)

// The simulator keeps a copy of the agent's command checks. These tests
// hold the copy to the original: the same table of requests
// (internal/commandtest) goes to a real stackpro-agent process and to a
// simulated agent on one broker, and both must answer as the table says.

// TestSimulatorAnswersAsTheAgent runs the table against a real agent
// process, then against the simulator.
func TestSimulatorAnswersAsTheAgent(t *testing.T) {
	e := start(t, 1)
	real := e.agentProcess(t, "i-real-agent")
	e.sim(t, fleetsim.Options{})
	t.Run("agent", func(t *testing.T) { commandtest.Check(t, real, e.key, e.first(real)) })
	t.Run("simulator", func(t *testing.T) { commandtest.Check(t, e.creds[0].InstanceID, e.key, e.first(e.creds[0].InstanceID)) })
}

// TestAgentProcessRefusesReplay: a real agent process refuses a signed
// request sent twice the second time, as replayed, and runs it once: its
// own count of the commands it ran (facts) rises by one.
func TestAgentProcessRefusesReplay(t *testing.T) {
	e := start(t, 0)
	id := e.agentProcess(t, "i-real-agent")
	ask := e.first(id)
	pings := func() uint64 {
		t.Helper()
		reply := ask(t, e.seal(t, request(id, protocol.CommandFacts, nil, false)))
		var f protocol.Facts
		if err := json.Unmarshal(reply.Result, &f); err != nil || !reply.OK {
			t.Fatalf("facts: %+v (%v)", reply, err)
		}
		return f.CommandsRun[protocol.CommandPing]
	}
	before := pings()
	ping := request(id, protocol.CommandPing, nil, false)
	data := e.seal(t, ping)
	if r := ask(t, data); !r.OK || r.Nonce != ping.Nonce {
		t.Fatalf("first send: %+v, want OK", r)
	}
	if r := ask(t, data); r.OK || r.Refused != protocol.RefusedReplayed || r.Nonce != ping.Nonce {
		t.Errorf("second send: %+v, want refused as replayed", r)
	}
	// The facts request goes after the refusal came back: a second run
	// would have been counted by then.
	if after := pings(); after != before+1 {
		t.Errorf("the agent counts %d pings run, was %d: want the one more", after, before)
	}
}

// first returns a commandtest.Send to instance id's agent: the first
// answer to each request.
func (e *env) first(id string) commandtest.Send {
	return func(t testing.TB, data []byte) protocol.CommandReply {
		t.Helper()
		replies := e.send(t, id, data, 1, 30*time.Second)
		if len(replies) == 0 {
			t.Fatalf("no answer from %s", id)
		}
		return replies[0]
	}
}

// agentProcess launches a real stackpro-agent for instance id, as the
// local provider does, enrolled on e's broker with the command key pinned,
// and waits until it answers. It returns id.
func (e *env) agentProcess(t *testing.T, id string) string {
	t.Helper()
	token := "token-" + id
	e.enr.mu.Lock()
	e.enr.tokens[id] = token
	e.enr.mu.Unlock()
	p, err := local.New(t.TempDir(), filepath.Join(proctest.Binaries(t), "stackpro-agent"), discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(p.InstanceDir(id), "agent.log"))
			t.Logf("agent log:\n%s", log)
		}
		if err := p.Terminate(context.Background(), id, ""); err != nil {
			t.Errorf("terminating %s: %v", id, err)
		}
	})
	_, err = p.Launch(context.Background(), provision.LaunchSpec{InstanceID: id, EnrollmentToken: token, NATSURL: e.b.ClientURL(),
		CommandKey: protocol.FormatCommandKey(e.key.Public().(ed25519.PublicKey)), HeartbeatInterval: time.Minute,
		MetricsInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	proctest.Until(t, id+"'s agent to answer a ping", func() bool { return e.ping(t, id, time.Second) == nil })
	return id
}
