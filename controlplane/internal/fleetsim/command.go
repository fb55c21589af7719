package fleetsim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stackpro/stackpro/shared/protocol"
)

// flags are stackpro-sim's flags.
type flags struct {
	url, agents, version  string
	perProcess            int
	fail, silent, offline fraction
	heartbeat             time.Duration
	// child mode: simulate agents from..from+count of the file.
	child       bool
	from, count int
}

// fraction is a flag taking a share as a percentage ("10%") or a
// fraction ("0.1").
type fraction float64

func (f *fraction) String() string { return strconv.FormatFloat(float64(*f), 'g', -1, 64) }
func (f *fraction) Set(s string) error {
	v, err := parseFraction(s)
	*f = fraction(v)
	return err
}

func parseFraction(s string) (float64, error) {
	num, percent := strings.CutSuffix(strings.TrimSpace(s), "%")
	v, err := strconv.ParseFloat(num, 64)
	if percent {
		v /= 100
	}
	if err != nil || v < 0 || v > 1 {
		return 0, fmt.Errorf("%q is not a share: want a percentage like 10%% or a fraction from 0 to 1", s)
	}
	return v, nil
}

const controlHelp = `Control lines read on stdin, forwarded to every process:
  fail 10%        make 10% of the agents fail every command
  silent 5%       make 5% of the agents answer nothing
  offline 10%     close the connections of 10% of the agents
  fail i-a i-b    the same for the agents named (also silent, offline, normal)
  normal          every agent normal and online again
A share replaces the previous share of that behaviour; the agents picked are
spread over the file and the same for the same lines.`

const usage = `usage: stackpro-sim --nats URL --agents FILE [flags]

stackpro-sim runs simulated agents against a control plane: each enrolls
with its own token and NKey, keeps its own NATS connection, heartbeats and
answers signed commands. The agents come from a credentials file (JSON lines
of instance_id and token) and are split over child processes of at most
--per-process agents. Every second it prints the fleet's stats as one JSON
line on stdout, and a last one when it stops (on SIGINT or SIGTERM).

` + controlHelp + `

Flags:
`

// Main is the stackpro-sim program, run with args (without the program
// name) until ctx ends: a fleet of simulated agents from a credentials
// file, split across child processes of the same executable, each
// simulating at most --per-process agents. controlplane/cmd/stackpro-sim
// only turns signals into ctx.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	f, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if f.child {
		return runChild(ctx, f, stdin, stdout, stderr)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("fleetsim: %w", err)
	}
	return runParent(ctx, f, exe, stdin, stdout, stderr)
}

// parseFlags parses and validates args; for -help it shows the usage and
// returns flag.ErrHelp.
func parseFlags(args []string, stderr io.Writer) (flags, error) {
	f := flags{perProcess: 5000, heartbeat: 10 * time.Second, version: "sim"}
	fs := flag.NewFlagSet("stackpro-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&f.url, "nats", "", "the control plane's NATS `URL` (required)")
	fs.StringVar(&f.agents, "agents", "", "credentials `file`: JSON lines of instance_id and token (required)")
	fs.IntVar(&f.perProcess, "per-process", f.perProcess, "agents per child process (one file descriptor each)")
	fs.Var(&f.fail, "fail", "`share` of agents failing every command, as 10% or 0.1")
	fs.Var(&f.silent, "silent", "`share` of agents answering nothing")
	fs.Var(&f.offline, "offline", "`share` of agents starting offline")
	fs.DurationVar(&f.heartbeat, "heartbeat", f.heartbeat, "heartbeat interval")
	fs.StringVar(&f.version, "version", f.version, "agent version the agents report")
	fs.BoolVar(&f.child, "child", false, "internal: run as one child process of the fleet")
	fs.IntVar(&f.from, "from", 0, "internal, with --child: first agent of the file")
	fs.IntVar(&f.count, "count", 0, "internal, with --child: number of agents")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return f, f.validate()
}

func (f flags) validate() error {
	var errs []error
	if f.url == "" {
		errs = append(errs, errors.New("--nats is required"))
	}
	if f.agents == "" {
		errs = append(errs, errors.New("--agents is required"))
	}
	if f.perProcess < 1 {
		errs = append(errs, errors.New("--per-process must be at least 1"))
	}
	if f.fail+f.silent+f.offline > 1 {
		errs = append(errs, errors.New("--fail, --silent and --offline add up to more than 100%"))
	}
	if f.heartbeat <= 0 {
		errs = append(errs, errors.New("--heartbeat must be positive"))
	}
	return errors.Join(errs...)
}

// childArgs are the arguments of the child simulating count agents from from.
func (f flags) childArgs(from, count int) []string {
	return []string{"--child", "--nats", f.url, "--agents", f.agents,
		"--from", strconv.Itoa(from), "--count", strconv.Itoa(count),
		"--fail", f.fail.String(), "--silent", f.silent.String(), "--offline", f.offline.String(),
		"--heartbeat", f.heartbeat.String(), "--version", f.version}
}

// control is one control line: a behaviour for a share of the agents, or
// for the agents named.
type control struct {
	b     Behaviour
	share float64
	ids   []string
}

func parseControl(line string) (control, error) {
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return control{}, errors.New("empty control line")
	}
	c := control{b: Behaviour(fields[0])}
	args := fields[1:]
	switch {
	case !c.b.valid():
		return c, fmt.Errorf("unknown control %q: want fail, silent, offline or normal", fields[0])
	case len(args) > 0 && protocol.ValidInstanceID(args[0]) == nil:
		for _, id := range args {
			if err := protocol.ValidInstanceID(id); err != nil {
				return c, err
			}
		}
		c.ids = args
	case c.b == Normal && len(args) == 0:
	case c.b == Normal:
		return c, errors.New("normal takes instance ids or nothing")
	case len(args) != 1:
		return c, fmt.Errorf("%s takes one share (10%%) or instance ids", c.b)
	default:
		var err error
		if c.share, err = parseFraction(args[0]); err != nil {
			return c, err
		}
	}
	return c, nil
}

