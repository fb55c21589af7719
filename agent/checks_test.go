package agent

import (
	"testing"

	"github.com/stackpro/stackpro/internal/commandtest"
)

// TestCommandChecks runs the table of requests the fleet simulator must
// answer alike (internal/commandtest) against the agent.
func TestCommandChecks(t *testing.T) {
	r := newRig(t, true)
	defer r.start()()
	commandtest.Check(t, testInstance, r.key, r.sendFor)
}
