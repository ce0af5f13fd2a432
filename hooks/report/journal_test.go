package report

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// journaldField is journald's rule for a field name sent by a client:
// upper-case letters, digits and '_', not starting with '_' or a digit, at
// most 64 characters. journald drops other fields silently.
var journaldField = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)

// outcomeEvents are the lifecycle outcomes every sink reports, each with
// every field lifecycle fills in for it.
func outcomeEvents() map[lifecycle.EventType]lifecycle.Event {
	target := func(t lifecycle.EventType) lifecycle.Event {
		return lifecycle.Event{Type: t, Module: "dkmsd_hello", Version: "1.0", Kernel: "6.1.0-56-amd64", Arch: "x86_64"}
	}
	started := target(lifecycle.BuildStarted)
	finished := target(lifecycle.BuildFinished)
	finished.Duration, finished.Log = 1500*time.Millisecond, "/var/lib/dkms/dkmsd_hello/1.0/6.1.0-56-amd64/x86_64/log/make.log"
	failed := target(lifecycle.BuildFailed)
	failed.Duration, failed.Log, failed.Err = 2*time.Second, "/var/lib/dkms/.dkmsd/failed/dkmsd_hello-1.0-6.1.0-56-amd64-x86_64.log", errors.New("exit status 2")
	skipped := target(lifecycle.BuildSkipped)
	skipped.Text = "BUILD_EXCLUSIVE_ARCH"
	added := target(lifecycle.Added)
	added.Kernel, added.Arch = "", ""
	removed := target(lifecycle.Removed)
	removed.Kernel, removed.Arch = "", ""
	initrd := lifecycle.Event{Type: lifecycle.InitrdRegenerated, Kernel: "6.1.0-56-amd64", Arch: "x86_64", Log: "/boot/initrd.img-6.1.0-56-amd64", Text: "appended 1 module"}
	vrep := &lifecycle.VerifyReport{Kernel: "6.1.0-56-amd64", Initrd: "/boot/initrd.img-6.1.0-56-amd64", Result: lifecycle.VerifyMissing, Missing: []string{"zfs"}, Accel: "tcg"}
	verified := lifecycle.Event{Type: lifecycle.InitrdVerified, Kernel: "6.1.0-56-amd64", Arch: "x86_64", Log: vrep.Initrd, Text: vrep.Summary(), Verify: vrep}
	return map[lifecycle.EventType]lifecycle.Event{
		lifecycle.InitrdVerified:     verified,
		lifecycle.BuildStarted:       started,
		lifecycle.BuildFinished:      finished,
		lifecycle.BuildFailed:        failed,
		lifecycle.BuildSkipped:       skipped,
		lifecycle.Installed:          target(lifecycle.Installed),
		lifecycle.Uninstalled:        target(lifecycle.Uninstalled),
		lifecycle.Added:              added,
		lifecycle.Removed:            removed,
		lifecycle.InitrdRegenerated:  initrd,
		lifecycle.CacheHit:           target(lifecycle.CacheHit),
		lifecycle.CacheMiss:          target(lifecycle.CacheMiss),
		lifecycle.CachePublished:     target(lifecycle.CachePublished),
		lifecycle.TransactionSummary: transaction(1, 1, 0).Event(),
		lifecycle.KeyNotEnrolled: {Type: lifecycle.KeyNotEnrolled, Log: "/var/lib/dkms/mok.pub",
			Text: lifecycle.EnrollmentAdvice("/var/lib/dkms/mok.pub", true), Err: lifecycle.ErrSecureBootEnforced},
	}
}

func transaction(installed, failed, skipped int) lifecycle.Transaction {
	return lifecycle.Transaction{Hook: "dkms autoinstall", Summary: "a <summary> & more", Time: time.Unix(1700000000, 0),
		Installed: installed, Failed: failed, Skipped: skipped,
		Lines: []string{"Autoinstall on 6.1.0-56-amd64 succeeded for module(s) dkmsd_hello."}}
}

