package protocol

import (
	"encoding/json"
	"slices"
	"time"
)

// EnrollRequest is what an agent without credentials sends on EnrollSubject:
// the one-time token minted for its instance and the public half of the NKey
// it generated. The seed never leaves the instance.
type EnrollRequest struct {
	V            int    `json:"v"`
	InstanceID   string `json:"instance_id"`
	Token        string `json:"token"`
	PublicKey    string `json:"public_key"`
	Hostname     string `json:"hostname,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// EnrollReply answers an EnrollRequest. A refusal carries a code and a
// message that do not say which check failed.
type EnrollReply struct {
	V          int    `json:"v"`
	OK         bool   `json:"ok"`
	InstanceID string `json:"instance_id,omitempty"`
	Code       string `json:"code,omitempty"`
	Error      string `json:"error,omitempty"`
	// CommandKey is the control plane's Ed25519 public key (base64, std
	// encoding), the one every SignedCommand must verify with. Version 3.
	CommandKey string `json:"command_key,omitempty"`
}

// Enrollment refusal codes.
const (
	EnrollBadRequest = "bad_request"
	EnrollRefused    = "refused"
	EnrollInternal   = "internal"
)

// Health is an agent's own view of its instance.
type Health string

// Health values.
const (
	HealthOK       Health = "ok"
	HealthDegraded Health = "degraded"
)

// Heartbeat says an agent is alive. It is sent every 10 s (the first one
// jittered) and never spooled: a late heartbeat means nothing.
type Heartbeat struct {
	V            int       `json:"v"`
	InstanceID   string    `json:"instance_id"`
	Seq          uint64    `json:"seq"`
	At           time.Time `json:"at"`
	AgentVersion string    `json:"agent_version"`
	// Health is degraded when one of Problems needs an operator's attention.
	Health   Health   `json:"health"`
	Problems []string `json:"problems,omitempty"`
	// Outbox counts what waits to be sent and what was dropped for room.
	Outbox OutboxStats `json:"outbox"`
	// Stack is the customer's stack as the Docker engine reports it.
	Stack *StackStatus `json:"stack,omitempty"`
}

// OutboxStats describes an agent's spool of messages not yet delivered.
// The outbox holds up to 10,000 entries, past which the oldest metrics
// give way; events are kept up to 40,000 entries, past which they are
// refused, counted, and reported by an EventEventsDropped once there is
// room. The counts never decrease.
type OutboxStats struct {
	Pending        int    `json:"pending"`
	DroppedMetrics uint64 `json:"dropped_metrics"`
	DroppedEvents  uint64 `json:"dropped_events,omitempty"`
}

// Metrics is a sample of the host, taken every 30 s.
type Metrics struct {
	V             int       `json:"v"`
	InstanceID    string    `json:"instance_id"`
	At            time.Time `json:"at"`
	CPUPercent    float64   `json:"cpu_percent"`
	Load          Load      `json:"load"`
	Memory        Memory    `json:"memory"`
	Disks         []Disk    `json:"disks"`
	Network       Network   `json:"network"`
	UptimeSeconds uint64    `json:"uptime_seconds"`
}

// Load is the system load average over 1, 5 and 15 minutes.
type Load struct {
	One     float64 `json:"one"`
	Five    float64 `json:"five"`
	Fifteen float64 `json:"fifteen"`
}

// Memory is the host's memory in bytes.
type Memory struct {
	TotalBytes     uint64 `json:"total_bytes"`
	UsedBytes      uint64 `json:"used_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
}

// Disk is one mounted filesystem, in bytes.
type Disk struct {
	Mount      string `json:"mount"`
	FSType     string `json:"fs_type"`
	TotalBytes uint64 `json:"total_bytes"`
	UsedBytes  uint64 `json:"used_bytes"`
	FreeBytes  uint64 `json:"free_bytes"`
}

// Network counts bytes over every interface but loopback since boot.
type Network struct {
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
}

// Severity of an Event.
type Severity string

// Severity values.
const (
	SeverityInfo    Severity = "info"
	SeverityWarning Severity = "warning"
	SeverityError   Severity = "error"
)

// Event is something that happened on an instance. Events go through
// JetStream with ID as the message id, so a retried send is stored once.
type Event struct {
	V          int               `json:"v"`
	ID         string            `json:"id"`
	InstanceID string            `json:"instance_id"`
	At         time.Time         `json:"at"`
	Type       string            `json:"type"`
	Severity   Severity          `json:"severity"`
	Message    string            `json:"message"`
	Data       map[string]string `json:"data,omitempty"`
}

// Event types the agent sends.
const (
	EventAgentStarted = "agent.started"
	EventLinkRestored = "agent.link_restored"
	// EventCommandRefused reports a command the agent would not run. Data
	// holds "reason" (a Refusal), and "command", "nonce" and "run" when the
	// request could be read. The agent reports at most 10 a minute; past
	// that, one event a minute has only "suppressed": how many it did not
	// report one by one.
	EventCommandRefused = "command.refused"
	// EventTargetRefused reports a value under the instance's key in the
	// targets bucket that the agent would not apply. Data holds "reason"
	// (RefusedMalformed, RefusedMistargeted or RefusedStale), and
	// "version" and, when stale, "newest" (the version it keeps) when the
	// value could be read.
	EventTargetRefused = "target.refused"
	// EventEventsDropped reports events the agent's outbox refused at its
	// hard cap (see OutboxStats) since the last such report. Data holds
	// "dropped": how many.
	EventEventsDropped = "agent.events_dropped"
)

