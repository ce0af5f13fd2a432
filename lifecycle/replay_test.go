package lifecycle

import (
	"errors"
	"strings"
	"testing"
)

// TestReplayInDkmsOrder: jobs that end in any order are shown in the
// order dkms's autoinstall works on them — those depending on nothing of
// the batch first, in the tree's order, then their dependents — each
// job's text as one block, its error last as dkms prints it.
func TestReplayInDkmsOrder(t *testing.T) {
	jobs := []*job{
		{Target: Target{Module: "a", Kernel: "k"}, deps: []string{"b"}},
		{Target: Target{Module: "b", Kernel: "k"}},
		{Target: Target{Module: "c", Kernel: "k"}},
	}
	rec := &Recorder{}
	rep := newReplay(&serialSink{sink: rec}, jobs)
	text := func(m string, err error) []Event {
		j := &jobText{pass: Discard}
		j.Emit(Event{Type: Info, Text: m + " built"})
		j.Emit(Event{Type: BuildStarted}) // not text: passed on, not kept
		j.failed(err)
		return j.text()
	}
	rep.done(2, text("c", nil))
	if len(rec.Events) != 0 {
		t.Fatalf("c was shown before b: %v", rec.Events)
	}
	rep.done(0, text("a", &Error{Lines: []string{"Bad return status", "Consult log"}}))
	rep.done(1, text("b", errors.New("plain")))
	got := shown(rec)
	want := "b built\nError! plain\nc built\na built\nError! Bad return status\nConsult log\n"
	if got != want {
		t.Errorf("replay:\n%s\nwant:\n%s", got, want)
	}
	if strings.Count(got, "built") != 3 {
		t.Errorf("each job shown once: %q", got)
	}
}
