// Package stackctl is the operators' command line: it lists and tags
// instances and starts, follows and cancels fleet command runs, all through
// dashboard-api over HTTP with an operator's API token. Main is the whole
// program; controlplane/cmd/stackctl only turns signals into a context.
package stackctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackpro/stackpro/shared/buildinfo"
)

// Exit codes a script can rely on.
const (
	// ExitOK: the command did what it was asked; a run completed and
	// every target succeeded.
	ExitOK = 0
	// ExitFailure: an unexpected error (the network, a 5xx, a conflict).
	ExitFailure = 1
	// ExitUsage: bad flags, selector or limit, or the server refused the
	// request as invalid (400, 422).
	ExitUsage = 2
	// ExitAuth: not logged in, or the token was refused (401, 403).
	ExitAuth = 3
	// ExitNotFound: no such instance or run (404).
	ExitNotFound = 4
	// ExitTargetsFailed: the run completed but some targets failed, timed
	// out or were undeliverable.
	ExitTargetsFailed = 5
	// ExitStopped: the run was stopped by its error budget.
	ExitStopped = 6
	// ExitCancelled: the run was cancelled.
	ExitCancelled = 7
	// ExitInterrupted: interrupted (Ctrl-C); a run being followed goes on.
	ExitInterrupted = 130
)

// exitCoder is an error that says which exit code it ends stackctl with.
type exitCoder interface {
	error
	exitCode() int
}

// failure is an error of a command's own code with no more specific exit
// code: ExitFailure. ownErrors makes every error a command returns an
// exitCoder, so that an error that is not one came from cobra itself,
// parsing the command line: a usage error.
type failure struct{ err error }

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }
func (f *failure) exitCode() int { return ExitFailure }

// usageError is a command line stackctl cannot act on.
type usageError struct{ msg string }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func (e *usageError) Error() string { return e.msg }
func (e *usageError) exitCode() int { return ExitUsage }

// codedError is an error with a given exit code: the outcome of a run,
// not being logged in, an interrupted follow.
type codedError struct {
	code int
	msg  string
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) exitCode() int { return e.code }

// Main runs stackctl with args (without the program name) and returns its
// exit code. Cancelling ctx interrupts it (ExitInterrupted).
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv,
		http: &http.Client{Timeout: requestTimeout}}
	root := c.command()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	// An error that is no exitCoder is cobra's: an unknown command or
	// flag, wrong arguments.
	code := ExitUsage
	var ec exitCoder
	if errors.As(err, &ec) {
		code = ec.exitCode()
	}
	if ctx.Err() != nil && code != ExitInterrupted {
		fmt.Fprintln(stderr, "stackctl: interrupted")
		return ExitInterrupted
	}
	fmt.Fprintf(stderr, "stackctl: %v\n", err)
	var ue *usageError
	if ec == nil || errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// requestTimeout bounds one HTTP request to dashboard-api.
const requestTimeout = 30 * time.Second

// cli is one invocation: its streams, environment and global flags.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	http           *http.Client
	// url and token are the --url and --token flags.
	url, token string
}

// command is stackctl's root command with every subcommand.
func (c *cli) command() *cobra.Command {
	root := &cobra.Command{
		Use:   "stackctl",
		Short: "Operate the StackPro fleet through dashboard-api",
		Long: `stackctl lists and tags instances and runs commands of the agents' catalog
on selections of them, with rate control, through dashboard-api.

Log in once with 'stackctl login --url URL'; every command also takes --url
and --token, and reads STACKPRO_URL and STACKPRO_TOKEN (flags win over the
environment, which wins over the saved login). The login is saved in
$STACKPRO_CONFIG, else in stackpro/stackctl.json under the user's config
directory.

Selectors: "all", or comma-separated key=value pairs, every one of which must
match: id=<id> (once per id), plan=, region=, version= (agent version),
status=, tag.<key>=<value>.

` + exitCodeHelp,
		Version:       buildinfo.String(),
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.PersistentFlags().StringVar(&c.url, "url", "", "dashboard-api URL (else $STACKPRO_URL, else the saved login)")
	root.PersistentFlags().StringVar(&c.token, "token", "", "operator API token (else $STACKPRO_TOKEN, else the saved login; a flag shows in ps)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{msg: err.Error()} })

	// Subcommands. Each is added here, and only here.
	root.AddCommand(
		c.loginCommand(),
		c.logoutCommand(),
		c.instancesCommand(),
		c.runCommand(),
		c.runsCommand(),
	)
	ownErrors(root)
	return root
}

// exitCodeHelp is the root command's description of the exit codes.
var exitCodeHelp = fmt.Sprintf(`Exit codes:
  %d    success; for a run followed to its end, every target succeeded
  %d    unexpected error (network, server error, conflict)
  %d    usage error (bad flags, selector or limit; the server refused the request as invalid)
  %d    not logged in, or the token was refused
  %d    not found
  %d    the run completed, but some targets failed, timed out or were undeliverable
  %d    the run was stopped by its error budget
  %d    the run was cancelled
  %d  interrupted (a run being followed goes on)`,
	ExitOK, ExitFailure, ExitUsage, ExitAuth, ExitNotFound, ExitTargetsFailed, ExitStopped, ExitCancelled, ExitInterrupted)

// group is a command that only holds subcommands: alone it shows its help,
// and an unknown subcommand is a usage error (cobra would show the help
// and succeed).
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(subs...)
	return cmd
}

// action adapts a command's function to cobra.
func action(fn func(ctx context.Context, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error { return fn(cmd.Context(), args) }
}

// ownErrors makes the errors of cmd's and its subcommands' functions
// exitCoders (see failure).
func ownErrors(cmd *cobra.Command) {
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(cmd *cobra.Command, args []string) error {
			err := run(cmd, args)
			var ec exitCoder
			if err == nil || errors.As(err, &ec) {
				return err
			}
			return &failure{err: err}
		}
	}
	for _, sub := range cmd.Commands() {
		ownErrors(sub)
	}
}
