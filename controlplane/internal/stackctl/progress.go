package stackctl

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/stackpro/stackpro/controlplane/rollout"
)

// progress shows a followed run: one redrawn line on a terminal, else a
// plain line when something changed, at most one a second.
type progress struct {
	w   io.Writer
	tty bool
	now func() time.Time
	// last is the plain line last written (without the time), and when.
	last   string
	lastAt time.Time
	drawn  bool
}

// plainEvery is the least time between two plain progress lines.
const plainEvery = time.Second

func newProgress(w io.Writer, now func() time.Time) *progress {
	_, tty := terminal(w)
	return &progress{w: w, tty: tty, now: now}
}

func (p *progress) show(run rollout.Run) {
	now := p.now()
	counts := countsLine(run)
	took := elapsed(run, now).Truncate(time.Second)
	if p.tty {
		fmt.Fprintf(p.w, "\r%s %d/%d  %s  %s\x1b[K", bar(finished(run), run.Total, barWidth), finished(run), run.Total, counts, took)
		p.drawn = true
		return
	}
	line := fmt.Sprintf("run %s: %s, %d/%d done (%s)", run.ID, run.State, finished(run), run.Total, counts)
	if line == p.last || (!p.lastAt.IsZero() && now.Sub(p.lastAt) < plainEvery) {
		return
	}
	fmt.Fprintf(p.w, "%s, %s\n", line, took)
	p.last, p.lastAt = line, now
}

// end leaves the terminal's line to what comes next.
func (p *progress) end() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// barWidth is the progress bar's width inside its brackets.
const barWidth = 30

// bar draws n of total as [=====>    ].
func bar(n, total, width int) string {
	filled := width
	if total > 0 {
		filled = n * width / total
	}
	head := ""
	if filled < width {
		head = ">"
	}
	return "[" + strings.Repeat("=", filled) + head + strings.Repeat(" ", width-filled-len(head)) + "]"
}

// finished is how many targets of run are final.
func finished(run rollout.Run) int {
	n := 0
	for st, c := range run.Counts {
		if st.Final() {
			n += c
		}
	}
	return n
}

// countsLine is run's counts by state, in state order: "succeeded 3,
// running 2".
func countsLine(run rollout.Run) string {
	var parts []string
	for _, st := range rollout.TargetStates {
		if n := run.Counts[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", st, n))
		}
	}
	if len(parts) == 0 {
		return "no targets yet"
	}
	return strings.Join(parts, ", ")
}
