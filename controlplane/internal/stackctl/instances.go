package stackctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackpro/stackpro/controlplane/fleet"
)

func (c *cli) instancesCommand() *cobra.Command {
	return group("instances", "List, show and tag instances",
		c.instancesListCommand(), c.instanceShowCommand(), c.instanceTagCommand())
}

func (c *cli) instancesListCommand() *cobra.Command {
	var selector string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls [--select SELECTOR] [--json]",
		Aliases: []string{"list"},
		Short:   "List instances, optionally those a selector picks",
		Example: `  stackctl instances ls --select plan=pro,tag.env=prod`,
		Args:    cobra.NoArgs,
		RunE: action(func(ctx context.Context, _ []string) error {
			var sel *fleet.Selection
			if selector != "" {
				s, err := parseSelector(selector)
				if err != nil {
					return err
				}
				sel = &s
			}
			api, err := c.endpoint()
			if err != nil {
				return err
			}
			insts, err := listInstances(ctx, api, sel)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, insts)
			}
			return instanceTable(c.stdout, insts, time.Now())
		}),
	}
	cmd.Flags().StringVar(&selector, "select", "", "only the instances this selector picks")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the instances as a JSON array")
	completeSelector(cmd)
	return cmd
}

// parseSelector is fleet.ParseSelection, whose errors are usage errors.
func parseSelector(text string) (fleet.Selection, error) {
	sel, err := fleet.ParseSelection(text)
	if err != nil {
		return sel, &usageError{msg: strings.ReplaceAll(err.Error(), "\n", "; ")}
	}
	return sel, nil
}

// listInstances reads every page of instances, keeping those sel picks
// (all when nil). The plan and status of sel are also asked of the
// server, to read fewer pages.
func listInstances(ctx context.Context, api *client, sel *fleet.Selection) ([]fleet.Instance, error) {
	query := url.Values{}
	if sel != nil && sel.Plan != "" {
		query.Set("plan", sel.Plan)
	}
	if sel != nil && sel.Status != "" {
		query.Set("status", string(sel.Status))
	}
	insts, err := list[fleet.Instance](ctx, api, "/api/v1/instances", "instances", query, 0)
	if err != nil {
		return nil, err
	}
	if sel != nil {
		insts = slices.DeleteFunc(insts, func(inst fleet.Instance) bool { return !sel.Match(inst, inst.Status) })
	}
	return nonNil(insts), nil
}

// instanceTable writes one line per instance.
func instanceTable(w io.Writer, insts []fleet.Instance, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCUSTOMER\tPLAN\tREGION\tSTATUS\tVERSION\tLAST SEEN\tTAGS")
	for _, inst := range insts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", inst.ID, orDash(inst.Customer), orDash(inst.Plan),
			orDash(inst.Region), inst.Status, orDash(inst.AgentVersion), ago(inst.LastSeen, now), orDash(formatTags(inst.Tags)))
	}
	return tw.Flush()
}

func (c *cli) instanceShowCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID [--json]",
		Short: "Show one instance",
		Args:  cobra.ExactArgs(1),
		RunE: action(func(ctx context.Context, args []string) error {
			api, err := c.endpoint()
			if err != nil {
				return err
			}
			var inst fleet.Instance
			if err := api.do(ctx, http.MethodGet, "/api/v1/instances/"+url.PathEscape(args[0]), nil, nil, &inst); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, inst)
			}
			return instanceDetail(c.stdout, inst, time.Now())
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the instance as JSON")
	return cmd
}

