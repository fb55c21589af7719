package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"github.com/stackpro/stackpro/controlplane/accounts"
	"github.com/stackpro/stackpro/controlplane/audit"
)

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("store: %s: %w", what, err)
}

// getJSON reads key of b into v, or returns ErrNotFound.
func getJSON(b *bbolt.Bucket, key string, v any) error {
	raw := b.Get([]byte(key))
	if raw == nil {
		return ErrNotFound
	}
	return json.Unmarshal(raw, v)
}

// CreateUser creates a customer and its first user with the password hash,
// in one transaction, or returns ErrEmailTaken. An operator's user comes
// with a zero accounts.Customer, and none is created.
func (s *Store) CreateUser(u accounts.User, passwordHash string, c accounts.Customer) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		emails := tx.Bucket(bucketUserEmails)
		if emails.Get([]byte(u.Email)) != nil {
			return accounts.ErrEmailTaken
		}
		if err := emails.Put([]byte(u.Email), []byte(u.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPasswords).Put([]byte(u.ID), []byte(passwordHash)); err != nil {
			return err
		}
		if err := putJSON(tx.Bucket(bucketUsers), u.ID, u); err != nil {
			return err
		}
		if c.ID == "" {
			return nil // an operator: no customer
		}
		return putJSON(tx.Bucket(bucketCustomers), c.ID, c)
	})
	return wrap("creating user", err)
}

// User returns user id, or ErrNotFound.
func (s *Store) User(id string) (accounts.User, error) {
	var u accounts.User
	err := s.db.View(func(tx *bbolt.Tx) error {
		return getJSON(tx.Bucket(bucketUsers), id, &u)
	})
	return u, wrap("reading user", err)
}

// UserByEmail returns the user with the normalized address, or ErrNotFound.
func (s *Store) UserByEmail(email string) (accounts.User, error) {
	var u accounts.User
	err := s.db.View(func(tx *bbolt.Tx) error {
		id := tx.Bucket(bucketUserEmails).Get([]byte(email))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bucketUsers), string(id), &u)
	})
	return u, wrap("reading user by email", err)
}

// UpdateUser applies update to user id in one transaction and returns the
// result. update runs inside the transaction: it must be quick, and may not
// change the id or the address.
func (s *Store) UpdateUser(id string, update func(*accounts.User) error) (accounts.User, error) {
	var u accounts.User
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		if err := getJSON(b, id, &u); err != nil {
			return err
		}
		email := u.Email
		if err := update(&u); err != nil {
			return err
		}
		if u.ID != id || u.Email != email {
			return errors.New("a user's id and address do not change")
		}
		return putJSON(b, id, u)
	})
	return u, wrap("updating user "+id, err)
}

// PasswordHash returns the password hash of user id, or ErrNotFound.
func (s *Store) PasswordHash(userID string) (string, error) {
	var hash string
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketPasswords).Get([]byte(userID))
		if raw == nil {
			return ErrNotFound
		}
		hash = string(raw)
		return nil
	})
	return hash, wrap("reading password hash", err)
}

// SetPassword replaces the password hash of user id and, in the same
// transaction, revokes every session of the user.
func (s *Store) SetPassword(userID, passwordHash string) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketUsers).Get([]byte(userID)) == nil {
			return ErrNotFound
		}
		if err := tx.Bucket(bucketPasswords).Put([]byte(userID), []byte(passwordHash)); err != nil {
			return err
		}
		return revokeSessions(tx, userID)
	})
	return wrap("setting password", err)
}

// Customer returns customer id, or ErrNotFound.
func (s *Store) Customer(id string) (accounts.Customer, error) {
	var c accounts.Customer
	err := s.db.View(func(tx *bbolt.Tx) error {
		return getJSON(tx.Bucket(bucketCustomers), id, &c)
	})
	return c, wrap("reading customer", err)
}

// UpdateCustomer applies update to customer id in one transaction and
// returns the result. update runs inside the transaction and may not change
// the id.
func (s *Store) UpdateCustomer(id string, update func(*accounts.Customer) error) (accounts.Customer, error) {
	var c accounts.Customer
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketCustomers)
		if err := getJSON(b, id, &c); err != nil {
			return err
		}
		if err := update(&c); err != nil {
			return err
		}
		if c.ID != id {
			return errors.New("a customer's id does not change")
		}
		return putJSON(b, id, c)
	})
	return c, wrap("updating customer "+id, err)
}

// PutOneTimeToken stores the hash of token. Earlier tokens of the same user
// and purpose are deleted: only the last one emailed works.
func (s *Store) PutOneTimeToken(token string, t accounts.OneTimeToken) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketAuthTokens)
		err := deleteWhere(b, func(v []byte) bool {
			var old accounts.OneTimeToken
			return json.Unmarshal(v, &old) == nil && old.UserID == t.UserID && old.Purpose == t.Purpose
		})
		if err != nil {
			return err
		}
		return putJSON(b, string(hashKey(token)), t)
	})
	return wrap("storing one-time token", err)
}

