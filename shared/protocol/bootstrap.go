package protocol

import "time"

// Bootstrap is what an instance is handed at launch, before it has any
// credentials: the local provider writes it as the agent's config file, and
// on EC2 cloud-init writes it from user data. The enrollment token in it is
// good once and expires soon.
type Bootstrap struct {
	InstanceID      string `yaml:"instance_id"`
	NATSURL         string `yaml:"nats_url"`
	EnrollmentToken string `yaml:"enrollment_token"`
	// StateDir keeps the agent's NKey seed and outbox; the agent's default
	// is /var/lib/stackpro.
	StateDir          string        `yaml:"state_dir,omitempty"`
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval,omitempty"`
	MetricsInterval   time.Duration `yaml:"metrics_interval,omitempty"`
	// HealthTimeout is how long a new stack version has to turn healthy
	// before it is rolled back.
	HealthTimeout time.Duration `yaml:"health_timeout,omitempty"`
	LogLevel      string        `yaml:"log_level,omitempty"`
	// ComposeSlots, when set, is a directory shared by the agents of one
	// host (the local provider's): its lock files let only a few of them
	// run compose at once, so a hundred stacks starting together do not
	// swamp the one Docker engine. An instance of its own leaves it empty.
	ComposeSlots string `yaml:"compose_slots,omitempty"`
	// CommandKey pins the control plane's command key (base64 Ed25519, as
	// FormatCommandKey writes it): the agent checks commands with it and
	// refuses an enrollment reply that hands it another one. Enrollment
	// runs over an unauthenticated connection, so a key that arrives
	// with the instance is the one a man in the middle cannot swap.
	CommandKey string `yaml:"command_key,omitempty"`
}
