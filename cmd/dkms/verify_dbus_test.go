package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestBootQEMURealVerifyDBus calls the service's Verify method over a
// private system bus with dkmsd's policy (dist/dbus), `dkms dbus-service`
// answering for a relocated root whose initrd dkmsd gave dkmsd_hello: root
// gets the report (loaded, dkmsd_hello) and the InitrdVerified signal
// carries the same fields, from the service's process. uid nobody is
// refused by the policy; on a second bus whose administrator opened
// Verify to everyone, the service refuses nobody itself, without booting.
// One QEMU boot.
func TestBootQEMURealVerifyDBus(t *testing.T) {
	bootKernel := requireBootKernel(t)
	testkit.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	testkit.RequireTool(t, "dbus-send", "dbus-bin")
	reportingPrereqs(t)
	bin := testkit.Binary(t, "dkms")
	root := bootRoot(t, bootKernel)
	copyBootFile(t, "/boot/initrd.img-"+bootKernel, filepath.Join(root, "boot", "initrd.img-"+bootKernel))
	if err := os.Symlink("/boot/vmlinuz-"+bootKernel, filepath.Join(root, "boot", "vmlinuz-"+bootKernel)); err != nil {
		t.Fatal(err)
	}
	dkmsOK(t, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel)

	dir := sharedDir(t)
	bus := startSystemBus(t, dir, true)
	rec := listen(t, bus, report.Interface)
	svc := exec.Command(bin, "--root", root, "dbus-service")
	svc.Env = baseEnv("DBUS_SYSTEM_BUS_ADDRESS=" + bus)
	startDaemon(t, "dkms dbus-service", svc)
	waitForOwner(t, rec.conn, report.BusName)

	if name, out := verifyAsNobody(t, bus, bootKernel); name != "org.freedesktop.DBus.Error.AccessDenied" || strings.Contains(out, "root only") {
		t.Errorf("Verify as uid %d on the policy's bus: %s, want the bus's AccessDenied\n%s", nobody, name, out)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	var result, summary string
	var loaded, missing []string
	call := rec.conn.Object(report.BusName, report.Path).CallWithContext(ctx, report.Interface+".Verify", 0, bootKernel)
	if err := call.Store(&result, &loaded, &missing, &summary); err != nil {
		t.Fatalf("Verify as root: %v", err)
	}
	t.Logf("Verify over the bus: %s", time.Since(start).Round(100*time.Millisecond))
	wantSummary := "Safe to reboot into " + bootKernel + ": its initrd loaded dkmsd_hello."
	if result != lifecycle.VerifyLoaded || !slices.Equal(loaded, []string{"dkmsd_hello"}) || len(missing) != 0 || summary != wantSummary {
		t.Errorf("Verify replied %q %q %q %q, want %q [dkmsd_hello] [] %q", result, loaded, missing, summary, lifecycle.VerifyLoaded, wantSummary)
	}
	sig := rec.waitFor(t, "InitrdVerified", named(report.Interface+".InitrdVerified"))
	want := []any{bootKernel, lifecycle.VerifyLoaded, []string{"dkmsd_hello"}, []string{}, wantSummary}
	if len(sig.Body) != len(want) {
		t.Fatalf("InitrdVerified signal: %v, want %v", sig.Body, want)
	}
	for i, w := range want {
		if ws, ok := w.([]string); ok {
			if got, _ := sig.Body[i].([]string); !slices.Equal(got, ws) {
				t.Errorf("InitrdVerified field %d = %v, want %v", i, sig.Body[i], ws)
			}
		} else if sig.Body[i] != w {
			t.Errorf("InitrdVerified field %d = %v, want %v", i, sig.Body[i], w)
		}
	}
	// The service reports through its sinks' own connection: the
	// signal's sender is the service's process, not the name's owner.
	var pid uint32
	if err := rec.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, sig.Sender).Store(&pid); err != nil || int(pid) != svc.Process.Pid {
		t.Errorf("InitrdVerified came from %s, pid %d (%v), not from the service (pid %d)", sig.Sender, pid, err, svc.Process.Pid)
	}

	// An administrator opened Verify to everyone: the service itself
	// refuses a caller that is not root.
	opened := filepath.Join(dir, "opened")
	if err := os.MkdirAll(opened, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(opened, "verify-for-all.conf"), []byte(openVerifyPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	policy, err := filepath.Abs(filepath.Join(testkit.RepoRoot(), "dist", "dbus"))
	if err != nil {
		t.Fatal(err)
	}
	busDir := filepath.Join(dir, "opened-bus")
	if err := os.MkdirAll(busDir, 0o755); err != nil {
		t.Fatal(err)
	}
	config := strings.NewReplacer("{{dir}}", busDir, "{{include}}", "<includedir>"+policy+"</includedir><includedir>"+opened+"</includedir>").Replace(systemBusConfig)
	openBus := startBus(t, "system dbus-daemon, Verify opened", busDir, config, 0)
	openRec := listen(t, openBus, report.Interface)
	svc2 := exec.Command(bin, "--root", root, "dbus-service")
	svc2.Env = baseEnv("DBUS_SYSTEM_BUS_ADDRESS=" + openBus)
	startDaemon(t, "dkms dbus-service, Verify opened", svc2)
	waitForOwner(t, openRec.conn, report.BusName)
	start = time.Now()
	name, out := verifyAsNobody(t, openBus, bootKernel)
	if name != "org.freedesktop.DBus.Error.AccessDenied" || !strings.Contains(out, "Verify boots a virtual machine: root only") {
		t.Errorf("Verify as uid %d with Verify opened by policy: %s, want the service's AccessDenied\n%s", nobody, name, out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refused call took %s: did it boot?", took)
	}
	for _, s := range openRec.take() {
		if member(s) == "InitrdVerified" {
			t.Errorf("a refused Verify sent %s %v", s.Name, s.Body)
		}
	}
}

// openVerifyPolicy is an administrator's addition opening Verify to every
// user.
const openVerifyPolicy = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy context="default">
    <allow send_destination="org.dkmsd.Manager1" send_interface="org.dkmsd.Manager1" send_member="Verify"/>
  </policy>
</busconfig>
`

// verifyAsNobody calls Verify as uid nobody with dbus-send and returns the
// D-Bus error's name ("" if none) and what dbus-send printed.
func verifyAsNobody(t *testing.T, bus, kernel string) (string, string) {
	t.Helper()
	cmd := asUser(nobody, exec.Command("dbus-send", "--system", "--print-reply", "--reply-timeout=60000",
		"--dest="+report.BusName, string(report.Path), report.Interface+".Verify", "string:"+kernel))
	cmd.Env = baseEnv("DBUS_SYSTEM_BUS_ADDRESS=" + bus)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err == nil {
		return "", string(out)
	}
	// dbus-send prints "Error <name>: <message>".
	if rest, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "Error "); ok {
		name, _, _ := strings.Cut(rest, ":")
		return name, string(out)
	}
	return "dbus-send: " + err.Error(), string(out)
}
