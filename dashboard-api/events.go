package dashboardapi

import (
	"bufio"
	"fmt"
	"net/http"
	"time"

	"github.com/stackpro/stackpro/controlplane/fleet"
)

// Feed hands out the fleet's changes: those after lastID ("" for none)
// that keep keeps, and a listener for the next ones. reset reports that
// lastID could not be resumed from.
type Feed interface {
	Subscribe(lastID string, keep func(fleet.Change) bool) (backlog []fleet.Change, l *fleet.Listener, reset bool)
}

// Stream timings: a comment every ping keeps proxies from closing an idle
// stream and finds clients that left; a write that takes longer than
// writeWait ends the stream.
const (
	defaultPing = 15 * time.Second
	writeWait   = 30 * time.Second
)

// events streams the fleet's changes the caller may see as Server-Sent
// Events, resuming after the Last-Event-ID header (or ?last_event_id=).
// A client that falls too far behind is disconnected and resumes where it
// was; a "reset" event tells one that cannot resume to read lists again.
func (a *API) events(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	lastID := r.Header.Get("Last-Event-ID")
	if lastID == "" {
		lastID = r.URL.Query().Get("last_event_id")
	}
	backlog, l, reset := a.o.Feed.Subscribe(lastID, func(c fleet.Change) bool { return sees(p, c.Customer) })
	defer l.Close()

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriter(w)
	send := func(write func()) error {
		_ = rc.SetWriteDeadline(time.Now().Add(writeWait))
		write()
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	err := send(func() {
		fmt.Fprint(bw, "retry: 2000\n\n")
		if reset {
			fmt.Fprint(bw, "event: reset\ndata: {}\n\n")
		}
		for _, c := range backlog {
			writeChange(bw, c)
		}
	})
	ping := time.NewTicker(a.ping)
	defer ping.Stop()
	for err == nil {
		select {
		case <-r.Context().Done():
			return nil
		case c, ok := <-l.C:
			if !ok {
				return nil // fell behind: the client reconnects with its last id
			}
			err = send(func() { writeChange(bw, c) })
		case <-ping.C:
			err = send(func() { fmt.Fprint(bw, ": ping\n\n") })
		}
	}
	a.log.Debug("event stream ended", "err", err)
	return nil // the response has begun: nothing more to answer
}

func writeChange(w *bufio.Writer, c fleet.Change) {
	fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", c.ID, c.Kind, c.Data)
}