func TestMessageIDsWellFormedAndDistinct(t *testing.T) {
	id := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := map[string]lifecycle.EventType{}
	for typ, m := range MessageIDs {
		if !id.MatchString(m) {
			t.Errorf("MESSAGE_ID of %v = %q: want 32 lower-case hex digits", typ, m)
		}
		if other, dup := seen[m]; dup {
			t.Errorf("MESSAGE_ID %s is used by both %v and %v", m, other, typ)
		}
		seen[m] = typ
	}
	for typ := range outcomeEvents() {
		if _, ok := MessageIDs[typ]; !ok {
			t.Errorf("outcome %v has no MESSAGE_ID", typ)
		}
	}
	for _, typ := range []lifecycle.EventType{lifecycle.Info, lifecycle.Warning, lifecycle.JobStarted, lifecycle.JobFinished} {
		if _, ok := MessageIDs[typ]; ok {
			t.Errorf("text event %v has a MESSAGE_ID; the journal sink should leave it to the terminal", typ)
		}
	}
}

func TestJournalFieldsEachEventType(t *testing.T) {
	wantResult := map[lifecycle.EventType]string{
		lifecycle.BuildStarted: "started", lifecycle.BuildFinished: "built", lifecycle.BuildFailed: "failed",
		lifecycle.BuildSkipped: "skipped", lifecycle.Installed: "installed", lifecycle.Uninstalled: "uninstalled",
		lifecycle.Added: "added", lifecycle.Removed: "removed", lifecycle.InitrdRegenerated: "regenerated",
		lifecycle.TransactionSummary: "failed", lifecycle.CacheHit: "pulled", lifecycle.CacheMiss: "missed",
		lifecycle.CachePublished: "published",
		lifecycle.KeyNotEnrolled: "refused",
		lifecycle.InitrdVerified: lifecycle.VerifyMissing,
	}
	for typ, e := range outcomeEvents() {
		t.Run(typ.String(), func(t *testing.T) {
			f := JournalFields(e, "dkms autoinstall")
			want := map[string]string{
				"SYSLOG_IDENTIFIER": "dkmsd",
				"MESSAGE_ID":        MessageIDs[typ],
				"DKMS_EVENT":        typ.String(),
				"DKMS_RESULT":       wantResult[typ],
				"DKMS_HOOK":         "dkms autoinstall",
				"DKMS_MODULE":       e.Module,
				"DKMS_VERSION":      e.Version,
				"KERNEL_VERSION":    e.Kernel,
				"DKMS_ARCH":         e.Arch,
				"DKMS_LOG":          e.Log,
			}
			if e.Duration > 0 {
				want["DKMS_DURATION_USEC"] = strconv.FormatInt(e.Duration.Microseconds(), 10)
			}
			if e.Err != nil {
				want["DKMS_ERROR"] = e.Err.Error()
			}
			if v := e.Verify; v != nil {
				want["DKMS_INITRD"], want["DKMS_MISSING"], want["DKMS_ACCEL"] = v.Initrd, strings.Join(v.Missing, " "), v.Accel
			}
			for k, v := range want {
				if v == "" {
					if got, ok := f[k]; ok {
						t.Errorf("%s = %q: an empty value should leave the field out", k, got)
					}
					continue
				}
				if f[k] != v {
					t.Errorf("%s = %q, want %q", k, f[k], v)
				}
			}
			for k := range f {
				if _, ok := want[k]; !ok {
					t.Errorf("unexpected field %s=%q", k, f[k])
				}
				if !journaldField.MatchString(k) {
					t.Errorf("field name %q would be dropped by journald", k)
				}
				if k == "MESSAGE" || k == "PRIORITY" {
					t.Errorf("%s must not be in the fields: journal.Send adds it and it would be duplicated", k)
				}
			}
		})
	}
	// A summary with nothing failed succeeded.
	if r := JournalFields(transaction(2, 0, 0).Event(), "")["DKMS_RESULT"]; r != "succeeded" {
		t.Errorf("DKMS_RESULT of a clean transaction = %q, want succeeded", r)
	}
}

