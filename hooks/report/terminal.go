// Package report holds the sinks lifecycle events are reported to: the
// terminal (dkms's text), and, as they arrive, the journal and D-Bus.
//
//	sink := report.NewTerminal(os.Stdout, os.Stderr)
//	env, _ := lifecycle.NewEnv(ctx, layout, sink)
package report

import (
	"fmt"
	"io"
	"sync"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// Terminal writes the dkms-compatible text: progress to stdout, warnings
// and script or configuration errors to stderr.
type Terminal struct {
	mu             sync.Mutex
	stdout, stderr io.Writer
}

// NewTerminal returns a Terminal sink writing to stdout and stderr.
func NewTerminal(stdout, stderr io.Writer) *Terminal {
	return &Terminal{stdout: stdout, stderr: stderr}
}

// Emit prints the event's text, if it has any for a terminal.
func (t *Terminal) Emit(e lifecycle.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch e.Type {
	case lifecycle.Info:
		fmt.Fprintln(t.stdout, e.Text)
	case lifecycle.Warning:
		fmt.Fprintln(t.stderr, e.Text)
	}
}
