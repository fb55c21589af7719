package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stackpro/stackpro/shared/protocol"
)

// Config is the agent's configuration: the bootstrap file its instance was
// launched with, then STACKPRO_AGENT_* environment variables.
type Config struct {
	protocol.Bootstrap `yaml:",inline"`
}

// defaults fill what the bootstrap file leaves out.
func defaults() Config {
	return Config{Bootstrap: protocol.Bootstrap{
		StateDir:          "/var/lib/stackpro",
		HeartbeatInterval: 10 * time.Second,
		MetricsInterval:   30 * time.Second,
		HealthTimeout:     2 * time.Minute,
		LogLevel:          "info",
	}}
}

// LoadConfig reads the bootstrap file at path (unknown keys are errors),
// applies the environment and validates the result.
func LoadConfig(path string, environ []string) (Config, error) {
	cfg := defaults()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return cfg, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	return cfg, errors.Join(cfg.applyEnv(environ), cfg.Validate())
}

// applyEnv applies STACKPRO_AGENT_* variables; an unknown one is an error.
func (c *Config) applyEnv(environ []string) error {
	strs := map[string]*string{
		"STACKPRO_AGENT_INSTANCE_ID":      &c.InstanceID,
		"STACKPRO_AGENT_NATS_URL":         &c.NATSURL,
		"STACKPRO_AGENT_ENROLLMENT_TOKEN": &c.EnrollmentToken,
		"STACKPRO_AGENT_STATE_DIR":        &c.StateDir,
		"STACKPRO_AGENT_LOG_LEVEL":        &c.LogLevel,
		"STACKPRO_AGENT_COMPOSE_SLOTS":    &c.ComposeSlots,
		"STACKPRO_AGENT_COMMAND_KEY":      &c.CommandKey,
	}
	durations := map[string]*time.Duration{
		"STACKPRO_AGENT_HEARTBEAT_INTERVAL": &c.HeartbeatInterval,
		"STACKPRO_AGENT_METRICS_INTERVAL":   &c.MetricsInterval,
		"STACKPRO_AGENT_HEALTH_TIMEOUT":     &c.HealthTimeout,
	}
	var errs []error
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "STACKPRO_AGENT_") {
			continue
		}
		if p, ok := strs[name]; ok {
			*p = value
		} else if p, ok := durations[name]; ok {
			d, err := time.ParseDuration(value)
			if err != nil {
				errs = append(errs, fmt.Errorf("config: %s: want a duration such as 10s, got %q", name, value))
			}
			*p = d
		} else {
			errs = append(errs, fmt.Errorf("config: unknown environment variable %s", name))
		}
	}
	return errors.Join(errs...)
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if err := protocol.ValidInstanceID(c.InstanceID); err != nil {
		errs = append(errs, fmt.Errorf("instance_id: %w", err))
	}
	if c.NATSURL == "" {
		errs = append(errs, errors.New("nats_url is required"))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state_dir is required"))
	}
	if c.HeartbeatInterval <= 0 {
		errs = append(errs, fmt.Errorf("heartbeat_interval must be positive, got %s", c.HeartbeatInterval))
	}
	if c.MetricsInterval <= 0 {
		errs = append(errs, fmt.Errorf("metrics_interval must be positive, got %s", c.MetricsInterval))
	}
	if c.HealthTimeout <= 0 {
		errs = append(errs, fmt.Errorf("health_timeout must be positive, got %s", c.HealthTimeout))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level must be debug, info, warn or error, got %q", c.LogLevel))
	}
	if c.CommandKey != "" {
		if _, err := protocol.ParseCommandKey(c.CommandKey); err != nil {
			errs = append(errs, fmt.Errorf("command_key: %w", err))
		}
	}
	return errors.Join(errs...)
}
