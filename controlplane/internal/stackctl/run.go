package stackctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/rollout"
	"github.com/stackpro/stackpro/shared/protocol"
)

// runFlags are the flags of stackctl run.
type runFlags struct {
	args, selector, concurrency, maxErrors, timeout string
	detach, asJSON                                  bool
}

func (c *cli) runCommand() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run COMMAND --select SELECTOR [flags]",
		Short: "Run a command of the agents' catalog on the instances a selector picks",
		Long: `run starts a run of COMMAND on every instance SELECTOR picks, then follows it
to its end: at most --max-concurrency targets at once, and no new target once
more than --max-errors have failed or timed out. Ctrl-C stops following, not
the run. The exit code says how the run ended (see 'stackctl --help').

Commands: ` + strings.Join(protocol.OperatorCommands, ", ") + ".",
		Example: `  stackctl run stack.pull --select plan=pro,tag.env=prod --max-concurrency 10% --max-errors 2
  stackctl run stack.restart --args '{"service":"web"}' --select id=i-0abc
  stackctl run ping --select all --detach`,
		Args: cobra.ExactArgs(1),
		ValidArgsFunction: func(_ *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
			var names []cobra.Completion
			for _, name := range protocol.OperatorCommands {
				if len(args) == 0 && strings.HasPrefix(name, prefix) {
					names = append(names, name)
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: action(func(ctx context.Context, args []string) error { return c.run(ctx, args[0], f) }),
	}
	fl := cmd.Flags()
	fl.StringVar(&f.args, "args", "", "the command's arguments, a JSON object")
	fl.StringVar(&f.selector, "select", "", "the instances to run it on (required)")
	fl.StringVar(&f.concurrency, "max-concurrency", "50", "targets in flight at once: N or N% of the targets (0: all)")
	fl.StringVar(&f.maxErrors, "max-errors", "0", "failures tolerated before the run stops: N or N%")
	fl.StringVar(&f.timeout, "timeout", "60s", "how long each target has to answer")
	fl.BoolVar(&f.detach, "detach", false, "print the run's id and exit without following it")
	fl.BoolVar(&f.asJSON, "json", false, "print the final run and its unsuccessful targets as JSON")
	completeSelector(cmd)
	return cmd
}

// spec checks the run's command line and makes it a RunSpec, reporting
// every problem at once.
func (f runFlags) spec(command string) (rollout.RunSpec, error) {
	spec := rollout.RunSpec{Command: command}
	var problems []string
	if !slices.Contains(protocol.OperatorCommands, command) {
		problems = append(problems, fmt.Sprintf("unknown command %q (want one of %s)", command, strings.Join(protocol.OperatorCommands, ", ")))
	}
	if f.args != "" {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(f.args), &obj); err != nil || obj == nil {
			problems = append(problems, "--args: want a JSON object")
		}
		spec.Args = json.RawMessage(f.args)
	}
	var err error
	if f.selector == "" {
		problems = append(problems, "--select is required (\"all\" for the whole fleet)")
	} else if spec.Select, err = fleet.ParseSelection(f.selector); err != nil {
		problems = append(problems, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if spec.MaxConcurrency, err = rollout.ParseLimit(f.concurrency); err != nil {
		problems = append(problems, "--max-concurrency: "+err.Error())
	}
	if spec.MaxErrors, err = rollout.ParseLimit(f.maxErrors); err != nil {
		problems = append(problems, "--max-errors: "+err.Error())
	}
	if d, err := time.ParseDuration(f.timeout); err != nil || d < rollout.MinRunTimeout || d > rollout.MaxRunTimeout {
		problems = append(problems, fmt.Sprintf("--timeout %q: want %s to %s", f.timeout, rollout.MinRunTimeout, rollout.MaxRunTimeout))
	} else {
		spec.Timeout = rollout.Duration(d)
	}
	if len(problems) > 0 {
		return spec, usageErrorf("run: %s", strings.Join(problems, "; "))
	}
	return spec, nil
}

func (c *cli) run(ctx context.Context, command string, f runFlags) error {
	spec, err := f.spec(command)
	if err != nil {
		return err
	}
	api, err := c.endpoint()
	if err != nil {
		return err
	}
	var run rollout.Run
	if err := api.do(ctx, http.MethodPost, "/api/v1/runs", nil, spec, &run); err != nil {
		return err
	}
	if f.detach {
		fmt.Fprintln(c.stdout, run.ID)
		return nil
	}
	return c.followAndReport(ctx, api, run.ID, f.asJSON)
}

// followAndReport follows run id to its end, reports it and returns the
// error its outcome's exit code comes with.
func (c *cli) followAndReport(ctx context.Context, api *client, id string, asJSON bool) error {
	run, err := c.follow(ctx, api, id)
	if err != nil {
		return err
	}
	targets, err := unsuccessful(ctx, api, run)
	if err != nil {
		return err
	}
	if err := c.report(run, targets, asJSON); err != nil {
		return err
	}
	return outcome(run)
}

// pollInterval is how often a followed run is read.
const pollInterval = 300 * time.Millisecond

// follow reads run id until it is done, showing its progress on stderr.
// Being interrupted leaves the run going.
func (c *cli) follow(ctx context.Context, api *client, id string) (rollout.Run, error) {
	p := newProgress(c.stderr, time.Now)
	defer p.end()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for seen := false; ; seen = true {
		var run rollout.Run
		err := api.do(ctx, http.MethodGet, "/api/v1/runs/"+url.PathEscape(id), nil, nil, &run)
		switch {
		case ctx.Err() != nil:
			return run, continues(id)
		case err != nil && seen:
			return run, fmt.Errorf("run %s goes on, but following it failed: %w", id, err)
		case err != nil:
			return run, err
		}
		p.show(run)
		if run.Done() {
			return run, nil
		}
		select {
		case <-ctx.Done():
			return run, continues(id)
		case <-tick.C:
		}
	}
}

// continues is the error of a follow the operator interrupted.
func continues(id string) error {
	return &codedError{code: ExitInterrupted, msg: fmt.Sprintf(
		"run %s continues; follow with `stackctl runs show %s --follow`, cancel with `stackctl runs cancel %s`", id, id, id)}
}

// notSucceeded are the final states of targets that did not succeed, in
// the order a report lists them.
var notSucceeded = []rollout.TargetState{rollout.TargetFailed, rollout.TargetTimedOut, rollout.TargetUndeliverable, rollout.TargetSkipped}

// reportedPerState is how many targets of each unsuccessful state a
// report lists.
const reportedPerState = 20

// unsuccessful reads up to reportedPerState targets of run in each state
// of notSucceeded.
func unsuccessful(ctx context.Context, api *client, run rollout.Run) ([]rollout.Target, error) {
	targets := []rollout.Target{}
	for _, st := range notSucceeded {
		if run.Counts[st] == 0 {
			continue
		}
		some, err := runTargets(ctx, api, run.ID, st, reportedPerState)
		if err != nil {
			return nil, err
		}
		targets = append(targets, some...)
	}
	return targets, nil
}

// runTargets reads the targets of run id, those in state st if st is
// set, at most max (0: all).
func runTargets(ctx context.Context, api *client, id string, st rollout.TargetState, max int) ([]rollout.Target, error) {
	query := url.Values{}
	if st != "" {
		query.Set("state", string(st))
	}
	return list[rollout.Target](ctx, api, "/api/v1/runs/"+url.PathEscape(id)+"/targets", "targets", query, max)
}

// runReport is what --json prints of a run.
type runReport struct {
	Run rollout.Run `json:"run"`
	// Targets are those of interest: the unsuccessful ones (up to 20 per
	// state), or those asked for with runs show --targets.
	Targets []rollout.Target `json:"targets"`
}

// report prints run and targets: as JSON, or a summary for people.
func (c *cli) report(run rollout.Run, targets []rollout.Target, asJSON bool) error {
	if asJSON {
		return writeJSON(c.stdout, runReport{Run: run, Targets: targets})
	}
	if err := runSummary(c.stdout, run, time.Now()); err != nil {
		return err
	}
	if len(targets) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout)
	if err := targetTable(c.stdout, targets); err != nil {
		return err
	}
	for _, st := range notSucceeded {
		shown := 0
		for _, t := range targets {
			if t.State == st {
				shown++
			}
		}
		if n := run.Counts[st]; shown > 0 && n > shown {
			fmt.Fprintf(c.stdout, "(%d more %s: stackctl runs show %s --state %s)\n", n-shown, st, run.ID, st)
		}
	}
	return nil
}

// runSummary writes what run is, where it stands and its counts by state.
func runSummary(w io.Writer, run rollout.Run, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := string(run.State)
	if run.Reason != "" {
		state += ": " + run.Reason
	}
	for _, kv := range [][2]string{
		{"Run", run.ID},
		{"Command", run.Spec.Command + " " + string(run.Spec.Args)},
		{"Select", run.Spec.Select.String()},
		{"Limits", fmt.Sprintf("%d at once, %d errors tolerated, %s per target",
			run.Concurrency, run.ErrorBudget, time.Duration(run.Spec.Timeout))},
		{"Created", when(run.CreatedAt, now) + " by " + orDash(run.CreatedBy)},
		{"State", state},
		{"Took", elapsed(run, now).Round(100 * time.Millisecond).String()},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], strings.TrimSpace(kv[1]))
	}
	fmt.Fprintf(tw, "\nSTATE\tTARGETS\n")
	for _, st := range rollout.TargetStates {
		if n := run.Counts[st]; n > 0 {
			fmt.Fprintf(tw, "%s\t%d\n", st, n)
		}
	}
	fmt.Fprintf(tw, "total\t%d\n", run.Total)
	return tw.Flush()
}

