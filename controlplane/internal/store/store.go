// Package store keeps every record the control plane owns in one bbolt file:
// instances, jobs, enrollment tokens, agent credentials, accounts, API
// tokens, subscriptions, the events agents and Stripe report, and the
// metrics history of every instance.
//
// Layout of data.db:
//
//	instances/    <instance id>        → fleet.Instance (JSON)
//	tokens/       sha256(token) hex    → enrollToken (JSON)
//	credentials/  <nkey public key>    → <instance id>
//	api_tokens/   sha256(token) hex    → accounts.APIToken (JSON)
//	events/       <instance id>/       (one bucket per instance)
//	                <stream seq, 8-byte big-endian> → protocol.Event (JSON)
//	jobs/         <job id>             → Job (JSON)
//	subdomains/   <subdomain>          → <instance id>
//	dns/          <fqdn>               → DNSRecord (JSON), the local DNS provider's zone
//	users/        <user id>            → accounts.User (JSON)
//	user_emails/  <normalized email>   → <user id>
//	passwords/    <user id>            → argon2id hash (PHC string)
//	customers/    <customer id>        → accounts.Customer (JSON)
//	auth_tokens/  sha256(token) hex    → accounts.OneTimeToken (JSON): email verification, password reset
//	refresh_tokens/ <session id>/      (one bucket per session: a refresh token family)
//	                sha256(token) hex  → accounts.RefreshToken (JSON)
//	signing_keys/ <key id>             → accounts.SigningKey (JSON), with its private key
//	auth_audit/   <unix ns, 8-byte big-endian><seq, 8-byte big-endian> → audit.Record (JSON)
//	job_keys/     <idempotency key>    → <job id>
//	billing_events/ <stripe event id>  → billing.Event (JSON): every event received, once
//	billing_queue/  <seq, 8-byte big-endian> → raw event JSON, until applied
//	subscriptions/  <customer id>      → billing.Subscription (JSON)
//	stripe_customers/ <stripe customer id> → <customer id>
//	billing_due/    <customer id>      → <unix ns, 8-byte big-endian>: when to look at its instance
//	billing_mail/   <key>              → billing.OwedMail (JSON), until sent
//	metrics_raw/    <instance id>/     (one bucket per instance): every sample, kept a day
//	                <unix seconds, 8-byte big-endian> → fleet.MetricsPoint (binary, see metrics.go)
//	metrics_hourly/ <instance id>/     (one bucket per instance): hourly rollups, kept a month
//	                <hour start, unix seconds, 8-byte big-endian> → fleet.MetricsPoint (binary)
//	command_key/  "ed25519"            → the private key every command to an agent is signed with
//	runs/         <run id>             → rollout.Run (JSON); run ids sort by creation
//	run_targets/  <run id>/            (one bucket per run)
//	                <instance id>      → rollout.Target (JSON): its state and outcome
//
// Secrets (enrollment, API, refresh and one-time tokens) are kept only as
// their SHA-256, so a copy of the file grants none of them; the signing keys
// and the command key are the exception, and the file is readable by its owner only. Every change
// is one bbolt transaction.
package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/fault"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/shared/protocol"
)

var (
	bucketInstances   = []byte("instances")
	bucketTokens      = []byte("tokens")
	bucketCredentials = []byte("credentials")
	bucketAPITokens   = []byte("api_tokens")
	bucketEvents      = []byte("events")
	bucketJobs        = []byte("jobs")
	bucketSubdomains  = []byte("subdomains")
	bucketDNS         = []byte("dns")
	bucketUsers       = []byte("users")
	bucketUserEmails  = []byte("user_emails")
	bucketPasswords   = []byte("passwords")
	bucketCustomers   = []byte("customers")
	bucketAuthTokens  = []byte("auth_tokens")
	bucketRefresh     = []byte("refresh_tokens")
	bucketSigningKeys = []byte("signing_keys")
	bucketAuthAudit   = []byte("auth_audit")
	bucketJobKeys     = []byte("job_keys")
	// Metrics history.
	bucketMetricsRaw    = []byte("metrics_raw")
	bucketMetricsHourly = []byte("metrics_hourly")
	// Billing.
	bucketBillingEvents   = []byte("billing_events")
	bucketBillingQueue    = []byte("billing_queue")
	bucketSubscriptions   = []byte("subscriptions")
	bucketStripeCustomers = []byte("stripe_customers")
	bucketBillingDue      = []byte("billing_due")
	bucketBillingMail     = []byte("billing_mail")
	bucketCommandKey      = []byte("command_key")
	bucketRuns            = []byte("runs")
	bucketRunTargets      = []byte("run_targets")
	allBuckets            = [][]byte{bucketInstances, bucketTokens, bucketCredentials, bucketAPITokens, bucketEvents,
		bucketJobs, bucketSubdomains, bucketDNS, bucketUsers, bucketUserEmails, bucketPasswords, bucketCustomers,
		bucketAuthTokens, bucketRefresh, bucketSigningKeys, bucketAuthAudit, bucketJobKeys, bucketBillingEvents,
		bucketBillingQueue, bucketSubscriptions, bucketStripeCustomers, bucketBillingDue, bucketBillingMail,
		bucketMetricsRaw, bucketMetricsHourly, bucketCommandKey, bucketRuns, bucketRunTargets}
)

