package main

// The journal sink against a real systemd-journald in a private mount
// namespace, and the dkms command with no journal at all.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// journalNamespaceScript runs "$@" in a private mount namespace (made by
// unshare) beside a systemd-journald of its own: tmpfs over /run (so
// /run/systemd/journal holds only its sockets) and over /var/log/journal;
// the runtime journal it writes is $1, on the host, for journalctl -D.
// journald is never asked to flush, so it keeps to the runtime journal.
const journalNamespaceScript = `set -eu
jdir=$1; jlog=$2; shift 2
mount -t tmpfs tmpfs /run
mkdir -p /run/log/journal
mount --bind "$jdir" /run/log/journal
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
if [ -f /etc/systemd/journald.conf ]; then mount --bind /dev/null /etc/systemd/journald.conf; fi
/lib/systemd/systemd-journald </dev/null >>"$jlog" 2>&1 &
jpid=$!
i=0
until [ -S /run/systemd/journal/socket ]; do
	i=$((i+1))
	if [ $i -gt 200 ]; then echo "systemd-journald did not start" >&2; kill $jpid; exit 125; fi
	sleep 0.05
done
rc=0
"$@" || rc=$?
journalctl --sync >/dev/null 2>&1 || true
kill $jpid
wait $jpid || true
exit $rc
`

const journald = "/lib/systemd/systemd-journald"

func journalPrereqs(t *testing.T) {
	t.Helper()
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "unshare", "util-linux")
	testkit.RequireTool(t, "journalctl", "systemd")
	if _, err := os.Stat(journald); err != nil {
		testkit.Missing(t, journald+" (apt-get install -y systemd)")
	}
}

// inJournalNamespace runs dkms with args next to a private journald that
// writes to jdir.
func inJournalNamespace(t *testing.T, jdir string, env []string, args ...string) dkmsResult {
	t.Helper()
	full := append([]string{"--mount", "--propagation", "private", "sh", "-c", journalNamespaceScript, "sh",
		jdir, filepath.Join(filepath.Dir(jdir), "journald.log"), testkit.Binary(t, "dkms")}, args...)
	r := runCommand(t, 4*time.Minute, env, "unshare", full...)
	if r.Code == 125 {
		b, _ := os.ReadFile(filepath.Join(filepath.Dir(jdir), "journald.log"))
		t.Fatalf("the namespace's journald: %s\n%s", r.Stderr, b)
	}
	return r
}

// journalEntries reads every entry of the journal in jdir.
func journalEntries(t *testing.T, jdir string) []map[string]string {
	t.Helper()
	out, err := exec.Command("journalctl", "-D", jdir, "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=dkmsd").Output()
	if err != nil {
		t.Fatalf("journalctl -D %s: %v", jdir, err)
	}
	var entries []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		var raw map[string]any
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			t.Fatalf("journalctl -o json: %v: %s", err, line)
		}
		e := map[string]string{}
		for k, v := range raw {
			if s, ok := v.(string); ok {
				e[k] = s
			} else {
				e[k] = fmt.Sprint(v) // a binary or repeated field
			}
		}
		entries = append(entries, e)
	}
	return entries
}

