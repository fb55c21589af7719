// Package agent is the daemon on every customer instance: it enrolls with
// the control plane, keeps a NATS link to it, sends heartbeats, metrics and
// events, and answers the signed commands of its catalog. It never imports
// the control plane: the wire contract is shared/protocol.
package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/stackpro/stackpro/agent/internal/link"
	"github.com/stackpro/stackpro/agent/internal/nonces"
	"github.com/stackpro/stackpro/agent/internal/outbox"
	"github.com/stackpro/stackpro/agent/internal/stack"
	"github.com/stackpro/stackpro/agent/internal/telemetry"
	"github.com/stackpro/stackpro/shared/buildinfo"
	"github.com/stackpro/stackpro/shared/protocol"
)

// Main parses args and runs the agent until ctx ends.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stackpro-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/stackpro/agent.yaml", "bootstrap config file")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		fmt.Fprintln(stdout, "stackpro-agent", buildinfo.String())
		return nil
	}
	cfg, err := LoadConfig(*path, os.Environ())
	if err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // checked by Validate
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("instance", cfg.InstanceID)
	return Run(ctx, cfg, log)
}

// Agent is one running agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	nc      *nats.Conn
	box     *outbox.Outbox
	rep     *reporter
	sampler *telemetry.Sampler
	started time.Time
	// key checks every command; nil when the agent has none, and then it
	// refuses them all.
	key      ed25519.PublicKey
	nonces   *nonces.Store
	refusals refusalBudget
	// problems carries what the last metrics sample found wrong to the
	// heartbeat goroutine.
	problems chan []string
	// restored carries how long the link was down each time it comes back.
	restored chan time.Duration
	// refetch asks the target watcher for the latest target.
	refetch chan struct{}
	// stack runs the customer's stack; nil when this host cannot (stackErr says why).
	stack    *stack.Reconciler
	stackErr string
}

// Run enrolls if needed, connects and reports until ctx ends. Losing the
// link changes nothing on the instance: the agent keeps sampling and
// spooling, and sends it all when the link is back.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("agent: state dir: %w", err)
	}
	box, err := outbox.Open(filepath.Join(cfg.StateDir, "outbox.db"), outbox.Options{})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer box.Close()
	seen, err := nonces.Open(filepath.Join(cfg.StateDir, "nonces.db"))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer seen.Close()
	id, err := link.LoadIdentity(cfg.StateDir)
	if err != nil {
		return err
	}
	lo := link.Options{URL: cfg.NATSURL, InstanceID: cfg.InstanceID, StateDir: cfg.StateDir,
		Token: cfg.EnrollmentToken, AgentVersion: buildinfo.Version, CommandKey: cfg.CommandKey, Log: log}
	if !link.Enrolled(cfg.StateDir) {
		if err := link.Enroll(ctx, lo, id); err != nil {
			return err
		}
	}
	key, err := commandKey(cfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if key == nil {
		log.Error("no control plane key: every command will be refused as forged")
	}
	a := &Agent{cfg: cfg, log: log, box: box, sampler: telemetry.NewSampler(procRoot), started: time.Now(),
		key: key, nonces: seen,
		problems: make(chan []string, 1), restored: make(chan time.Duration, 1), refetch: make(chan struct{}, 1)}
	if engine, err := stack.Detect(ctx, cfg.ComposeSlots); err != nil {
		a.stackErr = err.Error()
		log.Error("the stack cannot run on this host", "err", err)
	} else if a.stack, err = stack.New(stack.Options{Engine: engine, Dir: filepath.Join(cfg.StateDir, "stack"),
		Project: cfg.InstanceID, HealthTimeout: cfg.HealthTimeout, Emit: a.emit, Log: log}); err != nil {
		return err
	}
	a.nc, err = link.Connect(lo, id, link.Handlers{Reconnected: func(down time.Duration) {
		select {
		case a.restored <- down:
		default: // an event for the last outage is still waiting
		}
	}})
	if err != nil {
		return err
	}
	defer a.nc.Close()
	if a.rep, err = newReporter(cfg.InstanceID, a.nc, box, log); err != nil {
		return err
	}
	a.rep.Emit(protocol.EventAgentStarted, protocol.SeverityInfo, "agent "+buildinfo.Version+" started",
		map[string]string{"version": buildinfo.Version, "commit": buildinfo.Commit})
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.rep.Run(gctx) })
	g.Go(func() error { return a.heartbeats(gctx) })
	g.Go(func() error { return a.metrics(gctx) })
	g.Go(func() error { return a.serveCommands(gctx) })
	g.Go(func() error { return every(gctx, time.Hour, a.pruneNonces) })
	g.Go(func() error { return every(gctx, time.Minute, a.reportUnreported) })
	g.Go(func() error { return a.watchLink(gctx) })
	if a.stack != nil {
		g.Go(func() error { return a.watchTargets(gctx, a.stack) })
		g.Go(func() error { return a.stack.WatchContainers(gctx) })
	}
	err = g.Wait()
	if derr := a.nc.Drain(); derr != nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		log.Warn("draining link", "err", derr)
	}
	log.Info("agent stopped")
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// watchLink reports each restored link as an event, which also wakes the
// flusher, and has the target watcher ask for the latest target.
func (a *Agent) watchLink(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case down := <-a.restored:
			a.rep.Emit(protocol.EventLinkRestored, protocol.SeverityInfo, "link to the control plane restored",
				map[string]string{"down_for": down.Round(time.Second).String()})
			select {
			case a.refetch <- struct{}{}:
			default:
			}
		}
	}
}