// Errors callers test for.
var (
	// ErrTokenRefused is every reason an enrollment token is refused.
	ErrTokenRefused = fault.New(fault.Forbidden, "enrollment token refused")
	// ErrNotFound is returned for a record that does not exist.
	ErrNotFound = fault.New(fault.NotFound, "not found")
)

// Store is the control plane's bbolt database.
type Store struct {
	db *bbolt.DB
}

// Open opens (or creates) the store at path. A store held by another
// process fails after timeout instead of waiting forever.
func Open(path string, timeout time.Duration) (*Store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("store: opening %s: locked by another process (is a control plane already running on this data dir?): %w", path, err)
		}
		return nil, fmt.Errorf("store: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: creating buckets in %s: %w", path, err)
	}
	// A lone Batch caller waits this long for company before it commits:
	// bbolt's 10 ms would cap one webhook sender at 80 events a second.
	db.MaxBatchDelay = 2 * time.Millisecond
	return &Store{db: db}, nil
}

// Close closes the database file.
func (s *Store) Close() error { return s.db.Close() }

// Ready reports whether the store can serve a read.
func (s *Store) Ready() error {
	return s.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketInstances) == nil {
			return errors.New("store: instances bucket missing")
		}
		return nil
	})
}

func putJSON(b *bbolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// PutInstances writes instances in one transaction.
func (s *Store) PutInstances(insts ...fleet.Instance) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketInstances)
		for _, inst := range insts {
			inst.Status = "" // derived, never stored
			if err := putJSON(b, inst.ID, inst); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: writing instances: %w", err)
	}
	return nil
}

// UpdateInstances writes what agents report of instances that still exist
// (last seen, connection, version, health, stack), in one transaction. The
// rest of a record belongs to the jobs and is left as stored, so a stale
// copy never undoes a job's write.
func (s *Store) UpdateInstances(insts ...fleet.Instance) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketInstances)
		for _, inst := range insts {
			raw := b.Get([]byte(inst.ID))
			if raw == nil {
				continue
			}
			var stored fleet.Instance
			if err := json.Unmarshal(raw, &stored); err != nil {
				return fmt.Errorf("instance %s: %w", inst.ID, err)
			}
			stored.LastSeen, stored.Connected, stored.AgentVersion = inst.LastSeen, inst.Connected, inst.AgentVersion
			stored.Health, stored.Problems, stored.Stack = inst.Health, inst.Problems, inst.Stack
			if stored.EnrolledAt.IsZero() {
				stored.EnrolledAt = inst.EnrolledAt
			}
			if err := putJSON(b, inst.ID, stored); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: updating instances: %w", err)
	}
	return nil
}

// Instances returns every stored instance.
func (s *Store) Instances() ([]fleet.Instance, error) {
	var out []fleet.Instance
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketInstances).ForEach(func(k, v []byte) error {
			var inst fleet.Instance
			if err := json.Unmarshal(v, &inst); err != nil {
				return fmt.Errorf("instance %s: %w", k, err)
			}
			out = append(out, inst)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading instances: %w", err)
	}
	return out, nil
}

