package report

import (
	"io"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// Sinks fans events out to the terminal and, for lifecycle outcomes, to
// the journal and the system bus. The bus is connected on the first
// outcome, so commands that change nothing never touch it; when there is
// no bus (or it refuses us) the work goes on and the logger says so once —
// to the journal, never on the terminal, where dkms says nothing.
type Sinks struct {
	Terminal lifecycle.Sink
	Journal  lifecycle.Sink // nil when there is no journal
	Hook     string
	Log      *logrus.Logger

	once sync.Once
	bus  *DBus
}

// NewSinks is what every binary reports to: dkms's text on stdout and
// stderr (tty: stdout is a terminal), the journal when there is one, the
// system bus once an outcome needs it; hook names the command in the
// journal and on the bus.
func NewSinks(hook string, stdout, stderr io.Writer, tty bool) *Sinks {
	s := &Sinks{Terminal: NewTerminal(stdout, stderr, tty), Hook: hook, Log: NewJournalLogger()}
	// A nil *Journal in the interface would not compare equal to nil.
	if j := NewJournal(hook); j != nil {
		s.Journal = j
	}
	return s
}

// Emit passes e on.
func (s *Sinks) Emit(e lifecycle.Event) {
	if s.Terminal != nil {
		s.Terminal.Emit(e)
	}
	if e.Type == lifecycle.Info || e.Type == lifecycle.Warning || e.Type == lifecycle.JobStarted || e.Type == lifecycle.JobFinished {
		return
	}
	if s.Journal != nil {
		s.Journal.Emit(e)
	}
	s.once.Do(func() {
		bus, err := NewDBus(s.Hook)
		if err != nil {
			if s.Log != nil {
				s.Log.WithError(err).Info("D-Bus reporting is off")
			}
			return
		}
		s.bus = bus
	})
	if s.bus != nil {
		s.bus.Emit(e)
	}
}

// Close releases the bus connection.
func (s *Sinks) Close() {
	if s.bus != nil {
		s.bus.Close()
	}
}