// OneTimeToken returns the record of token without using it: ErrNotFound
// if it is unknown, used or for another purpose, accounts.ErrExpired if it expired.
func (s *Store) OneTimeToken(token, purpose string, now time.Time) (accounts.OneTimeToken, error) {
	var t accounts.OneTimeToken
	err := s.db.View(func(tx *bbolt.Tx) (err error) {
		t, err = oneTimeToken(tx, token, purpose, now)
		return err
	})
	return t, wrap("reading one-time token", err)
}

// UseOneTimeToken returns the record of token like accounts.OneTimeToken and
// deletes it in the same transaction, so it is good once. A token that
// fails stays until the next one of its user and purpose replaces it.
func (s *Store) UseOneTimeToken(token, purpose string, now time.Time) (accounts.OneTimeToken, error) {
	var t accounts.OneTimeToken
	err := s.db.Update(func(tx *bbolt.Tx) (err error) {
		if t, err = oneTimeToken(tx, token, purpose, now); err != nil {
			return err
		}
		return tx.Bucket(bucketAuthTokens).Delete(hashKey(token))
	})
	return t, wrap("using one-time token", err)
}

func oneTimeToken(tx *bbolt.Tx, token, purpose string, now time.Time) (accounts.OneTimeToken, error) {
	var t accounts.OneTimeToken
	if err := getJSON(tx.Bucket(bucketAuthTokens), string(hashKey(token)), &t); err != nil {
		return t, err
	}
	if t.Purpose != purpose {
		return accounts.OneTimeToken{}, ErrNotFound
	}
	if !now.Before(t.ExpiresAt) {
		return accounts.OneTimeToken{}, accounts.ErrExpired
	}
	return t, nil
}

// PutRefreshToken stores the hash of a refresh token in its session's
// family, which it creates if need be.
func (s *Store) PutRefreshToken(token string, rt accounts.RefreshToken) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		family, err := tx.Bucket(bucketRefresh).CreateBucketIfNotExists([]byte(rt.SessionID))
		if err != nil {
			return err
		}
		return putJSON(family, string(hashKey(token)), rt)
	})
	return wrap("storing refresh token", err)
}

// RotateRefreshToken marks token of session sessionID used and stores next
// in the family, valid for ttl from now, in one transaction; it returns
// next's record. A token used before revokes the family and returns
// accounts.ErrTokenReused with its own record; an unknown one returns ErrNotFound,
// an expired one ErrExpired. The family's expired tokens go on the way, so
// it holds at most the tokens of one refresh token lifetime.
func (s *Store) RotateRefreshToken(sessionID, token, next string, now time.Time, ttl time.Duration) (accounts.RefreshToken, error) {
	var rt accounts.RefreshToken
	reused := false
	err := s.db.Update(func(tx *bbolt.Tx) error {
		family, key, err := refreshToken(tx, sessionID, token, &rt)
		if err != nil {
			return err
		}
		if !rt.UsedAt.IsZero() {
			reused = true
			return tx.Bucket(bucketRefresh).DeleteBucket([]byte(sessionID))
		}
		if !now.Before(rt.ExpiresAt) {
			return accounts.ErrExpired
		}
		err = deleteWhere(family, func(v []byte) bool {
			var old accounts.RefreshToken
			return json.Unmarshal(v, &old) == nil && !now.Before(old.ExpiresAt)
		})
		if err != nil {
			return err
		}
		rt.UsedAt = now
		if err := putJSON(family, key, rt); err != nil {
			return err
		}
		rt = accounts.RefreshToken{SessionID: rt.SessionID, UserID: rt.UserID, ExpiresAt: now.Add(ttl)}
		return putJSON(family, string(hashKey(next)), rt)
	})
	if err == nil && reused {
		err = accounts.ErrTokenReused // reported after the commit, which keeps the revocation
	}
	return rt, wrap("rotating refresh token", err)
}

// RevokeRefreshFamily deletes session sessionID with every token of its
// family, if token is one of them, used or not, and allow answers nil for
// token's record; it returns that record. An unknown token gets
// ErrNotFound; allow's error, wrapped, leaves the session as it was.
func (s *Store) RevokeRefreshFamily(sessionID, token string, allow func(accounts.RefreshToken) error) (accounts.RefreshToken, error) {
	var rt accounts.RefreshToken
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if _, _, err := refreshToken(tx, sessionID, token, &rt); err != nil {
			return err
		}
		if err := allow(rt); err != nil {
			return err
		}
		return tx.Bucket(bucketRefresh).DeleteBucket([]byte(sessionID))
	})
	return rt, wrap("revoking refresh tokens", err)
}

// refreshToken reads token of session sessionID into rt and returns the
// family's bucket and the token's key.
func refreshToken(tx *bbolt.Tx, sessionID, token string, rt *accounts.RefreshToken) (*bbolt.Bucket, string, error) {
	family := tx.Bucket(bucketRefresh).Bucket([]byte(sessionID))
	if family == nil {
		return nil, "", ErrNotFound
	}
	key := string(hashKey(token))
	return family, key, getJSON(family, key, rt)
}

