package lifecycle

import (
	"fmt"
	"io"
	"time"
)

// progressEvery is how often dkms prints a progress dot while a step
// runs in the background.
const progressEvery = 3 * time.Second

// step is one command shown the way dkms's invoke_command shows it.
type step struct {
	// Desc is what the terminal shows ("Cleaning build area", a make
	// line); Command replaces it under --verbose.
	Desc, Command string
	// Background: a step dkms runs in the background prints a dot every
	// three seconds while it runs (not under --verbose).
	Background bool
}

// invoke runs a step and shows it as dkms does: "<desc>...", a dot every
// three seconds for a background step, "(bad exit status: N)" when it
// fails, then the end of the line. Under --verbose the command is shown
// on a line of its own. run gets the terminal for its output, except
// for a background step without --verbose (then io.Discard).
func (e *Env) invoke(s step, run func(out io.Writer) error) error {
	out := io.Discard
	stop := func() {}
	if e.Verbose {
		e.info("%s", s.Command)
	} else {
		e.part(s.Desc + "...")
		if s.Background {
			stop = e.progressDots()
		}
	}
	var shown *lineWriter
	if e.Verbose || !s.Background {
		shown = &lineWriter{sink: e.Sink, typ: Info}
		out = shown
	}
	err := run(out)
	stop()
	if shown != nil {
		shown.Flush()
	}
	if err != nil {
		e.part(fmt.Sprintf("(bad exit status: %d)", statusOf(err)))
	}
	e.part("\n")
	return err
}

// progressDots prints a dot every three seconds until the returned stop
// is called; no dot follows stop.
func (e *Env) progressDots() (stop func()) {
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				e.part(".")
			}
		}
	}()
	return func() {
		close(quit)
		<-finished
	}
}

// statusOf is the exit status dkms shows for a failed step: the
// command's, or 1 for a failure that is not a command's exit.
func statusOf(err error) int {
	if c := exitCode(err); c > 0 {
		return c
	}
	return 1
}
