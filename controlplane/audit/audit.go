// Package audit is the record of who did what to the fleet and its
// accounts: logins and refusals, operators' tokens and runs, the commands
// and targets agents refused. Services append records; the store keeps
// them in order.
package audit

import "time"

// Record is one audited event. It never holds a password or a token.
type Record struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	UserID string    `json:"user_id,omitempty"`
	Email  string    `json:"email,omitempty"`
	// Actor is who acted: a user, an operator's token, an instance.
	Actor     string `json:"actor,omitempty"`
	IP        string `json:"ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
	Detail    string `json:"detail,omitempty"`
}
