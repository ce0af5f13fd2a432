package report

import (
	"bytes"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// TestTerminalPartialLines prints dkms's "make ...", its dots and its
// "(bad exit status: 2)" on one line, and keeps the progress line of a
// batch away from a line left open.
func TestTerminalPartialLines(t *testing.T) {
	var stdout, stderr bytes.Buffer
	term := NewTerminal(&stdout, &stderr, true)
	job := lifecycle.Event{Type: lifecycle.JobStarted, Module: "m", Version: "1", Kernel: "k", Arch: "a"}
	term.Emit(job)
	stdout.Reset()
	for _, text := range []string{"make -j2 KERNELRELEASE=k...", ".", "(bad exit status: 2)"} {
		term.Emit(lifecycle.Event{Type: lifecycle.Info, Text: text, Partial: true})
	}
	if strings.Contains(stdout.String(), "done, building") {
		t.Errorf("a progress line was drawn inside an open line: %q", stdout.String())
	}
	term.Emit(lifecycle.Event{Type: lifecycle.Info, Text: "\n", Partial: true})
	term.Emit(lifecycle.Event{Type: lifecycle.Warning, Text: "Error! Bad return status"})
	// The first text clears the progress line JobStarted drew.
	got := strings.TrimPrefix(stdout.String(), "\r\033[K")
	if want := "make -j2 KERNELRELEASE=k....(bad exit status: 2)\n"; !strings.HasPrefix(got, want) {
		t.Errorf("stdout = %q, want it to start with %q", got, want)
	}
	if !strings.Contains(got, "[0 done, building: m/1, k, a]") {
		t.Errorf("no progress line once the line was ended: %q", got)
	}
	if stderr.String() != "Error! Bad return status\n" {
		t.Errorf("stderr = %q", stderr.String())
	}
}
