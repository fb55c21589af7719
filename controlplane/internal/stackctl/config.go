package stackctl

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// Environment variables stackctl reads.
const (
	envConfig = "STACKPRO_CONFIG"
	envURL    = "STACKPRO_URL"
	envToken  = "STACKPRO_TOKEN"
)

// config is the saved login.
type config struct {
	URL   string `json:"url"`
	Token string `json:"token"`
}

// configPath is $STACKPRO_CONFIG, else stackpro/stackctl.json in the
// user's config directory.
func (c *cli) configPath() (string, error) {
	if p := c.getenv(envConfig); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("config: %w (set %s)", err, envConfig)
	}
	return filepath.Join(dir, "stackpro", "stackctl.json"), nil
}

// loadConfig reads the saved login; none saved is an empty config.
func (c *cli) loadConfig() (config, error) {
	var cfg config
	path, err := c.configPath()
	if err != nil {
		return cfg, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("config: reading %s: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return cfg, fmt.Errorf("config: reading %s: want one JSON object", path)
	}
	return cfg, nil
}

// saveConfig writes cfg atomically, readable by the user only.
func (c *cli) saveConfig(cfg config) (string, error) {
	path, err := c.configPath()
	if err != nil {
		return "", err
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("config: %w", err)
	}
	// Not renameio.WriteFile: it keeps an existing file's mode, and a
	// token must never land in a file others can read.
	f, err := renameio.NewPendingFile(path, renameio.WithPermissions(0o600), renameio.IgnoreUmask())
	if err != nil {
		return "", fmt.Errorf("config: writing %s: %w", path, err)
	}
	defer f.Cleanup()
	if _, err := f.Write(append(data, '\n')); err != nil {
		return "", fmt.Errorf("config: writing %s: %w", path, err)
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return "", fmt.Errorf("config: writing %s: %w", path, err)
	}
	return path, nil
}

// removeConfig deletes the saved login; it reports whether there was one.
func (c *cli) removeConfig() (string, bool, error) {
	path, err := c.configPath()
	if err != nil {
		return "", false, err
	}
	err = os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return path, false, nil
	}
	if err != nil {
		return path, false, fmt.Errorf("config: %w", err)
	}
	return path, true, nil
}

// endpoint is where to reach dashboard-api and the token to show it:
// flags, else the environment, else the saved login.
func (c *cli) endpoint() (*client, error) {
	cfg, err := c.loadConfig()
	if err != nil {
		return nil, err
	}
	rawURL := cmp.Or(c.url, c.getenv(envURL), cfg.URL)
	token := cmp.Or(c.token, c.getenv(envToken), cfg.Token)
	if rawURL == "" || token == "" {
		return nil, &codedError{code: ExitAuth, msg: "not logged in: run 'stackctl login --url URL', or set " + envURL + " and " + envToken}
	}
	base, err := parseBaseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return &client{base: base, token: token, http: c.http}, nil
}

// parseBaseURL checks that s is an http(s) URL with a host.
func parseBaseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usageErrorf("url %q: want http(s)://host[:port][/path]", s)
	}
	return u, nil
}
