package lifecycle

import (
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// shown is what a terminal would show of the recorded text events.
func shown(r *Recorder) string {
	var b strings.Builder
	for _, e := range r.Events {
		if e.Type != Info && e.Type != Warning {
			continue
		}
		b.WriteString(e.Text)
		if !e.Partial {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// TestInvokeShowsStepsAsDkms: a step is "<desc>...", a dot every three
// seconds while a background step runs, "(bad exit status: N)" when it
// fails, then the end of the line; a foreground step's output goes on
// that line; --verbose shows the command instead.
func TestInvokeShowsStepsAsDkms(t *testing.T) {
	ctx := context.Background()
	run := func(verbose bool, s step, f func(io.Writer) error) (string, error) {
		rec := &Recorder{}
		e := &Env{Sink: rec, Verbose: verbose}
		err := e.invoke(s, f)
		return shown(rec), err
	}
	start := time.Now()
	got, _ := run(false, step{Desc: "make -j2 x", Command: "c", Background: true}, func(io.Writer) error {
		time.Sleep(progressEvery + progressEvery/4)
		return nil
	})
	if want := "make -j2 x....\n"; got != want {
		t.Errorf("a %v background step: %q, want %q (one dot)", time.Since(start).Round(time.Second), got, want)
	}
	got, err := run(false, step{Desc: "make", Command: "c", Background: true}, func(io.Writer) error {
		return exec.CommandContext(ctx, "sh", "-c", "exit 2").Run()
	})
	if want := "make...(bad exit status: 2)\n"; got != want || err == nil {
		t.Errorf("a failing step: %q (err %v), want %q", got, err, want)
	}
	got, _ = run(false, step{Desc: "applying patch p", Command: "c"}, func(out io.Writer) error {
		_, err := io.WriteString(out, "patching file x.c\n")
		return err
	})
	if want := "applying patch p...patching file x.c\n\n"; got != want {
		t.Errorf("a foreground step: %q, want %q", got, want)
	}
	got, _ = run(true, step{Desc: "depmod", Command: "depmod -a k", Background: true}, func(io.Writer) error { return nil })
	if want := "depmod -a k\n\n"; got != want {
		t.Errorf("--verbose: %q, want %q", got, want)
	}
}
