// Package report holds the sinks lifecycle events are reported to: the
// terminal (dkms's text), and, as they arrive, the journal and D-Bus.
//
//	sink := report.NewTerminal(os.Stdout, os.Stderr, isatty)
//	env, _ := lifecycle.NewEnv(ctx, layout, sink)
package report

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// Terminal writes the dkms-compatible text: progress to stdout, warnings
// and errors to stderr. Batch jobs (autoinstall, match) get one line as
// they start — only on a terminal, where a progress line also shows what
// is running — and one line as they end.
type Terminal struct {
	mu             sync.Mutex
	stdout, stderr io.Writer
	tty            bool
	running        map[string]bool
	done           int
	progressShown  bool
	// midLine: the last text ended inside a line (dkms's "make ...",
	// waiting for its dots); no progress line may follow it.
	midLine bool
}

// NewTerminal returns a Terminal sink; tty says stdout is a terminal.
func NewTerminal(stdout, stderr io.Writer, tty bool) *Terminal {
	return &Terminal{stdout: stdout, stderr: stderr, tty: tty, running: map[string]bool{}}
}

// Emit prints the event's text, if it has any for a terminal.
func (t *Terminal) Emit(e lifecycle.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.clearProgress()
	defer t.showProgress()
	name := fmt.Sprintf("%s/%s, %s, %s", e.Module, e.Version, e.Kernel, e.Arch)
	switch e.Type {
	case lifecycle.Info:
		t.midLine = printText(t.stdout, e)
	case lifecycle.Warning:
		t.midLine = printText(t.stderr, e)
	case lifecycle.JobStarted:
		t.running[name] = true
		if t.tty {
			fmt.Fprintf(t.stdout, "%s: building\n", name)
		}
	case lifecycle.JobFinished:
		delete(t.running, name)
		t.done++
		t.jobLine(name, e)
	}
}

// printText prints an Info or Warning text: a line, or part of one; it
// reports whether the line is left open.
func printText(w io.Writer, e lifecycle.Event) (open bool) {
	if e.Partial {
		fmt.Fprint(w, e.Text)
		return e.Text != "" && !strings.HasSuffix(e.Text, "\n")
	}
	fmt.Fprintln(w, e.Text)
	return false
}

// jobLine is the result of one job: outcome, seconds, and for a failure
// the reason and the log.
func (t *Terminal) jobLine(name string, e lifecycle.Event) {
	secs := fmt.Sprintf(" in %.1fs", e.Duration.Seconds())
	switch lifecycle.Outcome(e.Text) {
	case lifecycle.OutcomeInstalled:
		fmt.Fprintf(t.stdout, "%s: installed%s\n", name, secs)
	case lifecycle.OutcomeSkipped:
		fmt.Fprintf(t.stdout, "%s: skipped (BUILD_EXCLUSIVE does not match this kernel/arch)\n", name)
	case lifecycle.OutcomeDeferred:
		fmt.Fprintf(t.stdout, "%s: deferred: BUILD_DEPENDS %v not registered yet\n", name, e.Err)
	case lifecycle.OutcomeNotBuilt:
		fmt.Fprintf(t.stderr, "%s: not built: %v\n", name, e.Err)
	default:
		line := fmt.Sprintf("%s: %s%s", name, e.Text, secs)
		if e.Err != nil {
			line += ": " + oneLine(e.Err)
		}
		if e.Log != "" {
			line += " (log: " + e.Log + ")"
		}
		fmt.Fprintln(t.stderr, line)
	}
}

func oneLine(err error) string {
	var le *lifecycle.Error
	if errors.As(err, &le) && len(le.Lines) > 0 {
		return strings.TrimSpace(le.Lines[0])
	}
	return err.Error()
}

func (t *Terminal) clearProgress() {
	if t.progressShown {
		fmt.Fprint(t.stdout, "\r\033[K")
		t.progressShown = false
	}
}

func (t *Terminal) showProgress() {
	if !t.tty || len(t.running) == 0 || t.midLine {
		return
	}
	names := make([]string, 0, len(t.running))
	for n := range t.running {
		names = append(names, n)
	}
	sort.Strings(names)
	line := fmt.Sprintf("[%d done, building: %s]", t.done, strings.Join(names, "; "))
	if len(line) > 160 {
		line = line[:157] + "..."
	}
	fmt.Fprint(t.stdout, line)
	t.progressShown = true
}
