package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stackpro/stackpro/agent/internal/link"
	"github.com/stackpro/stackpro/agent/internal/telemetry"
	"github.com/stackpro/stackpro/shared/buildinfo"
	"github.com/stackpro/stackpro/shared/protocol"
)

// commandKey is the key every command must verify with: the one the config
// pins, or else the one enrollment kept; nil when there is neither.
func commandKey(cfg Config) (ed25519.PublicKey, error) {
	if cfg.CommandKey != "" {
		return protocol.ParseCommandKey(cfg.CommandKey) // checked by Validate
	}
	key, err := link.LoadCommandKey(cfg.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return key, err
}

// serveCommands answers the SignedCommands on the agent's own command
// subject until ctx ends, each in its own goroutine so that a slow pull
// does not hold up a ping.
func (a *Agent) serveCommands(ctx context.Context) error {
	msgs := make(chan *nats.Msg, 64)
	subject := protocol.CommandSubject(a.cfg.InstanceID)
	sub, err := a.nc.ChanSubscribe(subject, msgs)
	if err != nil {
		return fmt.Errorf("agent: subscribing to %s: %w", subject, err)
	}
	defer sub.Unsubscribe()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			wg.Go(func() { a.handleCommand(ctx, m) })
		}
	}
}

// commandTimeout bounds one command; a pull of large images is the slowest.
// A command also ends when its request expires: the control plane has
// stopped waiting for it by then.
const commandTimeout = 10 * time.Minute

// handleCommand admits a request, acknowledges it when asked to, runs it,
// records its outcome under its nonce and answers with it. A refused
// request runs nothing.
func (a *Agent) handleCommand(ctx context.Context, m *nats.Msg) {
	req, err := a.admit(m.Data)
	if refusal, ok := errors.AsType[*protocol.RefusalError](err); ok {
		a.refuse(m, req, refusal)
		return
	}
	reply := protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: a.cfg.InstanceID, Nonce: req.Nonce}
	if err != nil {
		// Nothing ran: a request whose nonce cannot be recorded could be
		// replayed.
		a.log.Error("command not run", "command", req.Name, "err", err)
		reply.Error = "the agent could not record the request's nonce"
		a.respond(m, reply)
		return
	}
	acked := func() {}
	if req.Ack {
		ack := reply
		ack.State = protocol.StateRunning
		acked = protocol.DelayedAck(ackAfter, func() { a.respond(m, ack) })
	}
	deadline := time.Now().Add(commandTimeout)
	if end := req.Expires.Add(protocol.MaxClockSkew); end.Before(deadline) {
		deadline = end
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	result, err := a.run(ctx, req)
	acked()
	reply.OK, reply.Result = err == nil, result
	if err != nil {
		reply.Error = err.Error()
	}
	if err := a.nonces.Finish(req.Nonce, req.Name, reply); err != nil {
		a.log.Error("command outcome not recorded", "command", req.Name, "err", err)
	}
	a.respond(m, reply)
}

// ackAfter is protocol.AckAfter; a variable only so that a test can see
// the acknowledgement of a command that ends at once.
var ackAfter = protocol.AckAfter

// admit opens a SignedCommand and claims its nonce. Every refusal is a
// *protocol.RefusalError; any other error is the nonce store's.
func (a *Agent) admit(data []byte) (protocol.CommandRequest, error) {
	req, err := protocol.Open(data, a.key, a.cfg.InstanceID, time.Now())
	if err != nil {
		return req, err
	}
	if !slices.Contains(protocol.Catalog, req.Name) {
		return req, &protocol.RefusalError{Reason: protocol.RefusedUnknown, Detail: fmt.Sprintf("%q is not in the catalog", req.Name)}
	}
	fresh, err := a.nonces.Claim(req.Nonce, req.Expires)
	if err != nil {
		return req, err
	}
	if !fresh {
		return req, &protocol.RefusalError{Reason: protocol.RefusedReplayed, Detail: "nonce already seen"}
	}
	return req, nil
}

// refuse answers a refused request and reports it, within the refusal
// budget, so that a flood of bad requests cannot flood the outbox.
func (a *Agent) refuse(m *nats.Msg, req protocol.CommandRequest, r *protocol.RefusalError) {
	a.respond(m, protocol.CommandReply{V: protocol.Version, ID: req.ID, InstanceID: a.cfg.InstanceID,
		Nonce: req.Nonce, Refused: r.Reason, Error: r.Error()})
	report, suppressed := a.refusals.take(time.Now())
	a.reportSuppressed(suppressed)
	if !report {
		return
	}
	a.log.Warn("command refused", "reason", r.Reason, "detail", r.Detail, "command", req.Name, "nonce", req.Nonce)
	data := map[string]string{"reason": string(r.Reason)}
	for k, v := range map[string]string{"command": req.Name, "nonce": req.Nonce, "run": req.Run} {
		if v != "" {
			data[k] = v
		}
	}
	a.emit(protocol.EventCommandRefused, protocol.SeverityWarning, r.Error(), data)
}

// reportSuppressed reports how many refusals went unreported, if any.
func (a *Agent) reportSuppressed(n int) {
	if n == 0 {
		return
	}
	msg := fmt.Sprintf("%d more commands were refused and not reported (at most %d reports a minute)", n, refusalReports)
	a.log.Warn(msg)
	a.emit(protocol.EventCommandRefused, protocol.SeverityWarning, msg, map[string]string{"suppressed": strconv.Itoa(n)})
}