// CommandRequest asks an agent to run one command of its catalog. It
// travels only inside a SignedCommand (see Seal and Open): Target, Nonce,
// IssuedAt and Expires are what the signature binds it to.
type CommandRequest struct {
	V    int             `json:"v"`
	ID   string          `json:"id"`
	Name string          `json:"name"`
	Args json.RawMessage `json:"args,omitempty"`
	// Target is the one instance id that may run it.
	Target string `json:"target"`
	// Nonce is unique per request; an agent runs a nonce once.
	Nonce    string    `json:"nonce"`
	IssuedAt time.Time `json:"issued_at"`
	Expires  time.Time `json:"expires"`
	// Run is the rollout the request belongs to, if any.
	Run string `json:"run,omitempty"`
	// Ack asks the agent to acknowledge a request it accepted with a
	// CommandReply of State StateRunning, when the command is still
	// running AckAfter later; then it answers the outcome.
	Ack bool `json:"ack,omitempty"`
}

// Commands every agent answers: its whole catalog; there is no shell.
// Arguments are JSON objects: StackArgs for the stack commands that name a
// service or a number of log lines, ResultArgs for CommandResult.
const (
	CommandPing    = "ping"
	CommandVersion = "agent.version"
	// CommandFacts answers Facts: what the instance is and runs.
	CommandFacts = "facts"
	// CommandStackStatus answers a StackStatus.
	CommandStackStatus = "stack.status"
	// CommandStackRestart restarts one service (StackArgs.Service).
	CommandStackRestart = "stack.restart"
	// CommandStackDown stops the whole stack, keeping its data; CommandStackUp
	// starts it again.
	CommandStackDown = "stack.down"
	CommandStackUp   = "stack.up"
	// CommandStackPull pulls the images of the applied version.
	CommandStackPull = "stack.pull"
	// CommandStackLogs answers the last StackArgs.Lines lines of a
	// service's logs, at most 64 KiB.
	CommandStackLogs = "stack.logs"
	// CommandResult answers a ResultReply: what became of an earlier
	// request, by its nonce. It runs nothing; the control plane asks it
	// after a restart instead of sending a command again.
	CommandResult = "command.result"
)

// Catalog lists every command an agent runs, in the order to show them.
var Catalog = []string{CommandPing, CommandVersion, CommandFacts, CommandStackStatus, CommandStackRestart,
	CommandStackUp, CommandStackDown, CommandStackPull, CommandStackLogs, CommandResult}

// OperatorCommands are the commands of the catalog an operator may send:
// all but CommandResult, which only the control plane asks.
var OperatorCommands = slices.DeleteFunc(slices.Clone(Catalog), func(name string) bool { return name == CommandResult })

// StackArgs are the arguments of the stack commands.
type StackArgs struct {
	Service string `json:"service,omitempty"`
	Lines   int    `json:"lines,omitempty"`
}

// ResultArgs are the arguments of CommandResult.
type ResultArgs struct {
	Nonce string `json:"nonce"`
}

// ResultReply is CommandResult's answer. Known is false when the agent
// never received the nonce (or has forgotten it, ResultRetention after it
// expired); then the request never ran there.
type ResultReply struct {
	Known bool          `json:"known"`
	Reply *CommandReply `json:"reply,omitempty"`
}

// Facts is CommandFacts's answer: the instance's inventory.
type Facts struct {
	InstanceID    string    `json:"instance_id"`
	Hostname      string    `json:"hostname"`
	AgentVersion  string    `json:"agent_version"`
	AgentCommit   string    `json:"agent_commit,omitempty"`
	Protocol      int       `json:"protocol"`
	OS            string    `json:"os"`
	Arch          string    `json:"arch"`
	CPUs          int       `json:"cpus"`
	MemoryBytes   uint64    `json:"memory_bytes,omitempty"`
	BootedAt      time.Time `json:"booted_at,omitzero"`
	AgentStarted  time.Time `json:"agent_started"`
	ComposeTool   string    `json:"compose_tool,omitempty"`
	StackVersion  uint64    `json:"stack_version,omitempty"`
	StackServices []string  `json:"stack_services,omitempty"`
	// CommandsRun counts, by name, the commands the agent ran to an
	// outcome, failed ones included, since its state dir was made (one
	// cut short by the agent's stop is not counted). A refused request
	// runs nothing, a replay included, so an operator sees how often an
	// instance was restarted, pulled or stopped, and that a fleet run
	// reached it once.
	CommandsRun map[string]uint64 `json:"commands_run,omitempty"`
}

// StateRunning is CommandReply.State in an acknowledgement.
const StateRunning = "running"

// CommandReply is an agent's answer to a CommandRequest.
type CommandReply struct {
	V          int    `json:"v"`
	ID         string `json:"id"`
	InstanceID string `json:"instance_id"`
	Nonce      string `json:"nonce,omitempty"`
	// State is StateRunning in the acknowledgement an Ack request asks
	// for (OK is false there: read State first), and empty in the outcome.
	State  string          `json:"state,omitempty"`
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	// Refused says why the agent would not run the request; Error is then
	// a sentence for people.
	Refused Refusal `json:"refused,omitempty"`
}
