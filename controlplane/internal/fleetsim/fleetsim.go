// Package fleetsim simulates a fleet of agents against a real control
// plane, for benchmarks and tests of fleet commands. Every simulated agent
// enrolls with its own one-time token and NKey, keeps its own NATS
// connection, heartbeats, and answers signed commands as the real agent
// does on the wire (shared/protocol), refusals included. Agents can be told
// to fail, to stay silent or to go offline, at start and while running.
//
// One process holds at most a few thousand agents (one file descriptor
// each); Main, the stackpro-sim program, splits a larger fleet across
// child processes, and StartProcesses drives such a fleet from Go.
package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Behaviour is how a simulated agent treats commands.
type Behaviour string

// Behaviours of a simulated agent.
const (
	// Normal agents run every command of the catalog and answer it.
	Normal Behaviour = "normal"
	// Failing agents check a command as usual, then answer OK:false with
	// the error "simulated failure" (command.result still answers truly:
	// it runs nothing).
	Failing Behaviour = "fail"
	// Silent agents stay connected and heartbeat but answer nothing, not
	// even a refusal or an acknowledgement, and remember nothing.
	Silent Behaviour = "silent"
	// Offline agents have closed their connection; back to any other
	// behaviour they connect again with the same key, without enrolling.
	Offline Behaviour = "offline"
)

// simulatedFailure is the error a Failing agent answers.
const simulatedFailure = "simulated failure"

func (b Behaviour) valid() bool {
	return slices.Contains([]Behaviour{Normal, Failing, Silent, Offline}, b)
}

// Options configures a simulated fleet.
type Options struct {
	// URL is the control plane's NATS URL.
	URL string
	// Agents are the agents to simulate, each enrolled with its token.
	Agents []Credential
	// Fail, Silent and Offline are the shares of Agents (0 to 1, together
	// at most 1) that start with that behaviour. Which agents is decided
	// by their position in Agents (see Set), so a test knows how many.
	Fail, Silent, Offline float64
	// Heartbeat is the interval between heartbeats; 10s when zero.
	Heartbeat time.Duration
	// Version is the agent version reported; "sim" when empty.
	Version string
	// Log receives the simulator's own lines; nothing is logged when nil.
	Log *slog.Logger
}

// Validate reports every problem of o at once.
func (o Options) Validate() error {
	var errs []error
	if o.URL == "" {
		errs = append(errs, errors.New("no NATS URL"))
	}
	if len(o.Agents) == 0 {
		errs = append(errs, errors.New("no agents"))
	}
	seen := make(map[string]bool, len(o.Agents))
	for _, c := range o.Agents {
		if err := protocol.ValidInstanceID(c.InstanceID); err != nil {
			errs = append(errs, err)
		}
		if c.Token == "" {
			errs = append(errs, fmt.Errorf("no token for %s", c.InstanceID))
		}
		if seen[c.InstanceID] {
			errs = append(errs, fmt.Errorf("%s appears twice", c.InstanceID))
		}
		seen[c.InstanceID] = true
	}
	for _, f := range []struct {
		name  string
		share float64
	}{{"fail", o.Fail}, {"silent", o.Silent}, {"offline", o.Offline}} {
		if f.share < 0 || f.share > 1 || math.IsNaN(f.share) {
			errs = append(errs, fmt.Errorf("%s share %v is not between 0 and 1", f.name, f.share))
		}
	}
	if o.Fail+o.Silent+o.Offline > 1 {
		errs = append(errs, errors.New("fail, silent and offline shares add up to more than 1"))
	}
	if o.Heartbeat < 0 {
		errs = append(errs, errors.New("negative heartbeat interval"))
	}
	return errors.Join(errs...)
}

