package accounts

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"
)

// Errors the store returns for account records (ErrTokenReused, for a
// rotated refresh token presented again, is the service's own).
var (
	// ErrEmailTaken is another user holding the address.
	ErrEmailTaken = errors.New("email address taken")
	// ErrExpired is a token past its expiry.
	ErrExpired = errors.New("token expired")
)

// Role is what an API token may do.
type Role string

// Roles.
const (
	RoleOperator Role = "operator"
	RoleAdmin    Role = "admin"
)

// APIToken is an operator's bearer token for the HTTP API, stored hashed.
type APIToken struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// RoleCustomer is the role of a customer's users.
const RoleCustomer Role = "customer"

// User is a person who logs in. The password hash is kept apart, so a User
// can be shown as it is.
type User struct {
	ID    string `json:"id"`
	Email string `json:"email"` // normalized: trimmed, lower case
	Role  Role   `json:"role"`
	// CustomerID is the customer the user belongs to; empty for operators.
	CustomerID      string    `json:"customer_id,omitempty"`
	FirstName       string    `json:"first_name"`
	LastName        string    `json:"last_name"`
	EmailVerifiedAt time.Time `json:"email_verified_at,omitzero"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// Customer is the account a customer's users share.
type Customer struct {
	ID          string    `json:"id"`
	Company     string    `json:"company"`
	Plan        string    `json:"plan"`
	Status      string    `json:"status"`
	TrialEndsAt time.Time `json:"trial_ends_at,omitzero"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// OneTimeToken is an emailed token, good once before it expires.
type OneTimeToken struct {
	Purpose   string    `json:"purpose"`
	UserID    string    `json:"user_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// RefreshToken is one refresh token of a session. Every rotation adds a
// token to the session's family and marks the one presented as used.
type RefreshToken struct {
	SessionID string    `json:"session_id"`
	UserID    string    `json:"user_id"`
	ExpiresAt time.Time `json:"expires_at"`
	UsedAt    time.Time `json:"used_at,omitzero"`
}

// SigningKey is an Ed25519 key that signs access tokens.
type SigningKey struct {
	ID         string    `json:"id"`
	PrivateKey []byte    `json:"private_key"` // ed25519.PrivateKey
	CreatedAt  time.Time `json:"created_at"`
}

// APITokenInfo is an API token as listed. Its ID, the first digits of the
// token's hash, names it without granting anything.
type APITokenInfo struct {
	ID string `json:"id"`
	APIToken
}

// APITokenIDLen is how many hex digits of a token's SHA-256 its id is.
const APITokenIDLen = 16

// APITokenID returns the id under which token is listed: the first
// APITokenIDLen hex digits of its SHA-256, the key it is stored under.
func APITokenID(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])[:APITokenIDLen]
}