// reportUnreported reports the refusals of a minute that is over and went
// unreported, so the count comes even when no refusal follows.
func (a *Agent) reportUnreported() { a.reportSuppressed(a.refusals.flush(time.Now())) }

// pruneNonces forgets the nonces past their retention.
func (a *Agent) pruneNonces() {
	if n, err := a.nonces.Prune(time.Now()); err != nil {
		a.log.Error("pruning nonces", "err", err)
	} else if n > 0 {
		a.log.Debug("nonces forgotten", "count", n)
	}
}

func (a *Agent) respond(m *nats.Msg, reply protocol.CommandReply) {
	if m.Reply == "" {
		return
	}
	data, _ := json.Marshal(reply)
	if err := m.Respond(data); err != nil {
		a.log.Warn("answering command", "id", reply.ID, "err", err)
	}
}

// run runs one command of the catalog; there is no other way in.
func (a *Agent) run(ctx context.Context, req protocol.CommandRequest) (json.RawMessage, error) {
	var args protocol.StackArgs
	if len(req.Args) > 0 {
		if err := json.Unmarshal(req.Args, &args); err != nil {
			return nil, fmt.Errorf("malformed arguments: %w", err)
		}
	}
	var result any = map[string]bool{"done": true}
	var err error
	switch req.Name {
	case protocol.CommandPing:
		result = map[string]any{"pong": true, "at": time.Now().UTC()}
	case protocol.CommandVersion:
		result = map[string]any{"version": buildinfo.Version, "commit": buildinfo.Commit,
			"protocol": protocol.Version, "uptime_seconds": int(time.Since(a.started).Seconds())}
	case protocol.CommandFacts:
		result = a.facts(ctx)
	case protocol.CommandResult:
		var ra protocol.ResultArgs
		if err := json.Unmarshal(req.Args, &ra); err != nil || ra.Nonce == "" {
			return nil, errors.New(`command.result needs the nonce to ask after: {"nonce":"..."}`)
		}
		result, err = a.nonces.Result(ra.Nonce)
	case protocol.CommandStackStatus:
		result = a.stackStatus(ctx)
	case protocol.CommandStackRestart, protocol.CommandStackDown, protocol.CommandStackUp,
		protocol.CommandStackPull, protocol.CommandStackLogs:
		if a.stack == nil {
			return nil, errors.New(a.stackErr)
		}
		switch req.Name {
		case protocol.CommandStackRestart:
			err = a.stack.Restart(ctx, args.Service)
		case protocol.CommandStackDown:
			err = a.stack.Stop(ctx)
		case protocol.CommandStackUp:
			err = a.stack.Start(ctx)
		case protocol.CommandStackPull:
			err = a.stack.Pull(ctx)
		case protocol.CommandStackLogs:
			var logs string
			logs, err = a.stack.Logs(ctx, args.Service, args.Lines)
			result = map[string]string{"logs": logs}
		}
	default:
		return nil, fmt.Errorf("unknown command %q", req.Name)
	}
	if err != nil {
		return nil, err
	}
	return json.Marshal(result)
}

// facts is the instance's inventory; what cannot be read stays empty.
func (a *Agent) facts(ctx context.Context) protocol.Facts {
	hostname, _ := os.Hostname()
	f := protocol.Facts{InstanceID: a.cfg.InstanceID, Hostname: hostname, AgentVersion: buildinfo.Version,
		AgentCommit: buildinfo.Commit, Protocol: protocol.Version, OS: runtime.GOOS, Arch: runtime.GOARCH,
		CPUs: runtime.NumCPU(), AgentStarted: a.started.UTC()}
	host, err := telemetry.ReadHost(procRoot)
	if err != nil {
		a.log.Debug("facts: reading the host", "err", err)
	}
	f.MemoryBytes, f.BootedAt = host.MemoryBytes, host.BootedAt
	if f.CommandsRun, err = a.nonces.Counts(); err != nil {
		a.log.Debug("facts: counting commands", "err", err)
	}
	if a.stack != nil {
		st := a.stackStatus(ctx)
		f.ComposeTool, f.StackVersion = st.ComposeTool, st.AppliedVersion
		for _, s := range st.Services {
			f.StackServices = append(f.StackServices, s.Service)
		}
		slices.Sort(f.StackServices)
		f.StackServices = slices.Compact(f.StackServices)
	}
	return f
}

// refusalReports is how many refusals a minute are reported as events; the
// rest are counted, and the count is reported once the minute is over.
const refusalReports = 10

// refusalBudget bounds the refusal events, one window of a minute at a
// time. It is safe for concurrent use.
type refusalBudget struct {
	mu         sync.Mutex
	start      time.Time
	reported   int
	suppressed int
}

// take reports whether a refusal at now may be reported, and how many
// went unreported in a window that ended before now (to report first).
func (b *refusalBudget) take(now time.Time) (report bool, suppressed int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	suppressed = b.roll(now)
	if b.reported < refusalReports {
		b.reported++
		return true, suppressed
	}
	b.suppressed++
	return false, suppressed
}

// flush returns how many refusals went unreported in a window that ended
// before now, once.
func (b *refusalBudget) flush(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.roll(now)
}

func (b *refusalBudget) roll(now time.Time) int {
	if now.Sub(b.start) < time.Minute {
		return 0
	}
	n := b.suppressed
	b.start, b.reported, b.suppressed = now, 0, 0
	return n
}
