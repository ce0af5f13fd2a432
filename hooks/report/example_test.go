package report_test

import (
	"os"
	"time"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
)

// The terminal sink writes dkms's text. Not on a terminal (tty false), a
// batch job shows only its result line; failures go to stderr.
func ExampleNewTerminal() {
	sink := report.NewTerminal(os.Stdout, os.Stderr, false)
	var s lifecycle.Sink = sink // any lifecycle.Env can report to it
	s.Emit(lifecycle.Event{Type: lifecycle.Info, Text: "Module dkmsd_hello/1.0 added."})
	s.Emit(lifecycle.Event{Type: lifecycle.JobStarted, Module: "dkmsd_hello", Version: "1.0", Kernel: "6.1.0-56-amd64", Arch: "x86_64"})
	s.Emit(lifecycle.Event{Type: lifecycle.JobFinished, Module: "dkmsd_hello", Version: "1.0", Kernel: "6.1.0-56-amd64", Arch: "x86_64",
		Text: string(lifecycle.OutcomeInstalled), Duration: 1500 * time.Millisecond})
	// Output:
	// Module dkmsd_hello/1.0 added.
	// dkmsd_hello/1.0, 6.1.0-56-amd64, x86_64: installed in 1.5s
}
