package agent

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stackpro/stackpro/internal/dockertest"
	"github.com/stackpro/stackpro/shared/protocol"
)

func TestCheckTarget(t *testing.T) {
	const newest = 5
	tests := []struct {
		name string
		data string
		want protocol.Refusal // "" when applied
	}{
		{"the next version", `{"v":4,"instance_id":"i-me","version":6}`, ""},
		{"the newest again", `{"v":4,"instance_id":"i-me","version":5}`, ""},
		{"not JSON", `garbage`, protocol.RefusedMalformed},
		{"a JetStream acknowledgement", `{"stream":"STACKPRO_EVENTS","seq":1}`, protocol.RefusedMistargeted},
		{"another instance's", `{"v":4,"instance_id":"i-other","version":9}`, protocol.RefusedMistargeted},
		{"no version", `{"v":4,"instance_id":"i-me"}`, protocol.RefusedMalformed},
		{"an older version", `{"v":4,"instance_id":"i-me","version":4}`, protocol.RefusedStale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := checkTarget([]byte(tt.data), "i-me", newest)
			var got protocol.Refusal
			if err != nil {
				got = err.Reason
			}
			if got != tt.want {
				t.Errorf("checkTarget(%s) refused %q (%v), want %q", tt.data, got, err, tt.want)
			}
		})
	}
}

// What lands under the agent's key but is not its target is refused and
// reported as a target.refused event, and the agent goes on.
func TestTargetRefusalsAreReported(t *testing.T) {
	dockertest.Require(t) // the target watcher runs only with an engine
	r := newRig(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(r.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: protocol.TargetsBucket})
	if err != nil {
		t.Fatal(err)
	}
	defer r.start()()
	for _, tt := range []struct {
		data string
		want protocol.Refusal
	}{
		{`{"stream":"STACKPRO_EVENTS","seq":1}`, protocol.RefusedMistargeted},
		{`not a target`, protocol.RefusedMalformed},
	} {
		if _, err := kv.Put(ctx, testInstance, []byte(tt.data)); err != nil {
			t.Fatal(err)
		}
		if ev := r.waitEvent(protocol.EventTargetRefused, tt.want, ""); ev.Severity != protocol.SeverityError {
			t.Errorf("%s: severity %q, want error", tt.data, ev.Severity)
		}
	}
}
