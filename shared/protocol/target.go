package protocol

import "time"

// TargetsBucket is the JetStream key-value bucket holding every instance's
// desired stack, keyed by instance id. An agent may read only its own key.
const TargetsBucket = "targets"

// TargetSubject is the subject a put of instance id's target is stored on;
// the agent subscribes to it to hear of every new target as it is written.
func TargetSubject(instanceID string) string { return "$KV." + TargetsBucket + "." + instanceID }

// TargetGetSubject asks JetStream directly for the latest target of
// instance id; the agent asks on every (re)connect, so it never misses the
// newest one.
func TargetGetSubject(instanceID string) string {
	return "$JS.API.DIRECT.GET.KV_" + TargetsBucket + "." + TargetSubject(instanceID)
}

// Target is the stack an instance should run. Version rises with every new
// target of an instance, so an agent that sees two values keeps the higher.
type Target struct {
	V          int    `json:"v"`
	InstanceID string `json:"instance_id"`
	Version    uint64 `json:"version"`
	// Compose is the docker compose file.
	Compose string `json:"compose"`
	// Env is written as the stack's .env file.
	Env map[string]string `json:"env,omitempty"`
	// Files are extra files the stack needs, by path relative to the
	// stack's directory.
	Files map[string]string `json:"files,omitempty"`
}

// ServiceState is one service of an instance's stack as the Docker engine
// reports it.
type ServiceState struct {
	Service string `json:"service"`
	// State is the container's state: created, running, restarting,
	// paused, exited or dead.
	State string `json:"state"`
	// Health is healthy, unhealthy or starting for a service with a
	// healthcheck, empty otherwise.
	Health       string    `json:"health,omitempty"`
	RestartCount int       `json:"restart_count"`
	StartedAt    time.Time `json:"started_at,omitzero"`
}

// StackStatus is what an agent reports of its stack in every heartbeat.
type StackStatus struct {
	// AppliedVersion is the target version running now; 0 before any.
	AppliedVersion uint64 `json:"applied_version"`
	// FailedVersion is the last target version that failed and was not
	// kept; it is not tried again until a newer target comes.
	FailedVersion uint64 `json:"failed_version,omitempty"`
	// FailedReason says why FailedVersion failed.
	FailedReason string         `json:"failed_reason,omitempty"`
	Services     []ServiceState `json:"services,omitempty"`
	// ComposeTool is the compose command in use: "docker compose" or "docker-compose".
	ComposeTool string `json:"compose_tool,omitempty"`
	// Error says why the stack cannot be run, e.g. no Docker engine.
	Error string `json:"error,omitempty"`
}