// Stats counts what a simulated fleet did. Stats of several processes add
// up with Add.
type Stats struct {
	// Processes is how many simulator processes these stats cover.
	Processes int `json:"processes"`
	Agents    int `json:"agents"`
	Enrolled  int `json:"enrolled"`
	// Connected counts agents whose connection is up now.
	Connected int `json:"connected"`
	// Failing, Silent and Offline count agents behaving so now.
	Failing int `json:"failing"`
	Silent  int `json:"silent"`
	Offline int `json:"offline"`

	Heartbeats uint64 `json:"heartbeats"`
	// Received counts every message on an agent's command subject.
	Received uint64 `json:"received"`
	// Acked counts "running" acknowledgements sent: none, as simulated
	// commands end at once (protocol.AckAfter).
	Acked uint64 `json:"acked"`
	// Ran counts commands run (refusals and command.result aside): a
	// command run twice counts twice.
	Ran uint64 `json:"ran"`
	// Answered counts outcomes sent, Failed among them those that failed
	// on purpose.
	Answered uint64 `json:"answered"`
	Failed   uint64 `json:"failed"`
	// Refused counts refusals by reason.
	Refused map[protocol.Refusal]uint64 `json:"refused,omitempty"`
	// SilentDrops counts messages silent agents did not answer.
	SilentDrops uint64 `json:"silent_drops"`
}

// Add adds o to s.
func (s *Stats) Add(o Stats) {
	s.Processes += o.Processes
	s.Agents += o.Agents
	s.Enrolled += o.Enrolled
	s.Connected += o.Connected
	s.Failing += o.Failing
	s.Silent += o.Silent
	s.Offline += o.Offline
	s.Heartbeats += o.Heartbeats
	s.Received += o.Received
	s.Acked += o.Acked
	s.Ran += o.Ran
	s.Answered += o.Answered
	s.Failed += o.Failed
	s.SilentDrops += o.SilentDrops
	for r, n := range o.Refused {
		if s.Refused == nil {
			s.Refused = map[protocol.Refusal]uint64{}
		}
		s.Refused[r] += n
	}
}

// counters are the Stats the agents count as they go.
type counters struct {
	heartbeats, received, acked, ran, answered, failed, silentDrops atomic.Uint64

	mu      sync.Mutex
	refused map[protocol.Refusal]uint64
}

func (c *counters) refuse(r protocol.Refusal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refused[r]++
}

// parallel bounds how many agents enroll or connect at once.
const parallel = 64