// revokeSessions deletes every session of user id.
func revokeSessions(tx *bbolt.Tx, userID string) error {
	_, err := deleteSessions(tx, func(family *bbolt.Bucket) bool {
		var rt accounts.RefreshToken // every token of a family has the same user
		_, v := family.Cursor().First()
		return v != nil && json.Unmarshal(v, &rt) == nil && rt.UserID == userID
	})
	return err
}

// PruneSessions deletes the sessions whose every refresh token expired
// before now, and returns how many went.
func (s *Store) PruneSessions(now time.Time) (int, error) {
	var n int
	err := s.db.Update(func(tx *bbolt.Tx) (err error) {
		n, err = deleteSessions(tx, func(family *bbolt.Bucket) bool {
			live := false
			_ = family.ForEach(func(_, v []byte) error {
				var rt accounts.RefreshToken
				live = live || json.Unmarshal(v, &rt) == nil && now.Before(rt.ExpiresAt)
				return nil
			})
			return !live
		})
		return err
	})
	return n, wrap("pruning sessions", err)
}

// deleteSessions deletes the sessions whose family match picks.
func deleteSessions(tx *bbolt.Tx, match func(family *bbolt.Bucket) bool) (int, error) {
	sessions := tx.Bucket(bucketRefresh)
	var doomed [][]byte
	err := sessions.ForEachBucket(func(sessionID []byte) error {
		if match(sessions.Bucket(sessionID)) {
			doomed = append(doomed, bytes.Clone(sessionID))
		}
		return nil
	})
	for _, sessionID := range doomed {
		if err := sessions.DeleteBucket(sessionID); err != nil {
			return 0, err
		}
	}
	return len(doomed), err
}

// SigningKeys returns the signing keys, oldest first.
func (s *Store) SigningKeys() ([]accounts.SigningKey, error) {
	var keys []accounts.SigningKey
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketSigningKeys).ForEach(func(k, v []byte) error {
			var key accounts.SigningKey
			if err := json.Unmarshal(v, &key); err != nil {
				return fmt.Errorf("key %s: %w", k, err)
			}
			keys = append(keys, key)
			return nil
		})
	})
	slices.SortFunc(keys, func(a, b accounts.SigningKey) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return keys, wrap("reading signing keys", err)
}

// ReplaceSigningKeys makes keys the whole key set, in one transaction.
func (s *Store) ReplaceSigningKeys(keys []accounts.SigningKey) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSigningKeys)
		err := deleteWhere(b, func(v []byte) bool {
			var old accounts.SigningKey
			return json.Unmarshal(v, &old) != nil || !slices.ContainsFunc(keys, func(k accounts.SigningKey) bool { return k.ID == old.ID })
		})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := putJSON(b, k.ID, k); err != nil {
				return err
			}
		}
		return nil
	})
	return wrap("writing signing keys", err)
}

// AppendAudit appends rec to the audit log, under a key that orders the
// log by time.
func (s *Store) AppendAudit(rec audit.Record) error {
	err := s.db.Update(func(tx *bbolt.Tx) error { return appendAudit(tx, rec) })
	return wrap("appending audit record", err)
}

// appendAudit appends rec to the audit log within tx.
func appendAudit(tx *bbolt.Tx, rec audit.Record) error {
	b := tx.Bucket(bucketAuthAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	key := binary.BigEndian.AppendUint64(nil, uint64(rec.Time.UnixNano()))
	return putJSON(b, string(binary.BigEndian.AppendUint64(key, seq)), rec)
}

// AuditLog returns the last limit audit records, oldest first.
func (s *Store) AuditLog(limit int) ([]audit.Record, error) {
	var out []audit.Record
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketAuthAudit).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var rec audit.Record
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	slices.Reverse(out)
	return out, wrap("reading audit log", err)
}

// ListAPITokens returns every API token, oldest first.
func (s *Store) ListAPITokens() ([]accounts.APITokenInfo, error) {
	var out []accounts.APITokenInfo
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketAPITokens).ForEach(func(k, v []byte) error {
			info := accounts.APITokenInfo{ID: string(k[:accounts.APITokenIDLen])}
			if err := json.Unmarshal(v, &info.APIToken); err != nil {
				return fmt.Errorf("API token %s: %w", info.ID, err)
			}
			out = append(out, info)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b accounts.APITokenInfo) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, wrap("listing API tokens", err)
}

// RevokeAPIToken deletes the API token listed as id, or returns ErrNotFound.
func (s *Store) RevokeAPIToken(id string) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if len(id) != accounts.APITokenIDLen {
			return ErrNotFound
		}
		c := tx.Bucket(bucketAPITokens).Cursor()
		k, _ := c.Seek([]byte(id))
		if k == nil || !bytes.HasPrefix(k, []byte(id)) {
			return ErrNotFound
		}
		return c.Delete()
	})
	return wrap("revoking API token", err)
}