// every runs fn every interval, the first time after a random share of it,
// so that agents started together do not report together.
func every(ctx context.Context, interval time.Duration, fn func()) error {
	timer := time.NewTimer(rand.N(interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			fn()
			timer.Reset(interval)
		}
	}
}

// heartbeats publishes a heartbeat every interval while the link is up. A
// heartbeat is never spooled: a late one would say nothing true.
func (a *Agent) heartbeats(ctx context.Context) error {
	var seq uint64
	var problems []string
	return every(ctx, a.cfg.HeartbeatInterval, func() {
		select {
		case problems = <-a.problems:
		default:
		}
		if !a.nc.IsConnected() {
			return
		}
		seq++
		box := a.box.Stats()
		st := a.stackStatus(ctx)
		hb := protocol.Heartbeat{V: protocol.Version, InstanceID: a.cfg.InstanceID, Seq: seq, At: time.Now().UTC(),
			AgentVersion: buildinfo.Version, Health: protocol.HealthOK,
			Problems: append(slices.Clone(problems), stack.Problems(st)...),
			Outbox:   protocol.OutboxStats{Pending: box.Pending, DroppedMetrics: box.DroppedMetrics, DroppedEvents: box.DroppedEvents},
			Stack:    &st}
		if box.UnreportedEvents > 0 {
			hb.Problems = append(hb.Problems, fmt.Sprintf("the outbox is full: %d events dropped", box.UnreportedEvents))
		}
		if len(hb.Problems) > 0 {
			hb.Health = protocol.HealthDegraded
		}
		data, _ := json.Marshal(hb)
		if err := a.nc.Publish(protocol.AgentSubject(a.cfg.InstanceID, protocol.KindHeartbeat), data); err != nil {
			a.log.Debug("heartbeat not sent", "err", err)
		}
	})
}

// stackStatus is the stack as the engine reports it, or why there is none.
func (a *Agent) stackStatus(ctx context.Context) protocol.StackStatus {
	if a.stack == nil {
		return protocol.StackStatus{Error: a.stackErr}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return a.stack.Status(ctx)
}

// emit reports an event; a failure to spool it is logged, and counted, by
// the reporter. (The reconciler is made before the reporter, so it is
// handed this and not a.rep.Emit.)
func (a *Agent) emit(typ string, sev protocol.Severity, msg string, data map[string]string) {
	a.rep.Emit(typ, sev, msg, data)
}

// procRoot is where the proc filesystem is mounted.
const procRoot = "/proc"

// diskFullPercent is the share of a disk in use from which the instance
// reports itself degraded.
const diskFullPercent = 90

// diskProblems names every disk at least diskFullPercent full, in whole
// percent rounded down.
func diskProblems(disks []protocol.Disk) []string {
	var problems []string
	for _, d := range disks {
		if d.TotalBytes > 0 && d.UsedBytes*100/d.TotalBytes >= diskFullPercent {
			problems = append(problems, fmt.Sprintf("disk %s is %d%% full", d.Mount, d.UsedBytes*100/d.TotalBytes))
		}
	}
	return problems
}

// setProblems hands the heartbeat what the last sample found wrong, in
// place of an earlier sample's that it has not taken yet.
func (a *Agent) setProblems(problems []string) {
	select {
	case <-a.problems:
	default:
	}
	a.problems <- problems
}

// metrics samples the host every interval and spools the sample.
func (a *Agent) metrics(ctx context.Context) error {
	return every(ctx, a.cfg.MetricsInterval, func() {
		m, err := a.sampler.Sample()
		if err != nil {
			a.log.Warn("sampling host metrics", "err", err)
		}
		m.V, m.InstanceID, m.At = protocol.Version, a.cfg.InstanceID, time.Now().UTC()
		a.setProblems(diskProblems(m.Disks))
		if err := a.rep.Metrics(m); err != nil {
			a.log.Error("metrics not spooled", "err", err)
		}
	})
}
