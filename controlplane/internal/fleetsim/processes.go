package fleetsim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Processes is a stackpro-sim fleet run as a process of its own and driven
// from Go, for tests and benchmarks of fleets larger than one process
// holds: it reads the aggregated Stats lines and writes control lines.
type Processes struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	err   error // set before done closes

	mu   sync.Mutex
	last Stats
}

// stopWait is how long a stopping fleet may take before it is killed.
const stopWait = 30 * time.Second

// StartProcesses runs exe, the stackpro-sim binary (or another whose main
// runs Main, whose children are exe again), with args, its flags
// ("--nats", …), its log lines going to stderr (nil discards them). The
// fleet stops when ctx ends or on Stop.
func StartProcesses(ctx context.Context, exe string, args []string, stderr io.Writer) (*Processes, error) {
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopWait
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("fleetsim: %w", err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("fleetsim: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fleetsim: starting %s: %w", exe, err)
	}
	p := &Processes{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var s Stats
			if json.Unmarshal(sc.Bytes(), &s) == nil {
				p.mu.Lock()
				p.last = s
				p.mu.Unlock()
			}
		}
		if err := cmd.Wait(); err != nil {
			p.err = fmt.Errorf("fleetsim: %s: %w", exe, err)
		}
	}()
	return p, nil
}

// Stats is the last aggregated Stats line the fleet printed; after Stop,
// its final one.
func (p *Processes) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// Send writes one control line (such as "fail 10%" or "normal") to the
// fleet, which passes it to every process.
func (p *Processes) Send(line string) error {
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return fmt.Errorf("fleetsim: sending %q: %w", line, err)
	}
	return nil
}

// Done is closed once the fleet's process has exited.
func (p *Processes) Done() <-chan struct{} { return p.done }

// Stop asks the fleet to stop (SIGTERM), waits until it has, killing it
// after 30s, and returns how it exited.
func (p *Processes) Stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // it may be exiting already
	select {
	case <-p.done:
	case <-time.After(stopWait):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}