func TestJournalPriorities(t *testing.T) {
	want := map[lifecycle.EventType]journal.Priority{
		lifecycle.BuildFailed:        journal.PriErr,
		lifecycle.BuildSkipped:       journal.PriNotice,
		lifecycle.BuildStarted:       journal.PriDebug,
		lifecycle.BuildFinished:      journal.PriInfo,
		lifecycle.Installed:          journal.PriInfo,
		lifecycle.Uninstalled:        journal.PriInfo,
		lifecycle.Added:              journal.PriInfo,
		lifecycle.Removed:            journal.PriInfo,
		lifecycle.InitrdRegenerated:  journal.PriInfo,
		lifecycle.TransactionSummary: journal.PriInfo,
	}
	for typ, p := range want {
		if got := journalPriority(lifecycle.Event{Type: typ}); got != p {
			t.Errorf("priority of %v = %d, want %d", typ, got, p)
		}
	}
}

func TestJournalMessages(t *testing.T) {
	ev := outcomeEvents()
	for typ, want := range map[lifecycle.EventType]string{
		lifecycle.BuildStarted:  "Building dkmsd_hello/1.0 for 6.1.0-56-amd64 (x86_64)",
		lifecycle.BuildFinished: "Built dkmsd_hello/1.0 for 6.1.0-56-amd64 (x86_64) in 1.5s",
		lifecycle.BuildFailed:   "Build of dkmsd_hello/1.0 for 6.1.0-56-amd64 (x86_64) failed; log: /var/lib/dkms/.dkmsd/failed/dkmsd_hello-1.0-6.1.0-56-amd64-x86_64.log",
		lifecycle.BuildSkipped:  "Skipped dkmsd_hello/1.0 for 6.1.0-56-amd64 (x86_64): BUILD_EXCLUSIVE_ARCH",
		lifecycle.Installed:     "Installed dkmsd_hello/1.0 for 6.1.0-56-amd64 (x86_64)",
		lifecycle.Added:         "Added dkmsd_hello/1.0",
		lifecycle.Removed:       "Removed dkmsd_hello/1.0 from the DKMS tree",
	} {
		if got := journalMessage(ev[typ]); got != want {
			t.Errorf("MESSAGE of %v = %q, want %q", typ, got, want)
		}
	}
}

func TestFieldNameSanitising(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"module", "MODULE"},
		{"kernel-version", "KERNEL_VERSION"},
		{"DKMS_LOG", "DKMS_LOG"},
		{"a.b c/d", "A_B_C_D"},
		{"_private", "PRIVATE"},
		{"__9lives", "LIVES"},
		{"9leading_digit", "LEADING_DIGIT"},
		{"0_1_x", "X"},
		{"ünïcode", "N__CODE"}, // each byte of a non-ASCII letter becomes '_'
		{strings.Repeat("x", 80), strings.Repeat("X", 64)},
		{"_" + strings.Repeat("y", 70), strings.Repeat("Y", 64)},
		{"message", ""},
		{"priority", ""},
		{"", ""},
		{"123", ""},
		{"___", ""},
		{"-", ""},
	} {
		got := fieldName(c.in)
		if got != c.want {
			t.Errorf("fieldName(%q) = %q, want %q", c.in, got, c.want)
		}
		if got != "" && !journaldField.MatchString(got) {
			t.Errorf("fieldName(%q) = %q, which journald would drop", c.in, got)
		}
	}
}

// catalogPath is the repository's dist/journal/dkmsd.catalog.
func catalogPath() string {
	return filepath.Join(testkit.RepoRoot(), "dist", "journal", "dkmsd.catalog")
}

