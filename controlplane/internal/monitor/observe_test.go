package monitor

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/internal/store"
	"github.com/stackpro/stackpro/shared/protocol"
)

// TestRefusalsAudited: an event stored is published to the fleet's
// followers; a command.refused or target.refused event is also audited
// and counted by reason, an agent's summary of the refusals it did not
// report one by one is counted, and so are events it dropped.
func TestRefusalsAudited(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "stackpro.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	id := "i-0123456789abcdef"
	tracker := fleet.NewTracker(fleet.Thresholds{StaleAfter: time.Minute, OfflineAfter: time.Hour}, []fleet.Instance{{ID: id}})
	feed := fleet.NewFeed(16, 16)
	_, follower, _ := feed.Subscribe("", func(fleet.Change) bool { return true })
	m := New(Options{Tracker: tracker, Store: st, Publisher: feed, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	now := time.Now().UTC()
	events := []protocol.Event{
		{V: protocol.Version, ID: "e1", InstanceID: id, At: now, Type: protocol.EventCommandRefused, Severity: protocol.SeverityWarning,
			Message: "signature does not verify", Data: map[string]string{"reason": string(protocol.RefusedForged), "command": "stack.down", "nonce": "n1"}},
		{V: protocol.Version, ID: "e2", InstanceID: id, At: now, Type: protocol.EventCommandRefused, Severity: protocol.SeverityWarning,
			Message: "12 refusals not reported", Data: map[string]string{"suppressed": "12"}},
		{V: protocol.Version, ID: "e3", InstanceID: id, At: now, Type: protocol.EventAgentStarted, Severity: protocol.SeverityInfo, Message: "started"},
		{V: protocol.Version, ID: "e4", InstanceID: id, At: now, Type: protocol.EventTargetRefused, Severity: protocol.SeverityError,
			Message: "target refused (stale): version 2 is older than version 5", Data: map[string]string{"reason": string(protocol.RefusedStale), "version": "2"}},
		{V: protocol.Version, ID: "e5", InstanceID: id, At: now, Type: protocol.EventEventsDropped, Severity: protocol.SeverityError,
			Message: "7 events were dropped: the outbox was full", Data: map[string]string{"dropped": "7"}},
	}
	for i, ev := range events {
		if err := st.AppendEvent(ev, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
		m.stored(ev)
	}
	for _, ev := range events { // every event stored is published, in order
		if c := <-follower.C; c.Kind != fleet.ChangeAgentEvent || c.InstanceID != id || !strings.Contains(string(c.Data), ev.ID) {
			t.Errorf("published %+v, want event %s", c, ev.ID)
		}
	}
	audit, err := st.AuditLog(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != 3 || audit[0].Event != "command.refused" || !strings.Contains(audit[0].Detail, "forged") ||
		!strings.Contains(audit[0].Detail, "stack.down") || !strings.Contains(audit[1].Detail, "12 more") || audit[0].Actor != id ||
		audit[2].Event != "target.refused" || !strings.Contains(audit[2].Detail, "version 2") || audit[2].Actor != id {
		t.Errorf("audit log %+v, want the forged stack.down, the 12 suppressed and the stale target, by the instance", audit)
	}
	if got := testutil.ToFloat64(m.obs.targets.WithLabelValues(string(protocol.RefusedStale))); got != 1 {
		t.Errorf("stale targets counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.obs.eventsDropped); got != 7 {
		t.Errorf("dropped events counted %v, want 7", got)
	}
	if got := testutil.ToFloat64(m.obs.commands.WithLabelValues(string(protocol.RefusedForged))); got != 1 {
		t.Errorf("forged refusals counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.obs.commands.WithLabelValues("suppressed")); got != 12 {
		t.Errorf("suppressed refusals counted %v, want 12", got)
	}
}
