package stackctl

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackpro/stackpro/controlplane/rollout"
)

func (c *cli) runsCommand() *cobra.Command {
	return group("runs", "List, show, follow and cancel runs",
		c.runsListCommand(), c.runShowCommand(), c.runCancelCommand())
}

func (c *cli) runsListCommand() *cobra.Command {
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls [--limit N] [--json]",
		Aliases: []string{"list"},
		Short:   "List runs, newest first",
		Args:    cobra.NoArgs,
		RunE: action(func(ctx context.Context, _ []string) error {
			if limit < 0 {
				return usageErrorf("runs ls: --limit must be 0 (all) or more")
			}
			api, err := c.endpoint()
			if err != nil {
				return err
			}
			runs, err := list[rollout.Run](ctx, api, "/api/v1/runs", "runs", nil, limit)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, nonNil(runs))
			}
			now := time.Now()
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCOMMAND\tSELECT\tSTATE\tDONE\tERRORS\tCREATED\tBY")
			for _, r := range runs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d\t%s\t%s\n", r.ID, r.Spec.Command, r.Spec.Select.String(), r.State,
					finished(r), r.Total, r.Errors(), ago(r.CreatedAt, now), orDash(r.CreatedBy))
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "list at most N runs (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the runs as a JSON array")
	return cmd
}

func (c *cli) runShowCommand() *cobra.Command {
	var follow, withTargets, asJSON bool
	var state string
	cmd := &cobra.Command{
		Use:   "show ID [--follow] [--targets] [--state S] [--json]",
		Short: "Show a run; --follow follows it to its end like run does",
		Long: `show prints a run: its counts by state and the targets that did not succeed
(up to 20 per state), or with --targets every target (those in state S with
--state). --follow shows its progress until it ends and then exits with the
run's outcome, as 'stackctl run' does.`,
		Args: cobra.ExactArgs(1),
		RunE: action(func(ctx context.Context, args []string) error {
			id := args[0]
			if state != "" && !slices.Contains(rollout.TargetStates, rollout.TargetState(state)) {
				return usageErrorf("runs show: --state %q: want one of %v", state, rollout.TargetStates)
			}
			if follow && (withTargets || state != "") {
				return usageErrorf("runs show: --follow does not go with --targets or --state")
			}
			api, err := c.endpoint()
			if err != nil {
				return err
			}
			if follow {
				return c.followAndReport(ctx, api, id, asJSON)
			}
			var run rollout.Run
			if err := api.do(ctx, http.MethodGet, "/api/v1/runs/"+url.PathEscape(id), nil, nil, &run); err != nil {
				return err
			}
			var targets []rollout.Target
			if withTargets || state != "" {
				targets, err = runTargets(ctx, api, id, rollout.TargetState(state), 0)
			} else {
				targets, err = unsuccessful(ctx, api, run)
			}
			if err != nil {
				return err
			}
			return c.report(run, nonNil(targets), asJSON)
		}),
	}
	cmd.Flags().BoolVar(&follow, "follow", false, "follow the run to its end and exit with its outcome")
	cmd.Flags().BoolVar(&withTargets, "targets", false, "list every target")
	cmd.Flags().StringVar(&state, "state", "", "list the targets in this state")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the run and its targets as JSON")
	_ = cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var states []cobra.Completion
		for _, st := range rollout.TargetStates {
			states = append(states, string(st))
		}
		return states, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func (c *cli) runCancelCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a run: no new target is sent; those in flight finish",
		Args:  cobra.ExactArgs(1),
		RunE: action(func(ctx context.Context, args []string) error {
			api, err := c.endpoint()
			if err != nil {
				return err
			}
			var run rollout.Run
			if err := api.do(ctx, http.MethodPost, "/api/v1/runs/"+url.PathEscape(args[0])+"/cancel", nil, nil, &run); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "run %s: %s (%d/%d targets done)\n", run.ID, run.State, finished(run), run.Total)
			return nil
		}),
	}
}

// completeSelector completes --select with its keys.
func completeSelector(cmd *cobra.Command) {
	_ = cmd.RegisterFlagCompletionFunc("select", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return []cobra.Completion{"all", "id=", "plan=", "region=", "version=", "status=", "tag."}, cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
	})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