// DeleteInstance removes an instance with its tokens, credentials, events
// and metrics history.
func (s *Store) DeleteInstance(id string) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if err := revokeAccess(tx, id); err != nil {
			return err
		}
		if err := tx.Bucket(bucketEvents).DeleteBucket([]byte(id)); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
		if err := deleteMetrics(tx, id); err != nil {
			return err
		}
		return tx.Bucket(bucketInstances).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("store: deleting instance %s: %w", id, err)
	}
	return nil
}

// deleteWhere deletes every key of b whose value matches.
func deleteWhere(b *bbolt.Bucket, match func(v []byte) bool) error {
	var keys [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if match(v) {
			keys = append(keys, k)
		}
		return nil
	})
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return err
}

// enrollToken is the stored form of a one-time enrollment token.
type enrollToken struct {
	InstanceID string    `json:"instance_id"`
	ExpiresAt  time.Time `json:"expires_at"`
	// UsedBy is the public key that redeemed the token; empty while unused.
	UsedBy string    `json:"used_by,omitempty"`
	UsedAt time.Time `json:"used_at,omitzero"`
}

// newSecret returns a random token with a readable prefix.
func newSecret(prefix string) string {
	return prefix + rand.Text()
}

func hashKey(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return []byte(hex.EncodeToString(sum[:]))
}

// MintToken creates a random one-time enrollment token for instance id,
// valid for ttl from now, and returns it. Only its hash is stored.
func (s *Store) MintToken(instanceID string, ttl time.Duration, now time.Time) (string, error) {
	token := newSecret("spe_")
	if err := s.RecordToken(instanceID, token, ttl, now); err != nil {
		return "", err
	}
	return token, nil
}

// RecordToken stores the hash of a one-time enrollment token for instance
// id, valid for ttl from now. Recording the same token again, as a retried
// step does, keeps its one record, with its instance and its use, and
// makes it good for ttl from now if that is later: a step resumed after a
// long outage hands the machine a token that works, and a used token stays
// used.
func (s *Store) RecordToken(instanceID, token string, ttl time.Duration, now time.Time) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketInstances).Get([]byte(instanceID)) == nil {
			return fmt.Errorf("instance %s: %w", instanceID, ErrNotFound)
		}
		b, key := tx.Bucket(bucketTokens), hashKey(token)
		tok := enrollToken{InstanceID: instanceID}
		if raw := b.Get(key); raw != nil {
			if err := json.Unmarshal(raw, &tok); err != nil {
				return fmt.Errorf("token record: %w", err)
			}
		}
		if !tok.ExpiresAt.Before(now.Add(ttl)) {
			return nil
		}
		tok.ExpiresAt = now.Add(ttl)
		return putJSON(b, string(key), tok)
	})
	if err != nil {
		return fmt.Errorf("store: recording token: %w", err)
	}
	return nil
}

// RevokeAccess deletes every enrollment token and credential of instance
// id: its agent can neither enroll nor connect any more.
func (s *Store) RevokeAccess(instanceID string) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		return revokeAccess(tx, instanceID)
	})
	if err != nil {
		return fmt.Errorf("store: revoking %s: %w", instanceID, err)
	}
	return nil
}

func revokeAccess(tx *bbolt.Tx, id string) error {
	if err := deleteWhere(tx.Bucket(bucketCredentials), func(v []byte) bool { return string(v) == id }); err != nil {
		return err
	}
	return deleteWhere(tx.Bucket(bucketTokens), func(v []byte) bool {
		var tok enrollToken
		return json.Unmarshal(v, &tok) == nil && tok.InstanceID == id
	})
}

// Access counts the enrollment tokens and credentials of instance id.
func (s *Store) Access(instanceID string) (tokens, credentials int, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		err := tx.Bucket(bucketTokens).ForEach(func(_, v []byte) error {
			var tok enrollToken
			if json.Unmarshal(v, &tok) == nil && tok.InstanceID == instanceID {
				tokens++
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketCredentials).ForEach(func(_, v []byte) error {
			if string(v) == instanceID {
				credentials++
			}
			return nil
		})
	})
	return tokens, credentials, err
}

