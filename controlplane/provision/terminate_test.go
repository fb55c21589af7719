package provision_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/broker"
	"github.com/stackpro/stackpro/controlplane/provision"
	"github.com/stackpro/stackpro/shared/protocol"
)

// goneAgent is the broker of an instance whose agent cannot be reached:
// every command gets err, or reply when err is nil. Revocations go to the
// cloud.
type goneAgent struct {
	c     *cloud
	reply protocol.CommandReply
	err   error
}

func (g goneAgent) Revoke(id string) { g.c.Revoke(id) }

func (g goneAgent) Command(context.Context, string, protocol.CommandRequest) (protocol.CommandReply, error) {
	return g.reply, g.err
}

// TestTerminateWithoutAgent: an instance whose agent is gone is terminated
// all the same. Its stack cannot be stopped, which the log says; the
// machine, its name, its target, its record and its subdomain go, and its
// token and credential are revoked.
func TestTerminateWithoutAgent(t *testing.T) {
	for _, tt := range []struct {
		name  string
		agent goneAgent
	}{
		{"not connected", goneAgent{err: fmt.Errorf("broker: command stack.down: %w: i-x", broker.ErrNoAgent)}},
		{"silent", goneAgent{err: fmt.Errorf("broker: command stack.down: %w", context.DeadlineExceeded)}},
		{"refusing", goneAgent{reply: protocol.CommandReply{Refused: protocol.RefusedExpired, Error: "the request expired"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCloud()
			tt.agent.c = c
			e, _ := startEnrolling(context.Background(), t, t.TempDir(), c, agentsSetup{broker: tt.agent})
			inst, job, err := e.svc.Provision("acme", "starter", "acme")
			if err != nil {
				t.Fatal(err)
			}
			if job = e.wait(t, job.ID); job.State != provision.JobSucceeded {
				t.Fatalf("provision: %s (%s)", job.State, job.Error)
			}
			if tokens, creds, _ := e.st.Access(inst.ID); tokens != 1 || creds != 1 {
				t.Fatalf("after provisioning: %d tokens, %d credentials; want the agent enrolled", tokens, creds)
			}
			e.tracker.Connected(inst.ID, false, time.Now())

			if job, err = e.svc.Terminate(inst.ID); err != nil {
				t.Fatal(err)
			}
			if job = e.wait(t, job.ID); job.State != provision.JobSucceeded {
				t.Fatalf("terminate: %s (%s), log %+v", job.State, job.Error, job.Log)
			}
			i := slices.IndexFunc(job.Log, func(l provision.JobLog) bool { return l.Step == "stop_stack" })
			if i < 0 || job.Log[i].Outcome != "ok" || !strings.HasPrefix(job.Log[i].Detail, "skipped: ") {
				t.Errorf("stop_stack in the log %+v: want ok, skipped with the reason", job.Log)
			}
			if len(c.machines)+len(c.dns)+len(c.targets) != 0 || !slices.Equal(c.revoked, []string{inst.ID}) {
				t.Errorf("left behind: machines %v, dns %v, targets %v; revoked %v, want [%s]",
					c.machines, c.dns, c.targets, c.revoked, inst.ID)
			}
			if tokens, creds, _ := e.st.Access(inst.ID); tokens+creds != 0 {
				t.Errorf("%d tokens and %d credentials left", tokens, creds)
			}
			if insts, _ := e.st.Instances(); len(insts) != 0 {
				t.Errorf("instances left: %+v", insts)
			}
			if _, err := e.tracker.Get(inst.ID, time.Now()); !errors.Is(err, fleet.ErrNotFound) {
				t.Errorf("the tracker still has the instance: %v", err)
			}
			if owner, _ := e.st.SubdomainOwner("acme"); owner != "" {
				t.Errorf("subdomain still held by %s", owner)
			}
		})
	}
}
