// Package outbox spools the agent's events and metrics on disk while it is
// cut off from the control plane, so they can be flushed in order later.
package outbox

// The outbox is a bbolt file with three buckets:
//
//	entries/                 every pending entry, oldest first
//	    <seq> -> <entry>     seq: 8-byte big-endian, from entries' NextSequence
//	metrics/                 index of the entries that are metrics
//	    <seq> -> ""          its first key is the oldest metric: dropped first
//	meta/
//	    dropped_metrics -> <uint64>   8-byte big-endian, never decreases
//
// An <entry> is encoded as
//
//	format  byte     entryFormat (1)
//	kind    byte     KindEvent or KindMetrics
//	subject uvarint length, then the bytes
//	msgID   uvarint length, then the bytes
//	data    the remaining bytes
//
// The seq is the key, so it is not repeated in the value.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

var (
	entriesBucket = []byte("entries")
	metricsBucket = []byte("metrics")
	metaBucket    = []byte("meta")

	droppedMetricsKey = []byte("dropped_metrics")
)

const entryFormat = 1

// Kind says what an entry carries, and so whether it may be dropped.
type Kind uint8

const (
	KindEvent   Kind = 1 // never dropped
	KindMetrics Kind = 2 // the oldest are dropped when the outbox is full
)

// Entry is one message waiting to be sent.
type Entry struct {
	Seq     uint64
	Kind    Kind
	Subject string
	MsgID   string
	Data    []byte
}

// Options tune an Outbox. The zero value is usable.
type Options struct {
	// MaxEntries bounds the outbox; past it the oldest metrics are dropped.
	// Events are still accepted up to 4 times this bound. Default 10000.
	MaxEntries int
	// Timeout is how long Open waits for the file lock. Default 5s.
	Timeout time.Duration
}

// ErrFull is returned by Put when an event cannot be stored: the outbox
// holds 4*MaxEntries entries and none of them is a metric.
var ErrFull = errors.New("outbox: full")

// Outbox is a bounded, ordered, persistent queue of entries. It is safe for
// concurrent use, typically by one producer and one flusher.
type Outbox struct {
	db     *bbolt.DB
	max    int
	notify chan struct{}

	writeMu sync.Mutex // one write tx at a time, so the counts below match disk

	countMu sync.Mutex // guards pending and dropped; never held during I/O
	pending int
	dropped uint64
}

// Open opens or creates the outbox file at path. It fails after
// opts.Timeout if another Outbox, in this process or another, holds it.
func Open(path string, opts Options) (*Outbox, error) {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 10000
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.Timeout})
	if err != nil {
		return nil, fmt.Errorf("outbox: opening %s: %w", path, err)
	}
	o := &Outbox{db: db, max: opts.MaxEntries, notify: make(chan struct{}, 1)}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{entriesBucket, metricsBucket, metaBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		o.pending = tx.Bucket(entriesBucket).Stats().KeyN
		if v := tx.Bucket(metaBucket).Get(droppedMetricsKey); len(v) == 8 {
			o.dropped = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("outbox: initializing %s: %w", path, err)
	}
	return o, nil
}

// Close closes the file. The Outbox must not be used afterwards.
func (o *Outbox) Close() error {
	if err := o.db.Close(); err != nil {
		return fmt.Errorf("outbox: closing: %w", err)
	}
	return nil
}

// Put appends an entry in one transaction. When the outbox is full it first
// drops the oldest metrics; if there are none, a new metric is dropped
// instead of stored (and counted), while an event is stored unless the
// outbox already holds 4*MaxEntries entries, in which case Put returns ErrFull.
//
// A metric a flusher has peeked but not yet removed can still be dropped. It
// is then counted as dropped and may be delivered too: the count errs high,
// never low.
func (o *Outbox) Put(kind Kind, subject, msgID string, data []byte) error {
	if kind != KindEvent && kind != KindMetrics {
		return fmt.Errorf("outbox: put: unknown kind %d", kind)
	}
	o.writeMu.Lock()
	defer o.writeMu.Unlock()

	pending, dropped := o.pending, o.dropped
	err := o.db.Update(func(tx *bbolt.Tx) error {
		entries, metrics := tx.Bucket(entriesBucket), tx.Bucket(metricsBucket)
		// A loop, not an if: MaxEntries may have shrunk since the last Open.
		for pending >= o.max {
			k, _ := metrics.Cursor().First()
			if k == nil {
				break
			}
			if err := entries.Delete(k); err != nil {
				return err
			}
			if err := metrics.Delete(k); err != nil {
				return err
			}
			pending--
			dropped++
		}
		switch {
		case pending >= o.max && kind == KindMetrics:
			dropped++ // only events left: the new metric is the oldest one worth losing
			return putDropped(tx, dropped)
		case pending >= 4*o.max:
			return fmt.Errorf("%w: %d events pending, hard cap %d", ErrFull, pending, 4*o.max)
		}
		seq, err := entries.NextSequence()
		if err != nil {
			return err
		}
		key := seqKey(seq)
		if err := entries.Put(key, encode(kind, subject, msgID, data)); err != nil {
			return err
		}
		if kind == KindMetrics {
			if err := metrics.Put(key, nil); err != nil {
				return err
			}
		}
		pending++
		if dropped != o.dropped {
			return putDropped(tx, dropped)
		}
		return nil
	})
	if errors.Is(err, ErrFull) {
		return err
	}
	if err != nil {
		return fmt.Errorf("outbox: put: %w", err)
	}
	o.setCounts(pending, dropped)
	select {
	case o.notify <- struct{}{}:
	default:
	}
	return nil
}

