package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/stackpro/stackpro/controlplane/fleet"
)

// Metrics history is kept in two tiers, one bucket per instance in each:
// metrics_raw holds every sample under its time, metrics_hourly one rollup
// per hour under the hour's start (see fleet.MetricsPoint.Fold). Keys are
// unix seconds, 8-byte big-endian, so a cursor walks them in time order.
//
// A point is stored in binary, 69 bytes instead of some 200 in JSON, for a
// fleet writes one every 30 s per instance:
//
//	[0]      format version, 1
//	[1:33]   cpu_percent, cpu_max, rx_bps, tx_bps    float64 bits, big-endian
//	[33:65]  memory_used, memory_total, disk_used, disk_total  uint64, big-endian
//	[65:69]  samples                                 uint32, big-endian
//
// At is the key's time.
const (
	pointV1   = 1
	pointSize = 69
	// metricsFill packs the pages of buckets that grow at their end: the
	// default half-full split would double the file.
	metricsFill = 0.9
	// pruneBatch bounds the deletes of one pruning transaction, so a big
	// prune never holds the write lock for long.
	pruneBatch = 5000
)

func metricsKey(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(t.Unix()))
}

func encodePoint(p fleet.MetricsPoint) []byte {
	b := make([]byte, 1, pointSize)
	b[0] = pointV1
	for _, f := range []float64{p.CPUPercent, p.CPUMax, p.RxBps, p.TxBps} {
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(f))
	}
	for _, u := range []uint64{p.MemoryUsed, p.MemoryTotal, p.DiskUsed, p.DiskTotal} {
		b = binary.BigEndian.AppendUint64(b, u)
	}
	return binary.BigEndian.AppendUint32(b, uint32(min(max(p.Samples, 0), math.MaxUint32)))
}

func decodePoint(k, v []byte) (fleet.MetricsPoint, error) {
	if len(k) != 8 || len(v) != pointSize || v[0] != pointV1 {
		return fleet.MetricsPoint{}, fmt.Errorf("metrics point %x: unknown format", k)
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(v[1+8*i:]) }
	f := func(i int) float64 { return math.Float64frombits(u(i)) }
	return fleet.MetricsPoint{
		At:         time.Unix(int64(binary.BigEndian.Uint64(k)), 0).UTC(),
		CPUPercent: f(0), CPUMax: f(1), RxBps: f(2), TxBps: f(3),
		MemoryUsed: u(4), MemoryTotal: u(5), DiskUsed: u(6), DiskTotal: u(7),
		Samples: int(binary.BigEndian.Uint32(v[65:])),
	}, nil
}