// Sim is a running simulated fleet.
type Sim struct {
	opts    Options
	log     *slog.Logger
	started time.Time
	agents  []*agent
	byID    map[string]*agent
	// bySubject finds an agent by its command subject.
	bySubject map[string]*agent
	// order is the agents' indexes in the order Set picks them: spread
	// evenly over Agents, the same for the same number of agents.
	order []int
	// msgs carries every agent's commands to the workers.
	msgs  chan *nats.Msg
	stats counters

	enroll *nats.Conn
	// set serialises changes of behaviour.
	set sync.Mutex

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start enrolls every agent, connects every one not starting offline, and
// returns once they all have, or with an error saying how many did. ctx
// bounds only the start; Close stops the fleet.
func Start(ctx context.Context, o Options) (*Sim, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("fleetsim: %w", err)
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 10 * time.Second
	}
	if o.Version == "" {
		o.Version = "sim"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	n := len(o.Agents)
	s := &Sim{opts: o, log: o.Log.With("component", "fleetsim"), started: time.Now(), agents: make([]*agent, n),
		byID: make(map[string]*agent, n), bySubject: make(map[string]*agent, n), order: spread(n),
		msgs: make(chan *nats.Msg, 1<<16)}
	s.stats.refused = map[protocol.Refusal]uint64{}
	for i, c := range o.Agents {
		a, err := newAgent(s, i, c)
		if err != nil {
			return nil, err
		}
		s.agents[i], s.byID[c.InstanceID], s.bySubject[protocol.CommandSubject(c.InstanceID)] = a, a, a
	}
	s.assign(map[Behaviour]float64{Failing: o.Fail, Silent: o.Silent, Offline: o.Offline})

	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for range runtime.GOMAXPROCS(0) * 4 {
		s.wg.Go(func() { s.work(runCtx) })
	}
	begin := time.Now()
	if err := s.enrollAll(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("fleetsim: %w", err)
	}
	s.log.Info("agents enrolled", "agents", len(s.agents), "took", time.Since(begin).Round(time.Millisecond))
	begin = time.Now()
	var online []*agent
	for _, a := range s.agents {
		if a.current() != Offline {
			online = append(online, a)
		}
	}
	if err := s.connectAll(ctx, online); err != nil {
		s.Close()
		return nil, fmt.Errorf("fleetsim: %d agents enrolled, %w", len(s.agents), err)
	}
	s.log.Info("agents connected", "agents", len(online), "took", time.Since(begin).Round(time.Millisecond))
	s.wg.Go(func() { s.heartbeats(runCtx) })
	return s, nil
}

// spread returns 0..n-1 ordered so that any prefix is spread evenly over
// the range: by the fractional part of i times the golden ratio.
func spread(n int) []int {
	order := make([]int, n)
	key := make([]float64, n)
	for i := range order {
		order[i] = i
		_, key[i] = math.Modf(float64(i) * math.Phi)
	}
	slices.SortFunc(order, func(a, b int) int {
		if key[a] < key[b] {
			return -1
		}
		if key[a] > key[b] {
			return 1
		}
		return a - b
	})
	return order
}

// share is how many of n agents a fraction f is.
func share(n int, f float64) int { return int(math.Round(f * float64(n))) }

// assign gives the starting behaviours, before any agent connects: the
// first agents in s.order fail, the next ones are silent, the next offline.
func (s *Sim) assign(shares map[Behaviour]float64) {
	next := 0
	for _, b := range []Behaviour{Failing, Silent, Offline} {
		for range share(len(s.agents), shares[b]) {
			s.agents[s.order[next]].behaviour = b
			next++
		}
	}
}

// enrollAll enrolls every agent over one connection as the enrollment
// user, parallel at most at once.
func (s *Sim) enrollAll(ctx context.Context) error {
	nc, err := nats.Connect(s.opts.URL, nats.UserInfo(protocol.EnrollUser, ""), nats.Name("fleetsim-enroll"),
		nats.CustomInboxPrefix(protocol.EnrollInboxPrefix), nats.Timeout(10*time.Second),
		nats.MaxReconnects(-1), nats.CustomReconnectDelay(backoff))
	if err != nil {
		return fmt.Errorf("connecting to %s to enroll: %w", s.opts.URL, err)
	}
	s.enroll = nc
	return s.each(ctx, s.agents, "enrolled", func(a *agent) error { return a.enroll(ctx, nc) })
}

func (s *Sim) connectAll(ctx context.Context, agents []*agent) error {
	return s.each(ctx, agents, "connected", func(a *agent) error { return a.connect() })
}

// each runs fn for every agent, parallel at most at once, and returns an
// error saying how many succeeded, with the first few errors.
func (s *Sim) each(ctx context.Context, agents []*agent, done string, fn func(*agent) error) error {
	var mu sync.Mutex
	var errs []error
	var ok atomic.Int64
	var g errgroup.Group
	g.SetLimit(parallel)
	for _, a := range agents {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if err := fn(a); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return nil
			}
			ok.Add(1)
			return nil
		})
	}
	_ = g.Wait()
	if err := ctx.Err(); err != nil {
		errs = append([]error{err}, errs...)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d agents %s: %w", ok.Load(), len(agents), done, errors.Join(errs[:min(len(errs), 5)]...))
}

// work answers commands until ctx ends.
func (s *Sim) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-s.msgs:
			if a := s.bySubject[m.Subject]; a != nil {
				a.handle(m, time.Now())
			}
		}
	}
}

// heartbeats beats every agent once an interval from one loop: a wheel of
// slots, each agent in a random one, so the first beat comes after a
// random share of the interval and the fleet's beats are spread over it.
func (s *Sim) heartbeats(ctx context.Context) {
	tick := min(100*time.Millisecond, max(s.opts.Heartbeat/10, time.Millisecond))
	wheel := make([][]*agent, max(int(s.opts.Heartbeat/tick), 1))
	for _, a := range s.agents {
		slot := rand.N(len(wheel))
		wheel[slot] = append(wheel[slot], a)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for slot := 0; ; slot = (slot + 1) % len(wheel) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, a := range wheel[slot] {
			a.heartbeat()
		}
	}
}

