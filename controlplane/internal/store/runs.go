package store

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/stackpro/stackpro/controlplane/audit"
	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/rollout"
)

// CommandKey returns the key commands to agents are signed with, making
// it on first use. It never changes: every enrolled agent holds its
// public half.
func (s *Store) CommandKey() (ed25519.PrivateKey, error) {
	var key ed25519.PrivateKey
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketCommandKey)
		if raw := b.Get([]byte("ed25519")); raw != nil {
			if len(raw) != ed25519.PrivateKeySize {
				return fmt.Errorf("stored key is %d bytes", len(raw))
			}
			key = bytes.Clone(raw)
			return nil
		}
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		key = priv
		return b.Put([]byte("ed25519"), priv)
	})
	return key, wrap("command key", err)
}

// CreateRun writes a new run and its targets, with its audit record, in
// one transaction.
func (s *Store) CreateRun(run rollout.Run, targets []rollout.Target, audit audit.Record) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketRuns).Get([]byte(run.ID)) != nil {
			return fmt.Errorf("run %s exists", run.ID)
		}
		if err := putJSON(tx.Bucket(bucketRuns), run.ID, run); err != nil {
			return err
		}
		b, err := tx.Bucket(bucketRunTargets).CreateBucket([]byte(run.ID))
		if err != nil {
			return err
		}
		for _, t := range targets {
			if err := putJSON(b, t.Instance, t); err != nil {
				return err
			}
		}
		return appendAudit(tx, audit)
	})
	return wrap("creating run "+run.ID, err)
}

// UpdateRun writes run, the targets that changed and their audit records
// in one transaction.
func (s *Store) UpdateRun(run rollout.Run, targets []rollout.Target, audit []audit.Record) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketRuns).Get([]byte(run.ID)) == nil {
			return fmt.Errorf("run %s: %w", run.ID, ErrNotFound)
		}
		if err := putJSON(tx.Bucket(bucketRuns), run.ID, run); err != nil {
			return err
		}
		b := tx.Bucket(bucketRunTargets).Bucket([]byte(run.ID))
		for _, t := range targets {
			if err := putJSON(b, t.Instance, t); err != nil {
				return err
			}
		}
		for _, rec := range audit {
			if err := appendAudit(tx, rec); err != nil {
				return err
			}
		}
		return nil
	})
	return wrap("updating run "+run.ID, err)
}

// Run returns one run, or ErrNotFound.
func (s *Store) Run(id string) (rollout.Run, error) {
	var run rollout.Run
	err := s.db.View(func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketRuns), id, &run) })
	return run, wrap("reading run "+id, err)
}

// Runs returns every run, newest first.
func (s *Store) Runs() ([]rollout.Run, error) {
	var out []rollout.Run
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketRuns).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var run rollout.Run
			if err := json.Unmarshal(v, &run); err != nil {
				return fmt.Errorf("run %s: %w", k, err)
			}
			out = append(out, run)
		}
		return nil
	})
	return out, wrap("reading runs", err)
}

// RunTargets returns a run's targets ordered by instance id, or ErrNotFound.
func (s *Store) RunTargets(id string) ([]rollout.Target, error) {
	var out []rollout.Target
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketRunTargets).Bucket([]byte(id))
		if b == nil {
			return ErrNotFound
		}
		return b.ForEach(func(k, v []byte) error {
			var t rollout.Target
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("run %s target %s: %w", id, k, err)
			}
			out = append(out, t)
			return nil
		})
	})
	return out, wrap("reading targets of run "+id, err)
}

// SetTags replaces instance id's tags, or returns ErrNotFound.
func (s *Store) SetTags(id string, tags map[string]string) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketInstances)
		var inst fleet.Instance
		if err := getJSON(b, id, &inst); err != nil {
			return err
		}
		inst.Tags = tags
		return putJSON(b, id, inst)
	})
	return wrap("tagging "+id, err)
}