// AppendMetrics writes raw points, and folds each into its hour's rollup,
// in one transaction. A point whose second is already stored for its
// instance is skipped, so appending a batch again changes nothing. Points
// of instances no longer stored are dropped, so a late flush cannot bring
// back the history of a deleted instance.
func (s *Store) AppendMetrics(points []fleet.InstancePoint) error {
	if len(points) == 0 {
		return nil
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		insts, raw, hourly := tx.Bucket(bucketInstances), tx.Bucket(bucketMetricsRaw), tx.Bucket(bucketMetricsHourly)
		for _, ip := range points {
			p := ip.Point
			if p.At.Unix() < 0 {
				return fmt.Errorf("instance %s: point at %v is before 1970", ip.InstanceID, p.At)
			}
			if insts.Get([]byte(ip.InstanceID)) == nil {
				continue
			}
			rb, err := raw.CreateBucketIfNotExists([]byte(ip.InstanceID))
			if err != nil {
				return err
			}
			rb.FillPercent = metricsFill
			key := metricsKey(p.At)
			if rb.Get(key) != nil {
				continue
			}
			if err := rb.Put(key, encodePoint(p)); err != nil {
				return err
			}
			hb, err := hourly.CreateBucketIfNotExists([]byte(ip.InstanceID))
			if err != nil {
				return err
			}
			hb.FillPercent = metricsFill
			hour := p.At.Truncate(time.Hour)
			hkey := metricsKey(hour)
			rollup := fleet.MetricsPoint{At: hour}
			if v := hb.Get(hkey); v != nil {
				if rollup, err = decodePoint(hkey, v); err != nil {
					return fmt.Errorf("instance %s: %w", ip.InstanceID, err)
				}
			}
			rollup.Fold(p)
			if err := hb.Put(hkey, encodePoint(rollup)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: appending metrics: %w", err)
	}
	return nil
}

// MetricsHistory returns the points of instance id at resolution res
// between from and to inclusive, oldest first; none for an instance
// without history. An hourly point is included when its hour overlaps the
// range.
func (s *Store) MetricsHistory(instanceID string, from, to time.Time, res fleet.Resolution) ([]fleet.MetricsPoint, error) {
	var bucket []byte
	switch res {
	case fleet.ResolutionRaw:
		bucket = bucketMetricsRaw
		if from.Nanosecond() != 0 { // keys are whole seconds
			from = from.Truncate(time.Second).Add(time.Second)
		}
	case fleet.ResolutionHourly:
		bucket = bucketMetricsHourly
		from = from.Truncate(time.Hour)
	default:
		return nil, fmt.Errorf("store: metrics history: unknown resolution %q", res)
	}
	if to.Unix() < 0 || to.Before(from) {
		return nil, nil
	}
	if from.Unix() < 0 {
		from = time.Unix(0, 0)
	}
	var out []fleet.MetricsPoint
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucket).Bucket([]byte(instanceID))
		if b == nil {
			return nil
		}
		end := metricsKey(to)
		c := b.Cursor()
		for k, v := c.Seek(metricsKey(from)); k != nil && bytes.Compare(k, end) <= 0; k, v = c.Next() {
			p, err := decodePoint(k, v)
			if err != nil {
				return err
			}
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading metrics of %s: %w", instanceID, err)
	}
	return out, nil
}

// PruneMetrics deletes raw points older than now-raw and hourly rollups
// older than now-hourly, and returns how many it deleted. It works in
// transactions of at most pruneBatch deletes, so writers wait little
// between them. A retention that is not positive keeps its tier whole.
func (s *Store) PruneMetrics(now time.Time, raw, hourly time.Duration) (int, error) {
	total := 0
	for _, tier := range []struct {
		bucket []byte
		keep   time.Duration
	}{{bucketMetricsRaw, raw}, {bucketMetricsHourly, hourly}} {
		if tier.keep <= 0 {
			continue
		}
		before := now.Add(-tier.keep)
		if before.Unix() <= 0 {
			continue
		}
		// A key is the second its point was taken in: delete the keys
		// below the first whole second not before the cutoff.
		cutoff := metricsKey(before.Add(time.Second - 1))
		var resume []byte
		for {
			var n int
			err := s.db.Update(func(tx *bbolt.Tx) error {
				var err error
				n, resume, err = pruneOnce(tx.Bucket(tier.bucket), cutoff, resume)
				return err
			})
			total += n
			if err != nil {
				return total, fmt.Errorf("store: pruning %s metrics: %w", tier.bucket, err)
			}
			if resume == nil {
				break
			}
		}
	}
	return total, nil
}

// pruneOnce deletes up to pruneBatch keys below cutoff from the instance
// buckets of top, starting at instance resume, and drops the buckets it
// empties. It returns the instance to resume at, nil when done.
func pruneOnce(top *bbolt.Bucket, cutoff, resume []byte) (int, []byte, error) {
	var names [][]byte
	err := top.ForEachBucket(func(name []byte) error {
		if bytes.Compare(name, resume) >= 0 {
			names = append(names, bytes.Clone(name))
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	n := 0
	for _, name := range names {
		b := top.Bucket(name)
		var keys [][]byte
		c := b.Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, cutoff) < 0; k, _ = c.Next() {
			if n+len(keys) == pruneBatch {
				break
			}
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return n, nil, err
			}
		}
		n += len(keys)
		if n == pruneBatch {
			return n, name, nil // this one may hold more
		}
		if k, _ := b.Cursor().First(); k == nil {
			if err := top.DeleteBucket(name); err != nil {
				return n, nil, err
			}
		}
	}
	return n, nil, nil
}

// deleteMetrics deletes every metrics point of instance id.
func deleteMetrics(tx *bbolt.Tx, id string) error {
	for _, bucket := range [][]byte{bucketMetricsRaw, bucketMetricsHourly} {
		if err := tx.Bucket(bucket).DeleteBucket([]byte(id)); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
	}
	return nil
}