// TestJournalRealJournalRealHeaders runs the dkms command beside a real
// systemd-journald in a private mount namespace and reads the entries back
// with journalctl: their MESSAGE_IDs, fields and priorities, and the
// catalog's explanation with journalctl -x.
func TestJournalRealJournalRealHeaders(t *testing.T) {
	journalPrereqs(t)
	testkit.RequireTool(t, "openssl", "openssl")
	t.Parallel()
	root, k := moduleRoot(t, "dkmsd_hello-1.0", "dkmsd_failbuild-1.0")
	tmp := t.TempDir()
	jdir := filepath.Join(tmp, "journal")
	if err := os.Mkdir(jdir, 0o755); err != nil {
		t.Fatal(err)
	}
	// No system bus here: the logger's notice about it goes to the journal
	// too, and only there.
	env := baseEnv("DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(tmp, "no-bus"))

	r := inJournalNamespace(t, jdir, env, "--root", root, "install", "dkmsd_hello/1.0", "-k", k)
	if r.Code != 0 {
		t.Fatalf("install: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if strings.Contains(r.Stderr, "D-Bus") {
		t.Errorf("install talks about the missing bus on the terminal:\n%s", r.Stderr)
	}
	if r := inJournalNamespace(t, jdir, env, "--root", root, "add", "dkmsd_failbuild/1.0"); r.Code != 0 {
		t.Fatalf("add: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := inJournalNamespace(t, jdir, env, "--root", root, "build", "dkmsd_failbuild/1.0", "-k", k); r.Code != 10 {
		t.Fatalf("failing build: exit %d, want 10\n%s%s", r.Code, r.Stdout, r.Stderr)
	}

	entries := journalEntries(t, jdir)
	failed := checkEventEntries(t, entries, k)
	checkDiagnosticEntries(t, entries)
	checkCatalogExplains(t, tmp, jdir, k, failed["DKMS_LOG"])
}

// journalEntry is the entry of event typ for module; the test fails
// without one.
func journalEntry(t *testing.T, entries []map[string]string, typ lifecycle.EventType, module string) map[string]string {
	t.Helper()
	for _, e := range entries {
		if e["MESSAGE_ID"] == report.MessageIDs[typ] && e["DKMS_MODULE"] == module {
			return e
		}
	}
	t.Fatalf("no %v entry for %s in the journal; entries:\n%s", typ, module, dumpEntries(entries))
	return nil
}

// checkEntry checks that entry e has every field of want.
func checkEntry(t *testing.T, e map[string]string, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if e[k] != v {
			t.Errorf("%s entry: %s=%q, want %q", e["DKMS_EVENT"], k, e[k], v)
		}
	}
}

// withFields is base with extra added.
func withFields(base, extra map[string]string) map[string]string {
	m := maps.Clone(base)
	maps.Copy(m, extra)
	return m
}

// checkEventEntries checks the entries of dkmsd_hello's install and
// dkmsd_failbuild's failed build on k, and returns the failed build's.
func checkEventEntries(t *testing.T, entries []map[string]string, k string) map[string]string {
	t.Helper()
	arch := machineArch()
	target := map[string]string{"SYSLOG_IDENTIFIER": "dkmsd", "DKMS_VERSION": "1.0", "KERNEL_VERSION": k, "DKMS_ARCH": arch, "_TRANSPORT": "journal"}
	added := journalEntry(t, entries, lifecycle.Added, "dkmsd_hello")
	checkEntry(t, added, map[string]string{"SYSLOG_IDENTIFIER": "dkmsd", "PRIORITY": "6", "DKMS_RESULT": "added", "DKMS_VERSION": "1.0", "MESSAGE": "Added dkmsd_hello/1.0"})
	checkEntry(t, journalEntry(t, entries, lifecycle.BuildStarted, "dkmsd_hello"), withFields(target, map[string]string{"PRIORITY": "7", "DKMS_RESULT": "started", "DKMS_HOOK": "dkms install"}))
	built := journalEntry(t, entries, lifecycle.BuildFinished, "dkmsd_hello")
	checkEntry(t, built, withFields(target, map[string]string{"PRIORITY": "6", "DKMS_RESULT": "built", "DKMS_HOOK": "dkms install"}))
	if us, err := strconv.ParseInt(built["DKMS_DURATION_USEC"], 10, 64); err != nil || us <= 0 {
		t.Errorf("BuildFinished DKMS_DURATION_USEC=%q", built["DKMS_DURATION_USEC"])
	}
	if _, err := os.Stat(built["DKMS_LOG"]); err != nil {
		t.Errorf("BuildFinished DKMS_LOG: %v", err)
	}
	checkEntry(t, journalEntry(t, entries, lifecycle.Installed, "dkmsd_hello"), withFields(target, map[string]string{"PRIORITY": "6", "DKMS_RESULT": "installed", "DKMS_HOOK": "dkms install",
		"MESSAGE": fmt.Sprintf("Installed dkmsd_hello/1.0 for %s (%s)", k, arch)}))

	failed := journalEntry(t, entries, lifecycle.BuildFailed, "dkmsd_failbuild")
	checkEntry(t, failed, withFields(target, map[string]string{"PRIORITY": "3", "DKMS_RESULT": "failed", "DKMS_HOOK": "dkms build"}))
	if b, err := os.ReadFile(failed["DKMS_LOG"]); err != nil || !strings.Contains(string(b), "deliberate build failure") {
		t.Errorf("BuildFailed DKMS_LOG=%q: %v", failed["DKMS_LOG"], err)
	}
	if !strings.Contains(failed["MESSAGE"], failed["DKMS_LOG"]) {
		t.Errorf("BuildFailed MESSAGE %q does not name the log", failed["MESSAGE"])
	}
	if us, err := strconv.ParseInt(failed["DKMS_DURATION_USEC"], 10, 64); err != nil || us <= 0 {
		t.Errorf("BuildFailed DKMS_DURATION_USEC=%q", failed["DKMS_DURATION_USEC"])
	}
	if failed["DKMS_ERROR"] == "" {
		t.Errorf("BuildFailed has no DKMS_ERROR")
	}
	return failed
}

// checkDiagnosticEntries checks that every dkmsd entry is an event with a
// known MESSAGE_ID, or a logrus diagnostic (here: no system bus) with its
// fields.
func checkDiagnosticEntries(t *testing.T, entries []map[string]string) {
	t.Helper()
	known := map[string]bool{}
	for _, id := range report.MessageIDs {
		known[id] = true
	}
	diagnostics := 0
	for _, e := range entries {
		switch {
		case known[e["MESSAGE_ID"]]:
		case e["MESSAGE_ID"] == "" && e["MESSAGE"] == "D-Bus reporting is off":
			diagnostics++
			// A notice (info or warning), with the error as a field.
			if (e["PRIORITY"] != "6" && e["PRIORITY"] != "4") || !strings.Contains(e["ERROR"], "no system bus") {
				t.Errorf("logger entry: PRIORITY=%s ERROR=%q, want 6 or 4 and the error as a field", e["PRIORITY"], e["ERROR"])
			}
		default:
			t.Errorf("unexpected dkmsd entry: %v", e)
		}
	}
	if diagnostics == 0 {
		t.Errorf("the logger's diagnostics did not reach the journal")
	}

}

// checkCatalogExplains checks that journalctl -x explains the failed build
// on k, whose log is failedLog, with dist/journal/dkmsd.catalog, compiled
// into a temporary catalog database (under tmp) that a second namespace
// puts where journalctl looks for it.
func checkCatalogExplains(t *testing.T, tmp, jdir, k, failedLog string) {
	t.Helper()
	if _, err := os.Stat("/var/lib/systemd/catalog"); err != nil {
		t.Logf("no /var/lib/systemd/catalog to mount over; journalctl -x not checked")
		return
	}
	catRoot := filepath.Join(tmp, "catalog-root")
	catDir := filepath.Join(catRoot, "usr/lib/systemd/catalog")
	if err := os.MkdirAll(catDir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(), "dist/journal/dkmsd.catalog"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(catDir, "dkmsd.catalog"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("journalctl", "--root="+catRoot, "--update-catalog").CombinedOutput(); err != nil {
		t.Fatalf("journalctl --update-catalog: %v: %s", err, out)
	}
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /var/lib/systemd/catalog && exec journalctl -D "$2" -x --no-pager MESSAGE_ID="$3"`, "sh",
		filepath.Join(catRoot, "var/lib/systemd/catalog"), jdir, report.MessageIDs[lifecycle.BuildFailed]).CombinedOutput()
	if err != nil {
		t.Fatalf("journalctl -x: %v: %s", err, out)
	}
	for _, want := range []string{
		fmt.Sprintf("Subject: Kernel module dkmsd_failbuild/1.0 failed to build for %s", k),
		"Defined-By: dkmsd",
		"The build log is " + failedLog,
		"dkms autoinstall -k " + k,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("journalctl -x lacks %q:\n%s", want, out)
		}
	}
}

func dumpEntries(entries []map[string]string) string {
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "  %s %s %s: %s\n", e["MESSAGE_ID"], e["PRIORITY"], e["DKMS_EVENT"], e["MESSAGE"])
	}
	return b.String()
}

// TestNoJournalRealNamespace runs the dkms command where there is no
// journal — no socket at all, or a socket journald left behind — and no
// system bus, as in a chroot or an installer: the work is done, nothing is
// said about the journal or the bus (dkms says nothing there), nothing
// hangs.
func TestNoJournalRealNamespace(t *testing.T) {
	journalPrereqs(t)
	t.Parallel()
	for name, setup := range map[string]string{
		"no socket": `mount -t tmpfs tmpfs /run`,
		// journald killed: its socket file stays, nobody reads it.
		"stale socket": `mount -t tmpfs tmpfs /run
` + journald + ` </dev/null >/dev/null 2>&1 &
j=$!; i=0
until [ -S /run/systemd/journal/socket ]; do i=$((i+1)); [ $i -lt 200 ] || exit 125; sleep 0.05; done
{ kill -9 $j; wait $j; } 2>/dev/null || true
[ -S /run/systemd/journal/socket ] || exit 125`,
	} {
		t.Run(name, func(t *testing.T) {
			root := testkit.NewRoot(t)
			testkit.CopyModule(t, root, "dkmsd_hello-1.0")
			for _, args := range [][]string{
				{"--root", root, "add", "dkmsd_hello/1.0"},
				{"--root", root, "status"},
				{"--root", root, "remove", "dkmsd_hello/1.0", "--all"},
			} {
				full := append([]string{"--mount", "--propagation", "private", "sh", "-c", "set -eu\n" + setup + "\nexec \"$@\"", "sh", testkit.Binary(t, "dkms")}, args...)
				r := runCommand(t, time.Minute, baseEnv(), "unshare", full...)
				if r.Code == 125 {
					t.Fatalf("namespace setup failed: %s", r.Stderr)
				}
				if r.Code != 0 {
					t.Errorf("dkms %s: exit %d\n%s%s", strings.Join(args[2:], " "), r.Code, r.Stdout, r.Stderr)
				}
				if r.took > 10*time.Second {
					t.Errorf("dkms %s took %v", strings.Join(args[2:], " "), r.took)
				}
				for _, l := range strings.Split(strings.TrimSpace(r.Stderr), "\n") {
					switch {
					case l == "":
					case strings.Contains(strings.ToLower(l), "journal"):
						t.Errorf("dkms %s talks about the missing journal: %s", args[2], l)
					case strings.Contains(l, "D-Bus"):
						t.Errorf("dkms %s talks about the missing bus: %s", args[2], l)
					default:
						t.Errorf("dkms %s: unexpected stderr: %s", args[2], l)
					}
				}
			}
			if _, err := os.Stat(filepath.Join(root, "var/lib/dkms/dkmsd_hello")); !os.IsNotExist(err) {
				t.Errorf("dkmsd_hello still in the tree after remove: %v", err)
			}
		})
	}
}
