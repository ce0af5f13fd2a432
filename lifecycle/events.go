package lifecycle

import (
	"bytes"
	"fmt"
	"sync"
	"time"
)

// EventType says what happened. Info and Warning carry the dkms-compatible
// text; the others are lifecycle outcomes that sinks such as the journal
// and D-Bus report with their fields.
type EventType int

const (
	Info    EventType = iota // progress text (stdout in dkms)
	Warning                  // a warning or a script's/conf's stderr text (stderr in dkms)
	BuildStarted
	BuildFinished
	BuildFailed
	BuildSkipped
	Installed
	Uninstalled
	Added
	Removed
	// JobStarted and JobFinished frame one module×kernel job of a batch
	// (autoinstall, match); JobFinished's Text is its Outcome.
	JobStarted
	JobFinished
	// InitrdRegenerated: a kernel's initrd now holds its DKMS modules;
	// Log is the initrd's path.
	InitrdRegenerated
	// TransactionSummary ends a transaction (a batch or a hook run): Text
	// is the summary, Err set when something failed.
	TransactionSummary
	// CacheHit: a build came from the fleet module cache (Text says
	// from where); CacheMiss: it did not, and Text says why (Err is set
	// when an artifact was refused or the cache failed); CachePublished:
	// a build was pushed to the cache (Err set when that failed).
	CacheHit
	CacheMiss
	CachePublished
	// KeyNotEnrolled: modules were signed with a certificate the running
	// kernel does not trust. Log is the certificate, Text what to do; Err
	// is ErrSecureBootEnforced when the kernel refuses such modules.
	KeyNotEnrolled
	// InitrdVerified: dkms verify booted a kernel's initrd; Verify holds
	// what loaded and what is missing.
	InitrdVerified
)

var eventNames = map[EventType]string{
	Info: "info", Warning: "warning", BuildStarted: "build-started", BuildFinished: "build-finished",
	BuildFailed: "build-failed", BuildSkipped: "build-skipped", Installed: "installed",
	Uninstalled: "uninstalled", Added: "added", Removed: "removed",
	JobStarted: "job-started", JobFinished: "job-finished", InitrdRegenerated: "initrd-regenerated", TransactionSummary: "transaction-summary",
	CacheHit: "cache-hit", CacheMiss: "cache-miss", CachePublished: "cache-published",
	KeyNotEnrolled: "key-not-enrolled",
	InitrdVerified: "initrd-verified",
}

func (t EventType) String() string { return eventNames[t] }

// Event is one thing that happened to a module version on a kernel.
type Event struct {
	Type                          EventType
	Module, Version, Kernel, Arch string
	// Text is the human-readable line(s), as a terminal shows them.
	Text string
	// Partial: Text is part of a line (dkms's "make ...", its progress
	// dots, "(bad exit status: 2)"); no newline follows it.
	Partial bool
	// Log is the build log, for build outcomes.
	Log      string
	Duration time.Duration
	Err      error
	// Transaction is set on TransactionSummary events.
	Transaction *Transaction
	// Verify is set on InitrdVerified events.
	Verify *VerifyReport
}

// Sink receives events. Implementations must be safe for concurrent use.
type Sink interface {
	Emit(Event)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(Event)

// Emit calls f.
func (f SinkFunc) Emit(e Event) { f(e) }

// Discard is a Sink that drops every event.
var Discard Sink = SinkFunc(func(Event) {})

// Recorder is a Sink that keeps every event, for tests and summaries.
type Recorder struct {
	mu     sync.Mutex
	Events []Event
}

// Emit records e.
func (r *Recorder) Emit(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Events = append(r.Events, e)
}

// lineWriter turns written bytes into one event per line, so a script's or
// a dkms.conf's output reaches the sinks as it comes.
type lineWriter struct {
	sink Sink
	typ  EventType
	mu   sync.Mutex
	buf  []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.sink.Emit(Event{Type: w.typ, Text: string(w.buf[:i])})
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// Flush emits a final unterminated line as it is: what follows goes on
// the same line, as on dkms's terminal.
func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.sink.Emit(Event{Type: w.typ, Text: string(w.buf), Partial: true})
		w.buf = nil
	}
}

func (e *Env) info(format string, args ...any) {
	e.Sink.Emit(Event{Type: Info, Text: fmt.Sprintf(format, args...)})
}

// part prints text without ending the line.
func (e *Env) part(text string) {
	e.Sink.Emit(Event{Type: Info, Text: text, Partial: true})
}

func (e *Env) warn(format string, args ...any) {
	e.Sink.Emit(Event{Type: Warning, Text: fmt.Sprintf(format, args...)})
}

// Transaction is what one batch or hook run did, for the summary signal,
// the journal and the D-Bus GetLastTransaction method.
type Transaction struct {
	Hook                       string
	Summary                    string
	Time                       time.Time
	Installed, Failed, Skipped int
	Lines                      []string
}

// TransactionOf sums up a batch's results.
func TransactionOf(hook string, s *Summary, lines []string) Transaction {
	t := Transaction{Hook: hook, Time: time.Now(), Lines: lines}
	for _, r := range s.Results {
		switch r.Outcome {
		case OutcomeInstalled:
			t.Installed++
		case OutcomeFailed, OutcomeNotBuilt:
			t.Failed++
		case OutcomeSkipped:
			t.Skipped++
		}
	}
	t.Summary = fmt.Sprintf("%d installed, %d failed, %d skipped", t.Installed, t.Failed, t.Skipped)
	return t
}

// Event is the TransactionSummary event carrying t.
func (t Transaction) Event() Event {
	e := Event{Type: TransactionSummary, Text: t.Summary}
	e.Transaction = &t
	if t.Failed > 0 {
		e.Err = fmt.Errorf("%d module(s) failed", t.Failed)
	}
	return e
}

// TransactionFromEvent recovers the transaction of a TransactionSummary
// event.
func TransactionFromEvent(e Event) Transaction {
	if e.Transaction != nil {
		return *e.Transaction
	}
	return Transaction{Summary: e.Text}
}
