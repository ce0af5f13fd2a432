package report

import (
	"fmt"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// MessageIDs are the journal MESSAGE_IDs of dkmsd's events, stable across
// releases: `journalctl MESSAGE_ID=…` finds them and the catalog in
// dist/journal/dkmsd.catalog explains them (journalctl -x).
var MessageIDs = map[lifecycle.EventType]string{
	lifecycle.BuildStarted:       "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e01",
	lifecycle.BuildFinished:      "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e02",
	lifecycle.BuildFailed:        "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e03",
	lifecycle.BuildSkipped:       "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e04",
	lifecycle.Installed:          "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e05",
	lifecycle.Uninstalled:        "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e06",
	lifecycle.InitrdRegenerated:  "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e07",
	lifecycle.TransactionSummary: "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e08",
	lifecycle.Added:              "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e09",
	lifecycle.Removed:            "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e0a",
	lifecycle.CacheHit:           "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e0b",
	lifecycle.CacheMiss:          "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e0c",
	lifecycle.CachePublished:     "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e0d",
	lifecycle.KeyNotEnrolled:     "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e0e",
	lifecycle.InitrdVerified:     "4b1d1e0d2f7a4c0f9a3a6d3f2b5c7e0f",
}

// Journal sends lifecycle events to the systemd journal with structured
// fields. Text-only events (Info, Warning) are left to the terminal.
type Journal struct {
	// Hook names the hook or command that ran (DKMS_HOOK), e.g. "dkms".
	Hook string
}

// NewJournal returns a Journal sink, or nil when there is no journal:
// not being there is an answer, not an error.
func NewJournal(hook string) *Journal {
	if !journal.Enabled() {
		return nil
	}
	return &Journal{Hook: hook}
}

// Emit sends one entry; a journal error is dropped (reporting must never
// fail the work).
func (j *Journal) Emit(e lifecycle.Event) {
	if _, ok := MessageIDs[e.Type]; !ok {
		return
	}
	_ = journal.Send(journalMessage(e), journalPriority(e), JournalFields(e, j.Hook))
}

// JournalFields are the structured fields of an event's entry.
func JournalFields(e lifecycle.Event, hook string) map[string]string {
	f := map[string]string{
		"SYSLOG_IDENTIFIER": "dkmsd",
		"MESSAGE_ID":        MessageIDs[e.Type],
		"DKMS_EVENT":        e.Type.String(),
		"DKMS_RESULT":       Result(e),
	}
	set := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	set("DKMS_MODULE", e.Module)
	set("DKMS_VERSION", e.Version)
	set("KERNEL_VERSION", e.Kernel)
	set("DKMS_ARCH", e.Arch)
	set("DKMS_LOG", e.Log)
	set("DKMS_HOOK", hook)
	if e.Duration > 0 {
		f["DKMS_DURATION_USEC"] = fmt.Sprint(e.Duration.Microseconds())
	}
	if e.Err != nil {
		f["DKMS_ERROR"] = e.Err.Error()
	}
	if v := e.Verify; v != nil {
		set("DKMS_INITRD", v.Initrd)
		set("DKMS_LOADED", strings.Join(v.Loaded, " "))
		set("DKMS_MISSING", strings.Join(v.Missing, " "))
		set("DKMS_ACCEL", v.Accel)
		set("DKMS_DETAIL", v.Detail)
	}
	return f
}

// Result is the one-word outcome of an event (DKMS_RESULT, and the
// result argument of D-Bus signals).
func Result(e lifecycle.Event) string {
	switch e.Type {
	case lifecycle.BuildStarted:
		return "started"
	case lifecycle.BuildFinished:
		return "built"
	case lifecycle.BuildFailed:
		return "failed"
	case lifecycle.BuildSkipped:
		return "skipped"
	case lifecycle.Installed:
		return "installed"
	case lifecycle.Uninstalled:
		return "uninstalled"
	case lifecycle.InitrdRegenerated:
		return "regenerated"
	case lifecycle.Added:
		return "added"
	case lifecycle.Removed:
		return "removed"
	case lifecycle.KeyNotEnrolled:
		if e.Err != nil {
			return "refused"
		}
		return "not-enrolled"
	case lifecycle.TransactionSummary:
		if e.Err != nil {
			return "failed"
		}
		return "succeeded"
	case lifecycle.CacheHit:
		return "pulled"
	case lifecycle.CacheMiss:
		if e.Err != nil {
			return "refused"
		}
		return "missed"
	case lifecycle.CachePublished:
		if e.Err != nil {
			return "failed"
		}
		return "published"
	case lifecycle.InitrdVerified:
		if e.Verify != nil {
			return e.Verify.Result
		}
	}
	return e.Type.String()
}

func journalPriority(e lifecycle.Event) journal.Priority {
	switch e.Type {
	case lifecycle.BuildFailed:
		return journal.PriErr
	case lifecycle.TransactionSummary:
		if e.Err != nil {
			return journal.PriErr
		}
	case lifecycle.BuildSkipped:
		return journal.PriNotice
	case lifecycle.CacheMiss, lifecycle.CachePublished:
		if e.Err != nil {
			return journal.PriWarning
		}
	case lifecycle.InitrdVerified:
		if lifecycle.KindOf(e.Err) == lifecycle.KindInitrdMissing {
			return journal.PriErr
		}
		if e.Err != nil {
			return journal.PriWarning
		}
	case lifecycle.BuildStarted:
		return journal.PriDebug
	case lifecycle.KeyNotEnrolled:
		if e.Err != nil {
			return journal.PriWarning
		}
	}
	return journal.PriInfo
}

func journalMessage(e lifecycle.Event) string {
	target := fmt.Sprintf("%s/%s for %s (%s)", e.Module, e.Version, e.Kernel, e.Arch)
	switch e.Type {
	case lifecycle.BuildStarted:
		return "Building " + target
	case lifecycle.BuildFinished:
		return fmt.Sprintf("Built %s in %.1fs", target, e.Duration.Seconds())
	case lifecycle.BuildFailed:
		return fmt.Sprintf("Build of %s failed; log: %s", target, e.Log)
	case lifecycle.BuildSkipped:
		return "Skipped " + target + ": " + e.Text
	case lifecycle.Installed:
		return "Installed " + target
	case lifecycle.Uninstalled:
		return "Uninstalled " + target
	case lifecycle.Added:
		return fmt.Sprintf("Added %s/%s", e.Module, e.Version)
	case lifecycle.Removed:
		return fmt.Sprintf("Removed %s/%s from the DKMS tree", e.Module, e.Version)
	case lifecycle.CacheHit:
		return "Took " + target + " from the module cache " + e.Text
	case lifecycle.CacheMiss:
		return "Building " + target + " here, not from the module cache: " + e.Text
	case lifecycle.CachePublished:
		if e.Err != nil {
			return "Publishing " + target + " to the module cache failed: " + e.Text
		}
		return "Published " + target + " to the module cache " + e.Text
	}
	return strings.TrimSpace(e.Text)
}
