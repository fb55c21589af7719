package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stackpro/stackpro/agent/internal/stack"
	"github.com/stackpro/stackpro/shared/protocol"
)

// watchTargets hears of every new target on the instance's KV subject,
// asks for the latest one at start and after every reconnect (so a target
// written while the link was down is not missed), and applies them one at
// a time, newest version only. What it must not apply it refuses and
// reports (see checkTarget).
func (a *Agent) watchTargets(ctx context.Context, rec *stack.Reconciler) error {
	incoming := make(chan *nats.Msg, 8)
	sub, err := a.nc.ChanSubscribe(protocol.TargetSubject(a.cfg.InstanceID), incoming)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	newest := rec.Seen()
	consider := func(data []byte) {
		if len(data) == 0 {
			return // a delete or purge of the key: keep running what runs
		}
		t, err := checkTarget(data, a.cfg.InstanceID, newest)
		if err != nil {
			a.refuseTarget(t, newest, err)
			return
		}
		if t.Version == newest {
			return // the one we have, heard twice
		}
		newest = t.Version
		if err := rec.Apply(ctx, t); err != nil && ctx.Err() == nil {
			a.log.Error("applying target", "version", t.Version, "err", err)
		}
	}
	fetch := time.NewTimer(0)
	defer fetch.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-incoming:
			consider(m.Data)
		case <-a.refetch:
			fetch.Reset(0)
		case <-fetch.C:
			data, err := a.latestTarget(ctx)
			if err != nil {
				a.log.Warn("asking for the latest target", "err", err)
				fetch.Reset(30 * time.Second)
				continue
			}
			consider(data)
		}
	}
}

// checkTarget reads a value of the instance's key in the targets bucket.
// Only the control plane writes there, so anything but a target of this
// instance with a version no older than newest (the newest one seen) is a
// fault or an attack, and is refused: not applied, and never let lower or
// raise the version the agent keeps.
func checkTarget(data []byte, id string, newest uint64) (protocol.Target, *protocol.RefusalError) {
	var t protocol.Target
	switch err := json.Unmarshal(data, &t); {
	case err != nil:
		return t, &protocol.RefusalError{Reason: protocol.RefusedMalformed, Detail: "not a target: " + err.Error()}
	case t.InstanceID != id:
		return t, &protocol.RefusalError{Reason: protocol.RefusedMistargeted, Detail: fmt.Sprintf("the target of %q", t.InstanceID)}
	case t.Version == 0:
		return t, &protocol.RefusalError{Reason: protocol.RefusedMalformed, Detail: "no version"}
	case t.Version < newest:
		return t, &protocol.RefusalError{Reason: protocol.RefusedStale,
			Detail: fmt.Sprintf("version %d is older than version %d, the newest seen", t.Version, newest)}
	}
	return t, nil
}

// refuseTarget logs and reports a target checkTarget refused.
func (a *Agent) refuseTarget(t protocol.Target, newest uint64, r *protocol.RefusalError) {
	msg := "target refused (" + string(r.Reason) + "): " + r.Detail
	a.log.Error(msg)
	data := map[string]string{"reason": string(r.Reason)}
	if t.Version > 0 {
		data["version"] = strconv.FormatUint(t.Version, 10)
	}
	if r.Reason == protocol.RefusedStale {
		data["newest"] = strconv.FormatUint(newest, 10)
	}
	a.emit(protocol.EventTargetRefused, protocol.SeverityError, msg, data)
}

// latestTarget asks JetStream for the newest value of the instance's key;
// nil when it has none.
func (a *Agent) latestTarget(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := a.nc.RequestWithContext(ctx, protocol.TargetGetSubject(a.cfg.InstanceID), nil)
	if err != nil {
		return nil, err
	}
	if status := m.Header.Get("Status"); status != "" {
		if code, _ := strconv.Atoi(status); code == http.StatusNotFound {
			return nil, nil
		}
		return nil, &directGetError{status: status, desc: m.Header.Get("Description")}
	}
	return m.Data, nil
}

type directGetError struct{ status, desc string }

func (e *directGetError) Error() string { return "direct get: " + e.status + " " + e.desc }
