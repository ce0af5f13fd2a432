package main

import (
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle/secureboot"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestNotifyKeyNotEnrolledRealDunstRealBusRealHeaders: a build that signs
// with a key the kernel's keyrings lack (a /proc/keys fixture) while
// Secure Boot is on (the SecureBoot EFI variable) warns on the terminal
// with the mokutil command, sends KeyNotEnrolled on the system bus, and
// dkmsd-notify turns it into a critical notification dunst keeps in its
// history.
func TestNotifyKeyNotEnrolledRealDunstRealBusRealHeaders(t *testing.T) {
	reportingPrereqs(t)
	testkit.RequireTool(t, "openssl", "openssl")
	testkit.RequireTool(t, "dunst", "dunst")
	testkit.RequireTool(t, "dunstctl", "dunst")
	testkit.RequireTool(t, "Xvfb", "xvfb")
	t.Parallel()
	root, k := moduleRoot(t, "dkmsd_hello-1.0")
	writeRootFile(t, root, "proc/keys", "11923611 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1\n"+
		"0b4d4e6d I------     1 perm 1f010000     0     0 asymmetri Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1: X509.rsa a7046c9a []\n", 0o644)
	writeRootFile(t, root, secureboot.SecureBootVar, "\x06\x00\x00\x00\x01", 0o644)
	dir := sharedDir(t)
	system := startSystemBus(t, dir, true)
	session := startSessionBus(t, dir, nobody)
	display := startXvfb(t)
	desk := startDunst(t, nobodyDir(t, dir, "home"), display, session)
	rec := listen(t, system, report.Interface)
	startNotifier(t, nobody, system, session, rec.conn)
	env := baseEnv("DBUS_SYSTEM_BUS_ADDRESS="+system, testkit.SignAnywhere)

	if r := dkms(t, env, "--root", root, "add", "dkmsd_hello/1.0"); r.Code != 0 {
		t.Fatalf("add: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	r := dkms(t, env, "--root", root, "build", "dkmsd_hello/1.0", "-k", k)
	cert := root + "/var/lib/dkms/mok.pub"
	if r.Code != 0 || !strings.Contains(r.Stderr, "\n  mokutil --import "+cert+"\n") {
		t.Fatalf("build: exit %d, want 0 and the mokutil command on stderr\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	sig := rec.waitFor(t, "KeyNotEnrolled", named(report.Interface+".KeyNotEnrolled"))
	if got, _ := sig.Body[0].(string); got != cert {
		t.Errorf("KeyNotEnrolled names %q, want %s", got, cert)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && strings.TrimSpace(desk.ctl(t, "count", "displayed")) == "0" {
		time.Sleep(100 * time.Millisecond)
	}
	desk.ctl(t, "close-all")
	var found bool
	for _, n := range dunstHistory(t, desk.ctl(t, "history")) {
		if n.Summary == "Module signing key not enrolled" && strings.Contains(n.Body, "mokutil --import "+cert) && n.Category == "device.error" {
			found = true
		}
	}
	if !found {
		t.Errorf("no critical \"Module signing key not enrolled\" notification in dunst's history:\n%s", desk.ctl(t, "history"))
	}
}