// catalogSections parses a journal catalog: "-- <id>" starts an entry,
// header lines ("Key: value") follow until a blank line, then the text.
func catalogSections(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(catalogPath())
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{}
	var id string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "-- ") {
			id = strings.TrimSpace(strings.TrimPrefix(line, "-- "))
			if _, dup := sections[id]; dup {
				t.Errorf("catalog: entry %s appears twice", id)
			}
			sections[id] = ""
			continue
		}
		if id != "" {
			sections[id] += line + "\n"
		}
	}
	return sections
}

func TestJournalCatalogCoversMessageIDs(t *testing.T) {
	sections := catalogSections(t)
	byID := map[string]lifecycle.EventType{}
	for typ, id := range MessageIDs {
		byID[id] = typ
		if _, ok := sections[id]; !ok {
			t.Errorf("MESSAGE_ID %s (%v) has no \"-- %s\" entry in the catalog", id, typ, id)
		}
	}
	events := outcomeEvents()
	placeholder := regexp.MustCompile(`@([A-Za-z0-9_]+)@`)
	for id, text := range sections {
		typ, ok := byID[id]
		if !ok {
			t.Errorf("catalog entry %s matches no MESSAGE_ID in report.MessageIDs", id)
			continue
		}
		if !regexp.MustCompile(`(?m)^Subject: \S`).MatchString(text) {
			t.Errorf("catalog entry %s has no Subject", id)
		}
		if !strings.Contains(text, "Defined-By: dkmsd\n") {
			t.Errorf("catalog entry %s has no Defined-By: dkmsd", id)
		}
		// Every @FIELD@ the explanation shows must be a field the entry has.
		fields := JournalFields(events[typ], "dkms autoinstall")
		for _, m := range placeholder.FindAllStringSubmatch(text, -1) {
			if _, ok := fields[m[1]]; !ok {
				t.Errorf("catalog entry %s (%v) shows @%s@, a field its journal entries do not carry", id, typ, m[1])
			}
		}
	}
}

// TestJournalCatalogRealJournalctl compiles the catalog with systemd's own
// journalctl into a temporary root (nothing on the machine is touched) and
// lists it back.
func TestJournalCatalogRealJournalctl(t *testing.T) {
	journalctl := testkit.RequireTool(t, "journalctl", "systemd")
	root := t.TempDir()
	dir := filepath.Join(root, "usr/lib/systemd/catalog")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(catalogPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dkmsd.catalog"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := testkit.Run(t, journalctl, "--root="+root, "--update-catalog"); r.Code != 0 || r.Out != "" {
		t.Fatalf("journalctl --update-catalog: exit %d: %s", r.Code, r.Out)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/systemd/catalog/database")); err != nil {
		t.Fatalf("no catalog database written: %v", err)
	}
	list := testkit.Run(t, journalctl, "--root="+root, "--list-catalog")
	if list.Code != 0 {
		t.Fatalf("journalctl --list-catalog: exit %d: %s", list.Code, list.Out)
	}
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(list.Out), "\n") {
		id, subject, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(subject, "dkmsd: ") {
			t.Errorf("catalog entry %s is not shown as defined by dkmsd: %q", id, line)
		}
		listed = append(listed, id)
	}
	var want []string
	for _, id := range MessageIDs {
		want = append(want, id)
	}
	sort.Strings(want)
	sort.Strings(listed)
	if strings.Join(listed, " ") != strings.Join(want, " ") {
		t.Errorf("journalctl --list-catalog lists\n%s\nwant the MESSAGE_IDs\n%s", strings.Join(listed, "\n"), strings.Join(want, "\n"))
	}
	dump := testkit.Run(t, journalctl, "--root="+root, "--dump-catalog", MessageIDs[lifecycle.BuildFailed])
	if dump.Code != 0 || !strings.Contains(dump.Out, "Subject: Kernel module @DKMS_MODULE@/@DKMS_VERSION@ failed to build for @KERNEL_VERSION@") {
		t.Errorf("journalctl --dump-catalog %s: exit %d\n%s", MessageIDs[lifecycle.BuildFailed], dump.Code, dump.Out)
	}
}
