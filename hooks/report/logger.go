package report

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// NewLogger returns dkmsd's diagnostics logger: entries go to the journal
// (with their fields) when there is one and to stderr when not — a missing
// journal is no error and never blocks.
func NewLogger(stderr io.Writer) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(stderr)
	l.SetFormatter(plainFormatter{})
	if journal.Enabled() {
		l.AddHook(journalHook{})
		if under, _ := journal.StderrIsJournalStream(); under {
			// Under systemd stderr already reaches the journal.
			l.SetOutput(io.Discard)
		}
	}
	return l
}

// NewJournalLogger returns a logger for what the journal may keep but a
// terminal must not show (dkms says nothing there, e.g. that there is no
// system bus): entries go to the journal when there is one, else nowhere.
func NewJournalLogger() *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetFormatter(plainFormatter{})
	if journal.Enabled() {
		l.AddHook(journalHook{})
	}
	return l
}

// plainFormatter writes "dkmsd: message: field=value …" lines, as a
// command's diagnostics read on a terminal.
type plainFormatter struct{}

func (plainFormatter) Format(e *logrus.Entry) ([]byte, error) {
	var b strings.Builder
	b.WriteString("dkmsd: " + e.Message)
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == logrus.ErrorKey {
			fmt.Fprintf(&b, ": %v", e.Data[k])
			continue
		}
		fmt.Fprintf(&b, " %s=%v", k, e.Data[k])
	}
	b.WriteString("\n")
	return []byte(b.String()), nil
}

// journalHook sends logrus entries to the journal.
type journalHook struct{}

func (journalHook) Levels() []logrus.Level { return logrus.AllLevels }

func (journalHook) Fire(e *logrus.Entry) error {
	pri := journal.PriInfo
	switch e.Level {
	case logrus.PanicLevel, logrus.FatalLevel:
		pri = journal.PriCrit
	case logrus.ErrorLevel:
		pri = journal.PriErr
	case logrus.WarnLevel:
		pri = journal.PriWarning
	case logrus.DebugLevel, logrus.TraceLevel:
		pri = journal.PriDebug
	}
	fields := map[string]string{"SYSLOG_IDENTIFIER": "dkmsd"}
	for k, v := range e.Data {
		if name := fieldName(k); name != "" {
			fields[name] = fmt.Sprint(v)
		}
	}
	// A journal error must not fail the work.
	_ = journal.Send(e.Message, pri, fields)
	return nil
}

// fieldName makes a journal field name journald accepts: upper case,
// [A-Z0-9_], no leading underscore or digit, at most 64 characters;
// MESSAGE and PRIORITY are the entry's own.
func fieldName(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	s := strings.TrimLeft(string(b), "_0123456789")
	if len(s) > 64 {
		s = s[:64]
	}
	if s == "MESSAGE" || s == "PRIORITY" {
		return ""
	}
	return s
}
