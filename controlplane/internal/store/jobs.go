package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/stackpro/stackpro/controlplane/fleet"
	"github.com/stackpro/stackpro/controlplane/provision"
)

// SaveJob writes a job and, in the same transaction, the instances the
// step changed (whole records: jobs own an instance's lifecycle fields)
// and the job's key, if it has one.
func (s *Store) SaveJob(job provision.Job, insts ...fleet.Instance) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if err := putJSON(tx.Bucket(bucketJobs), job.ID, job); err != nil {
			return err
		}
		if job.Key != "" {
			if err := tx.Bucket(bucketJobKeys).Put([]byte(job.Key), []byte(job.ID)); err != nil {
				return err
			}
		}
		for _, inst := range insts {
			inst.Status = ""
			if err := putJSON(tx.Bucket(bucketInstances), inst.ID, inst); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: saving job %s: %w", job.ID, err)
	}
	return nil
}

// Job returns job id, or ErrNotFound.
func (s *Store) Job(id string) (provision.Job, error) {
	var job provision.Job
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketJobs).Get([]byte(id))
		if raw == nil {
			return ErrNotFound
		}
		return json.Unmarshal(raw, &job)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("store: reading job %s: %w", id, err)
	}
	return job, err
}

// JobByKey returns the job saved with key, or ErrNotFound.
func (s *Store) JobByKey(key string) (provision.Job, error) {
	var id []byte
	_ = s.db.View(func(tx *bbolt.Tx) error {
		id = slices.Clone(tx.Bucket(bucketJobKeys).Get([]byte(key)))
		return nil
	})
	if id == nil {
		return provision.Job{}, ErrNotFound
	}
	return s.Job(string(id))
}

// Jobs returns every job, oldest first.
func (s *Store) Jobs() ([]provision.Job, error) {
	var jobs []provision.Job
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			var job provision.Job
			if err := json.Unmarshal(v, &job); err != nil {
				return fmt.Errorf("job %s: %w", k, err)
			}
			jobs = append(jobs, job)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading jobs: %w", err)
	}
	slices.SortFunc(jobs, func(a, b provision.Job) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return jobs, nil
}

// ReserveSubdomain gives name to instance id; reserving it again for the
// same instance changes nothing.
func (s *Store) ReserveSubdomain(name, instanceID string) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSubdomains)
		if owner := b.Get([]byte(name)); owner != nil && string(owner) != instanceID {
			return fmt.Errorf("%w: %s", provision.ErrSubdomainTaken, name)
		}
		return b.Put([]byte(name), []byte(instanceID))
	})
}

// ReleaseSubdomain frees name if instance id holds it.
func (s *Store) ReleaseSubdomain(name, instanceID string) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSubdomains)
		if owner := b.Get([]byte(name)); owner != nil && string(owner) == instanceID {
			return b.Delete([]byte(name))
		}
		return nil
	})
}

// SubdomainOwner returns the instance holding name, or "".
func (s *Store) SubdomainOwner(name string) (string, error) {
	var owner string
	err := s.db.View(func(tx *bbolt.Tx) error {
		owner = string(tx.Bucket(bucketSubdomains).Get([]byte(name)))
		return nil
	})
	return owner, err
}

// PutDNSRecord creates or replaces a record.
func (s *Store) PutDNSRecord(rec provision.DNSRecord) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return putJSON(tx.Bucket(bucketDNS), rec.Name, rec) })
}

// DeleteDNSRecord removes the record of name, if any.
func (s *Store) DeleteDNSRecord(name string) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketDNS).Delete([]byte(name)) })
}

// DNSRecords returns every record of the local zone.
func (s *Store) DNSRecords() ([]provision.DNSRecord, error) {
	var out []provision.DNSRecord
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketDNS).ForEach(func(_, v []byte) error {
			var rec provision.DNSRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}
