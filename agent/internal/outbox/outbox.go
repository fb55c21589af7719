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
//	    dropped_events  -> <uint64>   likewise: events refused at the hard cap
//	    reported_events -> <uint64>   how many of those a report covers
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
	droppedEventsKey  = []byte("dropped_events")
	reportedEventsKey = []byte("reported_events")
)

const entryFormat = 1

// Kind says what an entry carries, and so whether it may be dropped.
type Kind uint8

const (
	KindEvent   Kind = 1 // dropped only at the hard cap, and counted
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
	// Events are still accepted up to 4 times this bound (the hard cap),
	// past which they are refused and counted. Default 10000.
	MaxEntries int
	// Timeout is how long Open waits for the file lock. Default 5s.
	Timeout time.Duration
}

// ErrFull is returned by Put when an event cannot be stored: the outbox
// holds 4*MaxEntries entries and none of them is a metric. The event is
// counted in Stats' DroppedEvents, for ReportDroppedEvents to report.
var ErrFull = errors.New("outbox: full")

// Stats are an outbox's counts.
type Stats struct {
	Pending int
	// DroppedMetrics and DroppedEvents count what Put gave up since the
	// file was made; they never decrease.
	DroppedMetrics, DroppedEvents uint64
	// UnreportedEvents is how many of DroppedEvents no report covers yet.
	UnreportedEvents uint64
}

// Outbox is a bounded, ordered, persistent queue of entries. It is safe for
// concurrent use, typically by one producer and one flusher.
type Outbox struct {
	db     *bbolt.DB
	max    int
	notify chan struct{}

	writeMu sync.Mutex // one write tx at a time, so the counts below match disk

	countMu sync.Mutex // guards stats; never held during I/O
	stats   Stats
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
		meta := tx.Bucket(metaBucket)
		o.stats = Stats{Pending: tx.Bucket(entriesBucket).Stats().KeyN,
			DroppedMetrics: getCount(meta, droppedMetricsKey), DroppedEvents: getCount(meta, droppedEventsKey)}
		o.stats.UnreportedEvents = o.stats.DroppedEvents - getCount(meta, reportedEventsKey)
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
// outbox already holds 4*MaxEntries entries, in which case it is counted
// and Put returns ErrFull.
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

	before := o.counts()
	st, stored := before, false
	err := o.db.Update(func(tx *bbolt.Tx) error {
		entries, metrics := tx.Bucket(entriesBucket), tx.Bucket(metricsBucket)
		// A loop, not an if: MaxEntries may have shrunk since the last Open.
		for st.Pending >= o.max {
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
			st.Pending--
			st.DroppedMetrics++
		}
		switch {
		case st.Pending >= o.max && kind == KindMetrics:
			st.DroppedMetrics++ // only events left: the new metric is the oldest one worth losing
		case st.Pending >= 4*o.max:
			st.DroppedEvents++
			st.UnreportedEvents++
			return putCount(tx, droppedEventsKey, st.DroppedEvents)
		default:
			if err := o.append(tx, kind, subject, msgID, data); err != nil {
				return err
			}
			st.Pending++
			stored = true
		}
		if st.DroppedMetrics != before.DroppedMetrics {
			return putCount(tx, droppedMetricsKey, st.DroppedMetrics)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbox: put: %w", err)
	}
	o.setCounts(st)
	if !stored && kind == KindEvent {
		return fmt.Errorf("%w: %d entries pending, hard cap %d", ErrFull, st.Pending, 4*o.max)
	}
	if stored {
		o.wake()
	}
	return nil
}

// ReportDroppedEvents spools an event about the events dropped at the hard
// cap since the last report, in the transaction that marks them reported:
// report(n) makes its entry. It returns n (0 when there is nothing to
// report), or ErrFull while there is still no room.
func (o *Outbox) ReportDroppedEvents(report func(n uint64) (subject, msgID string, data []byte)) (uint64, error) {
	o.writeMu.Lock()
	defer o.writeMu.Unlock()

	st := o.counts()
	n := st.UnreportedEvents
	if n == 0 {
		return 0, nil
	}
	if st.Pending >= 4*o.max {
		return 0, ErrFull
	}
	subject, msgID, data := report(n)
	err := o.db.Update(func(tx *bbolt.Tx) error {
		if err := o.append(tx, KindEvent, subject, msgID, data); err != nil {
			return err
		}
		return putCount(tx, reportedEventsKey, st.DroppedEvents)
	})
	if err != nil {
		return 0, fmt.Errorf("outbox: reporting dropped events: %w", err)
	}
	st.Pending++
	st.UnreportedEvents = 0
	o.setCounts(st)
	o.wake()
	return n, nil
}

// append stores one entry at the next sequence.
func (o *Outbox) append(tx *bbolt.Tx, kind Kind, subject, msgID string, data []byte) error {
	entries := tx.Bucket(entriesBucket)
	seq, err := entries.NextSequence()
	if err != nil {
		return err
	}
	key := seqKey(seq)
	if err := entries.Put(key, encode(kind, subject, msgID, data)); err != nil {
		return err
	}
	if kind == KindMetrics {
		return tx.Bucket(metricsBucket).Put(key, nil)
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

	st := o.counts()
	err := o.db.Update(func(tx *bbolt.Tx) error {
		key, entries := seqKey(seq), tx.Bucket(entriesBucket)
		if entries.Get(key) == nil {
			return nil
		}
		if err := entries.Delete(key); err != nil {
			return err
		}
		st.Pending--
		return tx.Bucket(metricsBucket).Delete(key) // no-op for an event
	})
	if err != nil {
		return fmt.Errorf("outbox: remove %d: %w", seq, err)
	}
	o.setCounts(st)
	return nil
}

// Stats reports the outbox's counts. It does no I/O.
func (o *Outbox) Stats() Stats { return o.counts() }

// Notify returns a channel that receives after every successful Put. It is
// buffered by one and never blocks Put, so one receive may stand for many Puts.
func (o *Outbox) Notify() <-chan struct{} { return o.notify }

func (o *Outbox) counts() Stats {
	o.countMu.Lock()
	defer o.countMu.Unlock()
	return o.stats
}

func (o *Outbox) setCounts(st Stats) {
	o.countMu.Lock()
	o.stats = st
	o.countMu.Unlock()
}

// wake tells Notify's reader there is something to send.
func (o *Outbox) wake() {
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

func getCount(meta *bbolt.Bucket, key []byte) uint64 {
	if v := meta.Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func putCount(tx *bbolt.Tx, key []byte, n uint64) error {
	return tx.Bucket(metaBucket).Put(key, binary.BigEndian.AppendUint64(nil, n))
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
