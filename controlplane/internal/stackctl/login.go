package stackctl

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"
)

func (c *cli) loginCommand() *cobra.Command {
	var tokenStdin bool
	cmd := &cobra.Command{
		Use:   "login --url URL [--token-stdin]",
		Short: "Check an operator API token and save it with dashboard-api's URL",
		Long: `login checks an operator's (or an admin's) API token against dashboard-api
and saves it with the URL, readable by you only. The token is read from
standard input with --token-stdin, else from --token or $STACKPRO_TOKEN, else
asked for on the terminal without echo.`,
		Example: `  stackctl login --url https://ops.example.com
  pass show stackpro/token | stackctl login --url https://ops.example.com --token-stdin`,
		Args: cobra.NoArgs,
		RunE: action(func(ctx context.Context, _ []string) error { return c.login(ctx, tokenStdin) }),
	}
	cmd.Flags().BoolVar(&tokenStdin, "token-stdin", false, "read the token from standard input")
	return cmd
}

func (c *cli) logoutCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Forget the saved login (the token stays valid until an admin revokes it)",
		Args:  cobra.NoArgs,
		RunE: action(func(context.Context, []string) error {
			path, removed, err := c.removeConfig()
			if err != nil {
				return err
			}
			if !removed {
				fmt.Fprintf(c.stdout, "Not logged in (no %s).\n", path)
				return nil
			}
			fmt.Fprintf(c.stdout, "Logged out: removed %s.\n", path)
			return nil
		}),
	}
}

func (c *cli) login(ctx context.Context, tokenStdin bool) error {
	// A saved login that cannot be read is about to be replaced: only its
	// URL would have been of use.
	saved, _ := c.loadConfig()
	rawURL := cmp.Or(c.url, c.getenv(envURL), saved.URL)
	if rawURL == "" {
		return usageErrorf("login: --url is required")
	}
	base, err := parseBaseURL(rawURL)
	if err != nil {
		return err
	}
	token, err := c.readToken(ctx, tokenStdin)
	if err != nil {
		return err
	}
	who, err := whoami(ctx, &client{base: base, token: token, http: c.http})
	if err != nil {
		return err
	}
	path, err := c.saveConfig(config{URL: base.String(), Token: token})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "Logged in to %s %s; saved to %s.\n", base, who, path)
	return nil
}

// readToken reads the token to log in with.
func (c *cli) readToken(ctx context.Context, fromStdin bool) (string, error) {
	var token string
	switch {
	case fromStdin && c.token != "":
		return "", usageErrorf("login: --token-stdin and --token do not go together")
	case fromStdin:
		line, err := bufio.NewReader(c.stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("login: reading the token from standard input: %w", err)
		}
		token = line
	case c.token != "" || c.getenv(envToken) != "":
		token = cmp.Or(c.token, c.getenv(envToken))
	default:
		tty, ok := terminal(c.stdin)
		if !ok {
			return "", usageErrorf("login: no token: pass --token-stdin (or --token, or set %s), or run in a terminal", envToken)
		}
		fmt.Fprint(c.stderr, "API token: ")
		line, err := readSecret(ctx, tty)
		fmt.Fprintln(c.stderr)
		if err != nil {
			return "", fmt.Errorf("login: %w", err)
		}
		token = line
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", usageErrorf("login: the token is empty")
	}
	return token, nil
}

// Roles stackctl works for.
const (
	roleOperator = "operator"
	roleAdmin    = "admin"
)

// whoami checks that the token is an operator's or an admin's and says
// whose it is: "as ada@example.com (admin)" for a user's access token, or
// `with the API token "ci" (operator)` for an API token, which /me
// answers with its name and role.
func whoami(ctx context.Context, api *client) (string, error) {
	var me struct {
		Email string `json:"email"` // a user's
		Name  string `json:"name"`  // an API token's
		Role  string `json:"role"`
	}
	if err := api.do(ctx, http.MethodGet, "/api/v1/me", nil, nil, &me); err != nil {
		return "", fmt.Errorf("login: checking the token: %w", err)
	}
	switch {
	case me.Role != roleOperator && me.Role != roleAdmin:
		return "", &codedError{code: ExitAuth, msg: fmt.Sprintf(
			"login: the token is %s's, a %s; stackctl needs an operator's or an admin's", cmp.Or(me.Email, me.Name), me.Role)}
	case me.Email == "":
		return fmt.Sprintf("with the API token %q (%s)", me.Name, me.Role), nil
	default:
		return fmt.Sprintf("as %s (%s)", me.Email, me.Role), nil
	}
}
