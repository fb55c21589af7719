package mail

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	netmail "net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
)

// FileOutbox is the embedded default Sender: it writes each message to its
// own file in a directory instead of sending it. The files are complete
// RFC 5322 messages (open one in a mail client, or read it with
// net/mail.ReadMessage), named so that they sort by the time they were sent:
//
//	20261124T235253.123456789Z-k3v7qz2m.eml
type FileOutbox struct {
	dir  string
	from *netmail.Address

	mu   sync.Mutex
	last time.Time // the newest file's time, so names sort in send order
}

var _ Sender = (*FileOutbox)(nil)

// fileTime is the sortable UTC time a file name starts with.
const fileTime = "20060102T150405.000000000Z"

// NewFileOutbox returns a FileOutbox that writes to dir, creating it (0700)
// if need be, with from — "no-reply@example.com" or
// "StackPro <no-reply@example.com>" — as the sender.
func NewFileOutbox(dir, from string) (*FileOutbox, error) {
	f, err := parseFrom(from)
	if err != nil {
		return nil, fmt.Errorf("mail: outbox: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mail: outbox: %w", err)
	}
	return &FileOutbox{dir: dir, from: f}, nil
}

// Send writes m to a new file, atomically and with mode 0600: the files
// hold verification and reset links.
func (o *FileOutbox) Send(ctx context.Context, m Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mail: outbox: %w", err)
	}
	now := o.next()
	name := now.Format(fileTime) + "-" + strings.ToLower(rand.Text()[:8]) + ".eml"
	path := filepath.Join(o.dir, name)
	if err := renameio.WriteFile(path, render(o.from, m, now), 0o600); err != nil {
		return fmt.Errorf("mail: outbox: writing %s: %w", path, err)
	}
	return nil
}

// next returns the current UTC time, or a nanosecond after the previous
// message's if the clock has not moved on, so that this outbox's files sort
// in the order they were sent.
func (o *FileOutbox) next() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now().UTC().Round(0)
	if !now.After(o.last) {
		now = o.last.Add(time.Nanosecond)
	}
	o.last = now
	return now
}

// Latest returns the newest message sent to the address to (compared
// without regard to case), with its Subject and Text decoded, or
// ErrNoMessage. It is for tests, and for the embedded default's flows
// where a person reads the link from the mail.
func (o *FileOutbox) Latest(to string) (Message, error) {
	entries, err := os.ReadDir(o.dir)
	if err != nil {
		return Message{}, fmt.Errorf("mail: outbox: %w", err)
	}
	// ReadDir sorts by name, and names sort by time: newest last.
	for _, e := range slices.Backward(entries) {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".eml") {
			continue // renameio's temporary files start with a dot
		}
		m, err := o.read(filepath.Join(o.dir, name), to)
		if errors.Is(err, ErrNoMessage) {
			continue
		}
		return m, err
	}
	return Message{}, fmt.Errorf("%w to %s", ErrNoMessage, to)
}

func (o *FileOutbox) read(path, to string) (Message, error) {
	f, err := os.Open(path)
	if err != nil {
		return Message{}, fmt.Errorf("mail: outbox: %w", err)
	}
	defer f.Close()
	m, err := parse(f, to)
	if err != nil && !errors.Is(err, ErrNoMessage) {
		return Message{}, fmt.Errorf("mail: outbox: reading %s: %w", path, err)
	}
	return m, err
}