// Set makes exactly the share fraction of the agents behave as b
// (rounded): the agents now behaving as b become normal, then normal
// agents are picked in a fixed order spread over Options.Agents, so the
// same calls on the same fleet pick the same agents. Agents leaving
// Offline connect again before Set returns. It returns how many agents
// behave as b. Use Reset to make every agent normal.
func (s *Sim) Set(b Behaviour, fraction float64) (int, error) {
	if !b.valid() || b == Normal {
		return 0, fmt.Errorf("fleetsim: cannot set %q by share (fail, silent or offline; Reset for normal)", b)
	}
	if fraction < 0 || fraction > 1 || math.IsNaN(fraction) {
		return 0, fmt.Errorf("fleetsim: share %v is not between 0 and 1", fraction)
	}
	s.set.Lock()
	defer s.set.Unlock()
	want := share(len(s.agents), fraction)
	free := 0
	for _, a := range s.agents {
		if bh := a.current(); bh == Normal || bh == b {
			free++
		}
	}
	if want > free {
		return 0, fmt.Errorf("fleetsim: %d agents cannot be %s: only %d are normal or %s", want, b, free, b)
	}
	changes := map[*agent]Behaviour{}
	for _, a := range s.agents {
		if a.current() == b {
			changes[a] = Normal
		}
	}
	for _, i := range s.order {
		if want == 0 {
			break
		}
		if a := s.agents[i]; a.current() == Normal || a.current() == b {
			changes[a] = b
			want--
		}
	}
	if err := s.apply(changes); err != nil {
		return 0, err
	}
	return len(s.IDs(b)), nil
}

// SetIDs makes the agents of ids behave as b and returns how many of ids
// this fleet simulates; ids it does not simulate are left alone, so the
// same line can go to every process of a fleet.
func (s *Sim) SetIDs(b Behaviour, ids ...string) (int, error) {
	if !b.valid() {
		return 0, fmt.Errorf("fleetsim: unknown behaviour %q", b)
	}
	s.set.Lock()
	defer s.set.Unlock()
	changes := map[*agent]Behaviour{}
	for _, id := range ids {
		if a := s.byID[id]; a != nil {
			changes[a] = b
		}
	}
	return len(changes), s.apply(changes)
}

// Reset makes every agent normal and online again.
func (s *Sim) Reset() error {
	s.set.Lock()
	defer s.set.Unlock()
	changes := make(map[*agent]Behaviour, len(s.agents))
	for _, a := range s.agents {
		changes[a] = Normal
	}
	return s.apply(changes)
}

// apply changes behaviours; agents going offline close their connection,
// agents coming back connect, parallel at most at once.
func (s *Sim) apply(changes map[*agent]Behaviour) error {
	var back []*agent
	for a, b := range changes {
		if a.become(b) {
			back = append(back, a)
		}
	}
	if err := s.connectAll(context.Background(), back); err != nil {
		return fmt.Errorf("fleetsim: back online: %w", err)
	}
	return nil
}

// IDs lists the instance ids of the agents behaving as b now, in the order
// of Options.Agents.
func (s *Sim) IDs(b Behaviour) []string {
	var ids []string
	for _, a := range s.agents {
		if a.current() == b {
			ids = append(ids, a.id)
		}
	}
	return ids
}

// Stats reports what the fleet did since Start.
func (s *Sim) Stats() Stats {
	st := Stats{Processes: 1, Agents: len(s.agents), Heartbeats: s.stats.heartbeats.Load(),
		Received: s.stats.received.Load(), Acked: s.stats.acked.Load(), Ran: s.stats.ran.Load(), Answered: s.stats.answered.Load(),
		Failed: s.stats.failed.Load(), SilentDrops: s.stats.silentDrops.Load()}
	for _, a := range s.agents {
		b, enrolled, connected := a.state()
		if enrolled {
			st.Enrolled++
		}
		if connected {
			st.Connected++
		}
		switch b {
		case Failing:
			st.Failing++
		case Silent:
			st.Silent++
		case Offline:
			st.Offline++
		}
	}
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	for r, n := range s.stats.refused {
		if st.Refused == nil {
			st.Refused = map[protocol.Refusal]uint64{}
		}
		st.Refused[r] = n
	}
	return st
}

// Close closes every agent's connection and stops the fleet.
func (s *Sim) Close() {
	s.set.Lock()
	defer s.set.Unlock()
	for _, a := range s.agents {
		a.disconnect()
	}
	if s.enroll != nil {
		s.enroll.Close()
	}
	s.cancel()
	s.wg.Wait()
}

// backoff is the wait before retry number attempt: exponential from 250 ms
// to 30 s, jittered over its upper half so that a fleet cut off at once
// does not come back at once (the agent's own link waits the same).
func backoff(attempt int) time.Duration {
	d := 30 * time.Second
	if attempt < 7 {
		d = 250 * time.Millisecond << attempt
	}
	return d/2 + rand.N(d/2+1)
}
