package provision

import "time"

// JobState is where a job stands.
type JobState string

// Job states. A job runs its steps forward; when a step fails for good it
// compensates the steps done, in reverse, and ends failed.
const (
	JobPending      JobState = "pending"
	JobRunning      JobState = "running"
	JobCompensating JobState = "compensating"
	JobSucceeded    JobState = "succeeded"
	JobFailed       JobState = "failed"
)

// Finished reports whether a job in state s will never run again.
func (s JobState) Finished() bool { return s == JobSucceeded || s == JobFailed }

// JobLog is one line of a job's log: what a step did, when.
type JobLog struct {
	At      time.Time `json:"at"`
	Step    string    `json:"step"`
	Outcome string    `json:"outcome"` // ok, retry, failed, compensated, …
	Detail  string    `json:"detail,omitempty"`
}

// Job is a durable list of steps, persisted after every step.
type Job struct {
	ID         string `json:"id"`
	Kind       string `json:"kind"`
	InstanceID string `json:"instance_id"`
	// Key, when set, is unique: a second job asked for with the same key
	// is the first one.
	Key   string   `json:"key,omitempty"`
	State JobState `json:"state"`
	// Steps names every step, in order; Done counts those completed (while
	// running) or those still to undo (while compensating).
	Steps []string `json:"steps"`
	Done  int      `json:"done"`
	// Attempt counts the failures of the current step.
	Attempt int `json:"attempt"`
	// Params are the job's inputs (customer, plan, instance type, …).
	Params    map[string]string `json:"params,omitempty"`
	Error     string            `json:"error,omitempty"`
	Log       []JobLog          `json:"log"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}