// RedeemToken trades an enrollment token for the right of publicKey to
// connect as instance id, in one transaction. A token is good once: the
// same key presenting it again (an agent that crashed before it saw the
// answer) succeeds again; any other use is refused with ErrTokenRefused.
func (s *Store) RedeemToken(instanceID, token, publicKey string, now time.Time) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		tokens := tx.Bucket(bucketTokens)
		key := hashKey(token)
		raw := tokens.Get(key)
		if raw == nil {
			return fmt.Errorf("%w: unknown token", ErrTokenRefused)
		}
		var tok enrollToken
		if err := json.Unmarshal(raw, &tok); err != nil {
			return fmt.Errorf("store: token record: %w", err)
		}
		switch {
		case tok.InstanceID != instanceID:
			return fmt.Errorf("%w: token is bound to another instance", ErrTokenRefused)
		case tok.UsedBy == publicKey:
			return nil
		case tok.UsedBy != "":
			return fmt.Errorf("%w: token already used at %s", ErrTokenRefused, tok.UsedAt.Format(time.RFC3339))
		case !now.Before(tok.ExpiresAt):
			return fmt.Errorf("%w: token expired at %s", ErrTokenRefused, tok.ExpiresAt.Format(time.RFC3339))
		}
		creds := tx.Bucket(bucketCredentials)
		if owner := creds.Get([]byte(publicKey)); owner != nil && string(owner) != instanceID {
			return fmt.Errorf("%w: key already belongs to another instance", ErrTokenRefused)
		}
		instances := tx.Bucket(bucketInstances)
		rawInst := instances.Get([]byte(instanceID))
		if rawInst == nil {
			return fmt.Errorf("%w: instance no longer exists", ErrTokenRefused)
		}
		var inst fleet.Instance
		if err := json.Unmarshal(rawInst, &inst); err != nil {
			return fmt.Errorf("store: instance record: %w", err)
		}
		inst.EnrolledAt, inst.LastSeen = now, now
		tok.UsedBy, tok.UsedAt = publicKey, now
		if err := putJSON(tokens, string(key), tok); err != nil {
			return err
		}
		if err := putJSON(instances, instanceID, inst); err != nil {
			return err
		}
		return creds.Put([]byte(publicKey), []byte(instanceID))
	})
}

// Credentials returns every agent public key with its instance id.
func (s *Store) Credentials() (map[string]string, error) {
	out := map[string]string{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketCredentials).ForEach(func(k, v []byte) error {
			out[string(k)] = string(v)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading credentials: %w", err)
	}
	return out, nil
}

// CreateAPIToken mints a bearer token and returns it; only its hash is kept.
func (s *Store) CreateAPIToken(name string, role accounts.Role, now time.Time) (string, error) {
	token := newSecret("spt_")
	err := s.db.Update(func(tx *bbolt.Tx) error {
		return putJSON(tx.Bucket(bucketAPITokens), string(hashKey(token)), accounts.APIToken{Name: name, Role: role, CreatedAt: now})
	})
	if err != nil {
		return "", fmt.Errorf("store: creating API token: %w", err)
	}
	return token, nil
}

// LookupAPIToken returns the record of a bearer token, or ErrNotFound.
// The lookup is by hash, so it takes the same time whatever the token.
func (s *Store) LookupAPIToken(token string) (accounts.APIToken, error) {
	var out accounts.APIToken
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketAPITokens).Get(hashKey(token))
		if raw == nil {
			return ErrNotFound
		}
		return json.Unmarshal(raw, &out)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("store: looking up API token: %w", err)
	}
	return out, err
}

// HasAPITokens reports whether any API token exists.
func (s *Store) HasAPITokens() (bool, error) {
	var has bool
	err := s.db.View(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket(bucketAPITokens).Cursor().First()
		has = k != nil
		return nil
	})
	return has, err
}

// AppendEvent stores an event under its JetStream sequence, so an event
// redelivered by the stream is kept once.
func (s *Store) AppendEvent(ev protocol.Event, seq uint64) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(ev.InstanceID))
		if err != nil {
			return err
		}
		return putJSON(b, string(binary.BigEndian.AppendUint64(nil, seq)), ev)
	})
	if err != nil {
		return fmt.Errorf("store: appending event: %w", err)
	}
	return nil
}

// Events returns the last limit events of instance id, oldest first.
func (s *Store) InstanceEvents(instanceID string, limit int) ([]protocol.Event, error) {
	var out []protocol.Event
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEvents).Bucket([]byte(instanceID))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var ev protocol.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading events: %w", err)
	}
	slices.Reverse(out)
	return out, nil
}