func (c control) apply(s *Sim) error {
	switch {
	case c.ids != nil:
		_, err := s.SetIDs(c.b, c.ids...)
		return err
	case c.b == Normal:
		return s.Reset()
	}
	_, err := s.Set(c.b, c.share)
	return err
}

// runChild simulates its slice of the file until ctx ends or its stdin
// closes (so it never outlives its parent), applies the control lines it
// reads, and prints its Stats once a second and once at the end.
func runChild(ctx context.Context, f flags, stdin io.Reader, stdout, stderr io.Writer) error {
	creds, err := LoadCredentials(f.agents)
	if err != nil {
		return err
	}
	if f.from < 0 || f.count < 1 || f.from+f.count > len(creds) {
		return fmt.Errorf("fleetsim: agents %d to %d are not in %s (%d agents)", f.from, f.from+f.count, f.agents, len(creds))
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("from", f.from, "count", f.count)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan string)
	go func() {
		defer cancel()
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	sim, err := Start(ctx, Options{URL: f.url, Agents: creds[f.from : f.from+f.count], Fail: float64(f.fail),
		Silent: float64(f.silent), Offline: float64(f.offline), Heartbeat: f.heartbeat, Version: f.version, Log: log})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	enc := json.NewEncoder(stdout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if err := enc.Encode(sim.Stats()); err != nil {
			sim.Close()
			return fmt.Errorf("fleetsim: writing stats: %w", err)
		}
		select {
		case <-ctx.Done():
			sim.Close()
			return enc.Encode(sim.Stats())
		case line := <-lines:
			c, err := parseControl(line)
			if err == nil {
				err = c.apply(sim)
			}
			if err != nil {
				log.Error("control line", "line", line, "err", err)
			}
		case <-tick.C:
		}
	}
}

// child is one child process as the parent sees it.
type child struct {
	n   int
	cmd *exec.Cmd
	// mu guards stdin, written by the forwarder and closed at the end.
	mu    sync.Mutex
	stdin io.WriteCloser
}

func (c *child) send(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stdin != nil {
		_, _ = io.WriteString(c.stdin, line+"\n") // a child gone is noticed by its reader
	}
}

// stop closes the child's stdin, which makes it stop.
func (c *child) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stdin != nil {
		_ = c.stdin.Close()
		c.stdin = nil
	}
}

type report struct {
	n     int
	stats Stats
}

// runParent starts ceil(agents/per-process) children, each exe with
// --child, forwards the control lines on stdin to them, and prints their
// added-up Stats once a second and once at the end. It stops them when
// ctx ends; a child that stops by itself stops the whole fleet with an
// error.
func runParent(ctx context.Context, f flags, exe string, stdin io.Reader, stdout, stderr io.Writer) error {
	creds, err := LoadCredentials(f.agents)
	if err != nil {
		return err
	}
	reports := make(chan report)
	exits := make(chan error)
	var children []*child
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	for from := 0; from < len(creds); from += f.perProcess {
		c := &child{n: len(children), cmd: exec.Command(exe, f.childArgs(from, min(f.perProcess, len(creds)-from))...)}
		c.cmd.Stderr = stderr
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			return fmt.Errorf("fleetsim: %w", err)
		}
		out, err := c.cmd.StdoutPipe()
		if err != nil {
			return fmt.Errorf("fleetsim: %w", err)
		}
		if err := c.cmd.Start(); err != nil {
			return fmt.Errorf("fleetsim: starting child %d: %w", c.n, err)
		}
		children = append(children, c)
		go readChild(c, out, reports, exits)
	}
	go forward(ctx, stdin, children, stderr)

	last := make([]Stats, len(children))
	enc := json.NewEncoder(stdout)
	emit := func() error {
		var sum Stats
		for _, s := range last {
			sum.Add(s)
		}
		return enc.Encode(sum)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	running, done := len(children), ctx.Done()
	var failure error
	for running > 0 {
		select {
		case r := <-reports:
			last[r.n] = r.stats
		case err := <-exits:
			running--
			if failure == nil && done != nil {
				failure = fmt.Errorf("fleetsim: a child stopped: %w", err)
			}
			for _, c := range children {
				c.stop()
			}
		case <-done:
			for _, c := range children {
				c.stop()
			}
			done = nil // each child stops and reports once more
		case <-tick.C:
			if err := emit(); err != nil {
				return err
			}
		}
	}
	if err := emit(); err != nil {
		return err
	}
	return failure
}

// readChild passes on each Stats line of child c until it exits, then its
// exit.
func readChild(c *child, out io.Reader, reports chan<- report, exits chan<- error) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var s Stats
		if err := json.Unmarshal(sc.Bytes(), &s); err == nil {
			reports <- report{n: c.n, stats: s}
		}
	}
	err := c.cmd.Wait()
	if err == nil {
		err = fmt.Errorf("child %d exited", c.n)
	} else {
		err = fmt.Errorf("child %d: %w", c.n, err)
	}
	exits <- err
}

// forward sends every valid control line on stdin to every child. The
// end of stdin stops nothing: the fleet runs until ctx ends.
func forward(ctx context.Context, stdin io.Reader, children []*child, stderr io.Writer) {
	sc := bufio.NewScanner(stdin)
	for sc.Scan() && ctx.Err() == nil {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if _, err := parseControl(line); err != nil {
			fmt.Fprintf(stderr, "fleetsim: %v\n%s\n", err, controlHelp)
			continue
		}
		for _, c := range children {
			c.send(line)
		}
	}
}
