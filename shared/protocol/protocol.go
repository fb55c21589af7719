// Package protocol is the wire contract between the control plane and the
// agent: the NATS subject scheme, the message types and the protocol version.
// Both sides import it; it imports neither. Every message has a golden JSON
// file under testdata, so a change to the wire shows up in review.
package protocol

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Version rises when a message gains meaning the other side must understand.
// It never goes down; a side that receives a higher version than it knows
// keeps working with the fields it understands.
//
//	1: initial: enrollment, heartbeat, metrics, event, command request/reply.
//	2: targets in the KV bucket; the heartbeat carries the stack's status.
//	3: commands travel as SignedCommands (Ed25519, target, nonce, expiry);
//	   the enrollment reply carries the command key; no broadcast subject
//	   (a fleet command is one signed request per target); facts and
//	   command.result join the catalog; stack.start/stop are stack.up/down.
//	4: the agent refuses and reports (target.refused) a target that is not
//	   its own, has no version, or is older than one it has seen; the
//	   control plane asks for answers on ReplySubject, under the agent's
//	   own subjects; the broker keeps each agent and the enroll user in
//	   NATS accounts of their own; metrics go through JetStream, as
//	   events do, each with a message id; the heartbeat's outbox counts
//	   dropped events, which agent.events_dropped reports; facts count
//	   the commands the agent ran, by name (commands_run).
const Version = 4

// Subjects the control plane and the agents share. Everything an agent
// publishes lives under AgentSubjects(id), its answers to commands
// included; everything it may receive is its CommandSubject, its target,
// and replies to its own inbox.
const (
	// EnrollSubject takes an EnrollRequest and answers an EnrollReply.
	// Only the restricted enrollment user may publish here.
	EnrollSubject = "stackpro.enroll"
	// EventsStream is the JetStream stream that keeps agent events, so the
	// control plane sees them even after its own restart.
	EventsStream = "STACKPRO_EVENTS"
	// MetricsStream is the JetStream stream that holds agents' metrics
	// samples until the control plane has written them to its store.
	MetricsStream = "STACKPRO_METRICS"
	// EnrollUser is the NATS user name an agent without credentials
	// connects as; it can do nothing but enroll.
	EnrollUser = "enroll"
	// EnrollInboxPrefix is the reply inbox prefix of an enrolling agent.
	EnrollInboxPrefix = "_INBOX.enroll"
)

// Kinds of messages an agent publishes, the last token of its subjects.
const (
	KindHeartbeat = "heartbeat"
	KindMetrics   = "metrics"
	KindEvent     = "event"
)

// AgentSubject is the subject instance id publishes messages of kind on.
func AgentSubject(instanceID, kind string) string {
	return "stackpro.agent." + instanceID + "." + kind
}

// AgentSubjects is the wildcard covering every subject instance id may publish on.
func AgentSubjects(instanceID string) string { return "stackpro.agent." + instanceID + ".>" }

// AgentWildcard is the subject the control plane subscribes to for kind from every agent.
func AgentWildcard(kind string) string { return "stackpro.agent.*." + kind }

// CommandSubject is where instance id receives its own SignedCommands.
func CommandSubject(instanceID string) string { return "stackpro.cmd." + instanceID }

// ReplySubject is where instance id's agent answers a request the control
// plane made with token (one subject token or more). It lies under the
// instance's own subjects, the only ones its agent can publish on, so an
// answer there can be that agent's alone. The agent answers on the reply
// subject a request names, whatever it is.
func ReplySubject(instanceID, token string) string {
	return AgentSubject(instanceID, "reply") + "." + token
}

// ReplyWildcard covers every instance's answers to requests made with
// token (and more tokens after it).
func ReplyWildcard(token string) string { return AgentWildcard("reply") + "." + token + ".>" }

// InboxPrefix is the reply inbox prefix of instance id. Agents use their
// own prefix so that no agent can read another's replies.
func InboxPrefix(instanceID string) string { return "_INBOX." + instanceID }

// InstanceFromSubject returns the instance id of an agent subject
// (stackpro.agent.<id>.<kind>) and whether subject was one.
func InstanceFromSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, "stackpro.agent.")
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, ".")
	if !ok || ValidInstanceID(id) != nil {
		return "", false
	}
	return id, true
}

var instanceIDPattern = regexp.MustCompile(`^i-[a-z0-9-]{1,61}$`)

// ErrInvalidInstanceID is returned for an instance id that cannot be a
// single NATS subject token.
var ErrInvalidInstanceID = errors.New("invalid instance id")

// ValidInstanceID reports whether id can name an instance: "i-" and 1 to 61
// lower-case letters, digits and dashes, like an EC2 instance id. Such an id
// is always one NATS subject token, so it can never widen a permission, and
// never collides with another inbox such as EnrollInboxPrefix.
func ValidInstanceID(id string) error {
	if !instanceIDPattern.MatchString(id) {
		return fmt.Errorf("%w %q: want i- and 1-61 of [a-z0-9-]", ErrInvalidInstanceID, id)
	}
	return nil
}
