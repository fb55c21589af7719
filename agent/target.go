package agent

import (
	"context"
	"encoding/json"
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
// a time, newest version only.
func (a *Agent) watchTargets(ctx context.Context, rec *stack.Reconciler) error {
	incoming := make(chan *nats.Msg, 8)
	sub, err := a.nc.ChanSubscribe(protocol.TargetSubject(a.cfg.InstanceID), incoming)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	var newest uint64
	consider := func(data []byte) {
		if len(data) == 0 {
			return // a delete or purge of the key: keep running what runs
		}
		var t protocol.Target
		if err := json.Unmarshal(data, &t); err != nil || t.InstanceID != a.cfg.InstanceID {
			a.log.Error("ignoring a malformed target", "err", err)
			return
		}
		if t.Version <= newest {
			return
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