// targetTable writes one line per target.
func targetTable(w io.Writer, targets []rollout.Target) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tSTATE\tTOOK\tERROR")
	for _, t := range targets {
		took := "-"
		if !t.SentAt.IsZero() && !t.FinishedAt.IsZero() {
			took = t.FinishedAt.Sub(t.SentAt).Round(time.Millisecond).String()
		}
		msg := t.Error
		if t.Refused != "" {
			msg = strings.TrimSpace("refused (" + t.Refused + ") " + msg)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Instance, t.State, took, orDash(msg))
	}
	return tw.Flush()
}

// elapsed is how long run has taken, or took.
func elapsed(run rollout.Run, now time.Time) time.Duration {
	end := now
	if !run.FinishedAt.IsZero() {
		end = run.FinishedAt
	}
	return max(end.Sub(run.CreatedAt), 0)
}

// outcome is the error (and with it the exit code) a finished run ends
// stackctl with; nil when every target succeeded.
func outcome(run rollout.Run) error {
	switch run.State {
	case rollout.RunStopped:
		return &codedError{code: ExitStopped, msg: fmt.Sprintf("run %s stopped: %s", run.ID, orDash(run.Reason))}
	case rollout.RunCancelled:
		return &codedError{code: ExitCancelled, msg: fmt.Sprintf("run %s was cancelled: %s", run.ID, orDash(run.Reason))}
	case rollout.RunCompleted:
		if ok := run.Counts[rollout.TargetSucceeded]; ok < run.Total {
			return &codedError{code: ExitTargetsFailed, msg: fmt.Sprintf("run %s completed; %d of %d targets did not succeed",
				run.ID, run.Total-ok, run.Total)}
		}
		return nil
	}
	return &failure{err: fmt.Errorf("run %s is %s", run.ID, run.State)}
}
