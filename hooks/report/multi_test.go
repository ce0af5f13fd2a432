package report

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// TestSinksWithoutBus fans events out where there is no system bus (a
// chroot, an installer): the terminal gets everything, the journal only
// outcomes, and the logger says once that D-Bus reporting is off.
func TestSinksWithoutBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	var term, journal lifecycle.Recorder
	var logged bytes.Buffer
	log := logrus.New()
	log.SetOutput(&logged)
	s := &Sinks{Terminal: &term, Journal: &journal, Hook: "dkms install", Log: log}
	defer s.Close()

	// Text only: the bus is not even tried.
	for _, typ := range []lifecycle.EventType{lifecycle.Info, lifecycle.Warning, lifecycle.JobStarted, lifecycle.JobFinished} {
		s.Emit(lifecycle.Event{Type: typ, Text: "x"})
	}
	if logged.Len() != 0 {
		t.Errorf("text events touched the bus: %s", logged.String())
	}
	if len(journal.Events) != 0 {
		t.Errorf("the journal got text events: %v", journal.Events)
	}

	ev := outcomeEvents()
	for _, typ := range []lifecycle.EventType{lifecycle.BuildStarted, lifecycle.BuildFailed, lifecycle.Installed} {
		s.Emit(ev[typ])
	}
	if len(term.Events) != 7 {
		t.Errorf("terminal got %d events, want all 7", len(term.Events))
	}
	if len(journal.Events) != 3 {
		t.Errorf("journal got %d events, want the 3 outcomes", len(journal.Events))
	}
	if n := strings.Count(logged.String(), "D-Bus reporting is off"); n != 1 {
		t.Errorf("the logger said %d times that there is no bus, want once:\n%s", n, logged.String())
	}
}

// TestSinksNilJournal is the journal-less case: NewJournal returned nil.
func TestSinksNilJournal(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	var term lifecycle.Recorder
	s := &Sinks{Terminal: &term}
	defer s.Close()
	s.Emit(outcomeEvents()[lifecycle.BuildFailed]) // no journal, no bus, no logger: no panic
	if len(term.Events) != 1 {
		t.Errorf("terminal got %d events", len(term.Events))
	}
}

// TestNewSinksNoBusSaysNothingOnTheTerminal: where there is no system bus
// (a chroot, a container, CI) dkms says nothing about it, and neither do
// the sinks every binary reports to.
func TestNewSinksNoBusSaysNothingOnTheTerminal(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	var stdout, stderr bytes.Buffer
	s := NewSinks("dkms install", &stdout, &stderr, false)
	defer s.Close()
	for _, e := range outcomeEvents() {
		s.Emit(e)
	}
	if stdout.Len() != 0 || stderr.Len() != 0 {
		t.Errorf("outcome events without a bus printed:\nstdout %q\nstderr %q", stdout.String(), stderr.String())
	}
}