// Peek returns up to max pending entries, oldest first, without removing them.
func (o *Outbox) Peek(max int) ([]Entry, error) {
	var out []Entry
	err := o.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(entriesBucket).Cursor()
		for k, v := c.First(); k != nil && len(out) < max; k, v = c.Next() {
			e, err := decode(v)
			if err != nil {
				return fmt.Errorf("entry %x: %w", k, err)
			}
			e.Seq = binary.BigEndian.Uint64(k)
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: peek: %w", err)
	}
	return out, nil
}

// Remove deletes a delivered entry. Removing a missing seq is not an error.
func (o *Outbox) Remove(seq uint64) error {
	o.writeMu.Lock()
	defer o.writeMu.Unlock()

	pending := o.pending
	err := o.db.Update(func(tx *bbolt.Tx) error {
		key, entries := seqKey(seq), tx.Bucket(entriesBucket)
		if entries.Get(key) == nil {
			return nil
		}
		if err := entries.Delete(key); err != nil {
			return err
		}
		pending--
		return tx.Bucket(metricsBucket).Delete(key) // no-op for an event
	})
	if err != nil {
		return fmt.Errorf("outbox: remove %d: %w", seq, err)
	}
	o.setCounts(pending, o.dropped)
	return nil
}

// Stats reports the number of pending entries and of metrics dropped since
// the file was created. It does no I/O.
func (o *Outbox) Stats() (pending int, droppedMetrics uint64) {
	o.countMu.Lock()
	defer o.countMu.Unlock()
	return o.pending, o.dropped
}

// Notify returns a channel that receives after every successful Put. It is
// buffered by one and never blocks Put, so one receive may stand for many Puts.
func (o *Outbox) Notify() <-chan struct{} { return o.notify }

func (o *Outbox) setCounts(pending int, dropped uint64) {
	o.countMu.Lock()
	o.pending, o.dropped = pending, dropped
	o.countMu.Unlock()
}

func putDropped(tx *bbolt.Tx, n uint64) error {
	return tx.Bucket(metaBucket).Put(droppedMetricsKey, binary.BigEndian.AppendUint64(nil, n))
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func encode(kind Kind, subject, msgID string, data []byte) []byte {
	b := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(subject)+len(msgID)+len(data))
	b = append(b, entryFormat, byte(kind))
	b = binary.AppendUvarint(b, uint64(len(subject)))
	b = append(b, subject...)
	b = binary.AppendUvarint(b, uint64(len(msgID)))
	b = append(b, msgID...)
	return append(b, data...)
}

// decode copies everything out of v, which bbolt owns only for the tx.
func decode(v []byte) (Entry, error) {
	if len(v) < 2 || v[0] != entryFormat {
		return Entry{}, errors.New("unknown entry format")
	}
	e := Entry{Kind: Kind(v[1])}
	if e.Kind != KindEvent && e.Kind != KindMetrics {
		return Entry{}, fmt.Errorf("unknown kind %d", e.Kind)
	}
	rest := v[2:]
	var ok bool
	if e.Subject, rest, ok = readString(rest); !ok {
		return Entry{}, errors.New("truncated subject")
	}
	if e.MsgID, rest, ok = readString(rest); !ok {
		return Entry{}, errors.New("truncated msg id")
	}
	e.Data = append([]byte(nil), rest...)
	return e, nil
}

func readString(b []byte) (s string, rest []byte, ok bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}
