// Package nonces remembers, across agent restarts, every command nonce the
// agent accepted and what became of it: a replayed request is refused, and
// the control plane can ask after an outcome instead of sending a command
// twice. It also counts, by name, the commands that ran to an outcome, for
// as long as the store lives.
package nonces

// The store is a bbolt file with two buckets:
//
//	nonces/
//	    <nonce> -> <record>   JSON: {"expires": RFC 3339, "reply": CommandReply or absent}
//	counts/
//	    <command name> -> <n>   decimal: how many outcomes were recorded for it
//
// A record without a reply is a command still running. An entry is kept
// until protocol.ResultRetention after the request's expiry, which is far
// longer than the protocol.MaxClockSkew a replay must be refused for. Only
// requests whose signature verified are recorded, so the bucket grows with
// what the control plane sends, never with what an attacker does. A count
// rises in the transaction that records an outcome, once for each time a
// command ran, and is never pruned.

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"go.etcd.io/bbolt"

	"github.com/stackpro/stackpro/shared/protocol"
)

var (
	noncesBucket = []byte("nonces")
	countsBucket = []byte("counts")
)

// MaxResultBytes bounds the result kept with an outcome; a larger one is
// replaced by {"truncated":true,"bytes":N}.
const MaxResultBytes = 128 << 10

// Interrupted is the error of a command the agent stopped before it
// finished; Open records it as the command's outcome.
const Interrupted = "interrupted: the agent stopped before the command finished"

type record struct {
	Expires time.Time              `json:"expires"`
	Reply   *protocol.CommandReply `json:"reply,omitempty"`
}

// Store is the nonce store. It is safe for concurrent use.
type Store struct {
	db *bbolt.DB
}

// Open opens or creates the store at path; it fails after 5 s if another
// process holds it. A command that was running when the agent last stopped
// gets the outcome Interrupted.
func Open(path string) (*Store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("nonces: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(countsBucket); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(noncesBucket)
		if err != nil {
			return err
		}
		// Collect first: a bucket must not change under its cursor.
		running := map[string]record{}
		err = b.ForEach(func(k, v []byte) error {
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("nonce %q: %w", k, err)
			}
			if rec.Reply == nil {
				rec.Reply = &protocol.CommandReply{V: protocol.Version, Nonce: string(k), Error: Interrupted}
				running[string(k)] = rec
			}
			return nil
		})
		if err != nil {
			return err
		}
		for nonce, rec := range running {
			if err := put(b, nonce, rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("nonces: initializing %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file. The Store must not be used afterwards.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("nonces: closing: %w", err)
	}
	return nil
}

// Claim records nonce, valid until expires, in one transaction. It reports
// false when the nonce was recorded before: the request is a replay.
func (s *Store) Claim(nonce string, expires time.Time) (fresh bool, err error) {
	if nonce == "" {
		return false, errors.New("nonces: claiming an empty nonce")
	}
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(noncesBucket)
		if b.Get([]byte(nonce)) != nil {
			return nil
		}
		fresh = true
		return put(b, nonce, record{Expires: expires})
	})
	if err != nil {
		return false, fmt.Errorf("nonces: claiming: %w", err)
	}
	return fresh, nil
}

// Finish records the outcome of a claimed nonce, the request of a command
// called name, and counts it in one transaction.
func (s *Store) Finish(nonce, name string, reply protocol.CommandReply) error {
	if len(reply.Result) > MaxResultBytes {
		reply.Result = fmt.Appendf(nil, `{"truncated":true,"bytes":%d}`, len(reply.Result))
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(noncesBucket)
		rec, ok, err := get(b, nonce)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("nonce %q was never claimed", nonce)
		}
		if err := count(tx.Bucket(countsBucket), name); err != nil {
			return err
		}
		rec.Reply = &reply
		return put(b, nonce, rec)
	})
	if err != nil {
		return fmt.Errorf("nonces: finishing: %w", err)
	}
	return nil
}

// Result says what became of nonce. Known without a Reply means the
// command is still running.
func (s *Store) Result(nonce string) (protocol.ResultReply, error) {
	var res protocol.ResultReply
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, ok, err := get(tx.Bucket(noncesBucket), nonce)
		res = protocol.ResultReply{Known: ok, Reply: rec.Reply}
		return err
	})
	if err != nil {
		return protocol.ResultReply{}, fmt.Errorf("nonces: reading: %w", err)
	}
	return res, nil
}

// Counts returns how many outcomes were recorded for each command name
// since the store was made.
func (s *Store) Counts() (map[string]uint64, error) {
	counts := map[string]uint64{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(countsBucket).ForEach(func(k, v []byte) error {
			n, err := parseCount(k, v)
			counts[string(k)] = n
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("nonces: reading counts: %w", err)
	}
	return counts, nil
}

// Prune forgets the nonces whose request expired more than
// protocol.ResultRetention before now, and returns how many.
func (s *Store) Prune(now time.Time) (int, error) {
	var n int
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(noncesBucket)
		// Collect first: a bucket must not change under its cursor.
		var old [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("nonce %q: %w", k, err)
			}
			if now.Sub(rec.Expires) > protocol.ResultRetention {
				old = append(old, slices.Clone(k)) // k lives only as long as the cursor
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("nonces: pruning: %w", err)
	}
	return n, nil
}

// count adds one to name's count in b.
func count(b *bbolt.Bucket, name string) error {
	n, err := parseCount([]byte(name), b.Get([]byte(name)))
	if err != nil {
		return err
	}
	return b.Put([]byte(name), strconv.AppendUint(nil, n+1, 10))
}

// parseCount reads the count v of name; none is 0.
func parseCount(name, v []byte) (uint64, error) {
	if v == nil {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("count of %q: %w", name, err)
	}
	return n, nil
}

func get(b *bbolt.Bucket, nonce string) (rec record, ok bool, err error) {
	v := b.Get([]byte(nonce))
	if v == nil {
		return rec, false, nil
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, false, fmt.Errorf("nonce %q: %w", nonce, err)
	}
	return rec, true, nil
}

func put(b *bbolt.Bucket, nonce string, rec record) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put([]byte(nonce), v)
}
