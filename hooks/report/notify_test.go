package report

import (
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// signalOf is the signal a listener receives for e, as the DBus sink sends
// it.
func signalOf(t *testing.T, e lifecycle.Event) *dbus.Signal {
	t.Helper()
	member, args := Signal(e, "dkms autoinstall")
	if member == "" {
		t.Fatalf("%v has no signal", e.Type)
	}
	return &dbus.Signal{Sender: ":1.42", Path: Path, Name: Interface + "." + member, Body: args}
}

// wellFormedMarkup checks body is what the Desktop Notifications spec's
// markup subset allows: XML text with tags, every '&' an entity.
func wellFormedMarkup(t *testing.T, body string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader("<markup>" + body + "</markup>"))
	for {
		if _, err := d.Token(); err == io.EOF {
			return
		} else if err != nil {
			t.Errorf("notification body is not well-formed markup (%v):\n%s", err, body)
			return
		}
	}
}

func TestNotificationForBuildFailed(t *testing.T) {
	e := outcomeEvents()[lifecycle.BuildFailed]
	n, ok := NotificationFor(signalOf(t, e))
	if !ok {
		t.Fatal("a failed build gives no notification")
	}
	if n.Urgency != 2 {
		t.Errorf("urgency = %d, want 2 (critical)", n.Urgency)
	}
	if n.Category != "device.error" {
		t.Errorf("category = %q, want device.error", n.Category)
	}
	if n.Summary != "Kernel module build failed" {
		t.Errorf("summary = %q", n.Summary)
	}
	for _, want := range []string{"<b>dkmsd_hello/1.0</b>", "<b>6.1.0-56-amd64</b>", "(x86_64)", "Build log: " + e.Log} {
		if !strings.Contains(n.Body, want) {
			t.Errorf("body lacks %q:\n%s", want, n.Body)
		}
	}
	wellFormedMarkup(t, n.Body)

	// Without a log path the body says nothing about a log.
	e.Log = ""
	n, _ = NotificationFor(signalOf(t, e))
	if strings.Contains(n.Body, "Build log") {
		t.Errorf("body mentions a log that does not exist:\n%s", n.Body)
	}
}

// TestNotificationForEscapesTreeText sends names taken from a hostile tree
// (a dkms.conf sets PACKAGE_NAME, a directory names the kernel): they must
// reach the notification server as text, never as markup.
func TestNotificationForEscapesTreeText(t *testing.T) {
	e := lifecycle.Event{Type: lifecycle.BuildFailed, Module: "a<b>&c", Version: `1.0"'`, Kernel: "6.1<i>x</i>", Arch: "x86_64&",
		Log: "/var/lib/dkms/.dkmsd/failed/a<b>&c.log", Err: errors.New("<u>boom</u>")}
	n, ok := NotificationFor(signalOf(t, e))
	if !ok {
		t.Fatal("no notification")
	}
	for _, raw := range []string{"a<b>&c", "<i>x</i>", `1.0"'`, "x86_64&)"} {
		if strings.Contains(n.Body, raw) {
			t.Errorf("body carries %q unescaped:\n%s", raw, n.Body)
		}
	}
	for _, escaped := range []string{"<b>a&lt;b&gt;&amp;c/1.0&quot;&apos;</b>", "<b>6.1&lt;i&gt;x&lt;/i&gt;</b>", "(x86_64&amp;)", "Build log: /var/lib/dkms/.dkmsd/failed/a&lt;b&gt;&amp;c.log"} {
		if !strings.Contains(n.Body, escaped) {
			t.Errorf("body lacks %q:\n%s", escaped, n.Body)
		}
	}
	wellFormedMarkup(t, n.Body)

	tx := transaction(0, 1, 0)
	tx.Summary = "1 failed: a<b>&c"
	n, ok = NotificationFor(signalOf(t, tx.Event()))
	if !ok {
		t.Fatal("no notification for a failed transaction")
	}
	if n.Body != "1 failed: a&lt;b&gt;&amp;c" {
		t.Errorf("summary body = %q", n.Body)
	}
	wellFormedMarkup(t, n.Body)
}

func TestNotificationForTransactionFinished(t *testing.T) {
	for _, c := range []struct {
		name                    string
		installed, failed, skip int
		want                    bool
		summary                 string
		urgency                 byte
	}{
		{"no-op", 0, 0, 0, false, "", 0},
		{"only skips", 0, 0, 3, false, "", 0},
		{"installed", 2, 0, 0, true, "Kernel modules updated", 1},
		{"failed", 0, 1, 0, true, "Kernel modules: some failed to build", 2},
		{"both", 3, 1, 1, true, "Kernel modules: some failed to build", 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx := transaction(c.installed, c.failed, c.skip)
			tx.Summary = "summary text"
			n, ok := NotificationFor(signalOf(t, tx.Event()))
			if ok != c.want {
				t.Fatalf("notified = %v, want %v (%+v)", ok, c.want, n)
			}
			if !ok {
				return
			}
			if n.Summary != c.summary || n.Urgency != c.urgency || n.Body != "summary text" || n.Category != "device" {
				t.Errorf("notification = %+v, want summary %q urgency %d body %q", n, c.summary, c.urgency, "summary text")
			}
		})
	}
}

func TestNotificationForIgnoresOthers(t *testing.T) {
	ev := outcomeEvents()
	for _, typ := range []lifecycle.EventType{lifecycle.BuildStarted, lifecycle.BuildFinished, lifecycle.BuildSkipped,
		lifecycle.Installed, lifecycle.Uninstalled, lifecycle.InitrdRegenerated} {
		if n, ok := NotificationFor(signalOf(t, ev[typ])); ok {
			t.Errorf("%v gives a notification: %+v", typ, n)
		}
	}
	// Malformed or foreign signals (anyone may send on a bus) are dropped
	// without a panic.
	for name, sig := range map[string]*dbus.Signal{
		"short BuildFailed":         {Name: Interface + ".BuildFailed", Body: []any{"m", "1.0"}},
		"BuildFailed of wrong type": {Name: Interface + ".BuildFailed", Body: []any{1, 2, 3, 4, 5, 6}},
		"short TransactionFinished": {Name: Interface + ".TransactionFinished", Body: []any{"h", "s", uint32(1)}},
		"TransactionFinished ints":  {Name: Interface + ".TransactionFinished", Body: []any{"h", "s", int32(1), int32(1), int32(0), []string{}}},
		"other interface":           {Name: "org.example.Other.BuildFailed", Body: []any{"m", "v", "k", "a", "l", "e"}},
		"empty":                     {Name: ""},
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s: NotificationFor panics: %v", name, r)
				}
			}()
			if name == "BuildFailed of wrong type" {
				// Non-string arguments become empty strings; the notification
				// may be shown but must stay well-formed.
				if n, ok := NotificationFor(sig); ok {
					wellFormedMarkup(t, n.Body)
				}
				return
			}
			if n, ok := NotificationFor(sig); ok {
				t.Errorf("%s: notified %+v", name, n)
			}
		}()
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":                        "",
		"dkmsd_hello":             "dkmsd_hello",
		"a<b>&c":                  "a&lt;b&gt;&amp;c",
		`"quoted" 'single'`:       "&quot;quoted&quot; &apos;single&apos;",
		"&amp;":                   "&amp;amp;", // escaping is not idempotent: text is escaped once
		"<b>bold</b>":             "&lt;b&gt;bold&lt;/b&gt;",
		"/var/lib/dkms/x-1.0.log": "/var/lib/dkms/x-1.0.log",
		"ünïcode ✓":               "ünïcode ✓",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}