// instanceDetail writes inst as key: value lines, then its services.
func instanceDetail(w io.Writer, inst fleet.Instance, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	status := string(inst.Status)
	if inst.Connected {
		status += ", connected"
	}
	if inst.Health != "" {
		status += ", health " + string(inst.Health)
	}
	for _, kv := range [][2]string{
		{"ID", inst.ID},
		{"Customer", inst.Customer},
		{"Plan", inst.Plan},
		{"Subdomain", inst.Subdomain},
		{"Region", inst.Region},
		{"Provider", strings.TrimSpace(inst.Provider + " " + inst.ProviderID)},
		{"Instance type", inst.InstanceType},
		{"Address", inst.Address},
		{"Lifecycle", string(inst.Lifecycle)},
		{"Status", status},
		{"Problems", strings.Join(inst.Problems, "; ")},
		{"Agent version", inst.AgentVersion},
		{"Last seen", when(inst.LastSeen, now)},
		{"Enrolled", when(inst.EnrolledAt, now)},
		{"Created", when(inst.CreatedAt, now)},
		{"Job", inst.Job},
		{"Tags", formatTags(inst.Tags)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], orDash(kv[1]))
	}
	if s := inst.Stack; s != nil {
		stack := fmt.Sprintf("version %d", s.AppliedVersion)
		if s.ComposeTool != "" {
			stack += " (" + s.ComposeTool + ")"
		}
		if s.FailedVersion != 0 {
			stack += fmt.Sprintf("; version %d failed: %s", s.FailedVersion, s.FailedReason)
		}
		if s.Error != "" {
			stack += "; " + s.Error
		}
		fmt.Fprintf(tw, "Stack:\t%s\n", stack)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if inst.Stack == nil || len(inst.Stack.Services) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nServices:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SERVICE\tSTATE\tHEALTH\tRESTARTS\tSTARTED")
	for _, svc := range inst.Stack.Services {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\n", svc.Service, svc.State, orDash(svc.Health), svc.RestartCount, ago(svc.StartedAt, now))
	}
	return tw.Flush()
}

func (c *cli) instanceTagCommand() *cobra.Command {
	var remove []string
	cmd := &cobra.Command{
		Use:   "tag ID [KEY=VALUE ...] [--remove KEY ...]",
		Short: "Set and remove an instance's tags, keeping the others",
		Example: `  stackctl instances tag i-0abc env=prod tier=gold
  stackctl instances tag i-0abc --remove tier`,
		Args: cobra.MinimumNArgs(1),
		RunE: action(func(ctx context.Context, args []string) error {
			set, err := parseTags(args[1:])
			if err != nil {
				return err
			}
			if len(set) == 0 && len(remove) == 0 {
				return usageErrorf("tag: give KEY=VALUE pairs to set or --remove KEY")
			}
			api, err := c.endpoint()
			if err != nil {
				return err
			}
			path := "/api/v1/instances/" + url.PathEscape(args[0])
			var inst fleet.Instance
			if err := api.do(ctx, http.MethodGet, path, nil, nil, &inst); err != nil {
				return err
			}
			tags := mergeTags(inst.Tags, set, remove)
			if err := fleet.ValidateTags(tags); err != nil {
				return &usageError{msg: "tag: " + strings.ReplaceAll(err.Error(), "\n", "; ")}
			}
			body := struct {
				Tags map[string]string `json:"tags"`
			}{tags}
			if err := api.do(ctx, http.MethodPut, path+"/tags", nil, body, &inst); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s: %s\n", inst.ID, orDash(formatTags(inst.Tags)))
			return nil
		}),
	}
	cmd.Flags().StringArrayVar(&remove, "remove", nil, "a tag key to remove (repeatable)")
	return cmd
}

// parseTags reads KEY=VALUE arguments.
func parseTags(args []string) (map[string]string, error) {
	tags := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usageErrorf("tag: %q is not KEY=VALUE", a)
		}
		tags[k] = v
	}
	return tags, nil
}

// mergeTags is have with set applied, then remove.
func mergeTags(have, set map[string]string, remove []string) map[string]string {
	tags := maps.Clone(have)
	if tags == nil {
		tags = map[string]string{}
	}
	maps.Copy(tags, set)
	for _, k := range remove {
		delete(tags, k)
	}
	return tags
}

// formatTags writes tags as k=v,k=v sorted by key.
func formatTags(tags map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		parts = append(parts, k+"="+tags[k])
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago is how long before now t was, roughly: "4s ago", "3m ago"; "never"
// for the zero time.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// when is t with how long ago it was, "" for the zero time.
func when(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Local().Format(time.RFC3339) + " (" + ago(t, now) + ")"
}

// writeJSON writes v indented, for people and jq alike.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
