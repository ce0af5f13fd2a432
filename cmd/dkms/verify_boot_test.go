package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestBootQEMURealVerify runs `dkms verify -k K` for the cloud kernel in a
// relocated root whose /etc/initramfs-tools/modules names dkmsd_hello,
// beside a private system bus and a journald of its own: on the machine's
// original initrd, which lacks the module, it must say "missing" and exit
// 30; after `dkms initrd` put the module in, "loaded" and exit 0; with no
// qemu on PATH, exit 69 without booting. The D-Bus signal InitrdVerified
// and the journal entries carry each result. Two QEMU boots.
func TestBootQEMURealVerify(t *testing.T) {
	bootKernel := requireBootKernel(t)
	testkit.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	reportingPrereqs(t)
	journalPrereqs(t)
	bin := testkit.Binary(t, "dkms")
	root := bootRoot(t, bootKernel)
	img := filepath.Join(root, "boot", "initrd.img-"+bootKernel)
	copyBootFile(t, "/boot/initrd.img-"+bootKernel, img)
	if err := os.Symlink("/boot/vmlinuz-"+bootKernel, filepath.Join(root, "boot", "vmlinuz-"+bootKernel)); err != nil {
		t.Fatal(err)
	}
	dkmsOK(t, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel, "--no-initrd")

	dir := sharedDir(t)
	bus := startSystemBus(t, dir, true)
	rec := listen(t, bus, report.Interface)
	env := baseEnv("DBUS_SYSTEM_BUS_ADDRESS=" + bus)
	jdir := filepath.Join(dir, "journal")
	if err := os.MkdirAll(jdir, 0o755); err != nil {
		t.Fatal(err)
	}
	verified := func(result string) func(*dbus.Signal) bool {
		return func(s *dbus.Signal) bool {
			return member(s) == "InitrdVerified" && len(s.Body) == 5 && s.Body[1] == result
		}
	}

	r := inJournalNamespace(t, jdir, env, "--root", root, "verify", "-k", bootKernel)
	t.Logf("verify, original initrd: %s", r.took)
	if r.Code != 30 || !strings.Contains(r.Stdout, "dkmsd_hello: missing\n") ||
		!strings.Contains(r.Stderr, "Error! "+bootKernel+"'s initrd lacks dkmsd_hello") {
		t.Errorf("dkms verify on the original initrd: exit %d, want 30\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	}
	sig := rec.waitFor(t, "InitrdVerified missing", verified(lifecycle.VerifyMissing))
	if sig.Body[0] != bootKernel || !slices.Equal(sig.Body[3].([]string), []string{"dkmsd_hello"}) || len(sig.Body[2].([]string)) != 0 {
		t.Errorf("InitrdVerified signal: %v", sig.Body)
	}

	dkmsOK(t, bin, "--root", root, "initrd", "-k", bootKernel)
	r = inJournalNamespace(t, jdir, env, "--root", root, "verify", "-k", bootKernel)
	t.Logf("verify, regenerated initrd: %s", r.took)
	if r.Code != 0 || !strings.Contains(r.Stdout, "dkmsd_hello: loaded\n") ||
		!strings.Contains(r.Stdout, "Safe to reboot into "+bootKernel+": its initrd loaded dkmsd_hello.") {
		t.Errorf("dkms verify after dkms initrd: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	}
	sig = rec.waitFor(t, "InitrdVerified loaded", verified(lifecycle.VerifyLoaded))
	if !slices.Equal(sig.Body[2].([]string), []string{"dkmsd_hello"}) || len(sig.Body[3].([]string)) != 0 {
		t.Errorf("InitrdVerified signal: %v", sig.Body)
	}

	byResult := map[string]map[string]string{}
	for _, e := range journalEntries(t, jdir) {
		if e["MESSAGE_ID"] == report.MessageIDs[lifecycle.InitrdVerified] {
			byResult[e["DKMS_RESULT"]] = e
		}
	}
	if e := byResult[lifecycle.VerifyMissing]; e["DKMS_MISSING"] != "dkmsd_hello" || e["PRIORITY"] != "3" || e["KERNEL_VERSION"] != bootKernel || e["DKMS_INITRD"] != img {
		t.Errorf("journal entry of the missing module: %v", e)
	}
	if e := byResult[lifecycle.VerifyLoaded]; e["DKMS_LOADED"] != "dkmsd_hello" || e["PRIORITY"] != "6" || !strings.HasPrefix(e["MESSAGE"], "Safe to reboot into "+bootKernel) {
		t.Errorf("journal entry of the loaded module: %v", e)
	}

	// No qemu: /usr/bin (where it lives) is not on PATH.
	noQEMU := dkms(t, []string{"PATH=/usr/sbin:/sbin", "LC_ALL=C", "HOME=/root"}, "--root", root, "verify", "-k", bootKernel)
	if noQEMU.Code != 69 || !strings.Contains(noQEMU.Stderr, "Cannot verify the initrd of "+bootKernel+": qemu-system-x86_64 is not installed") {
		t.Errorf("dkms verify without qemu: exit %d, want 69\nstdout:\n%s\nstderr:\n%s", noQEMU.Code, noQEMU.Stdout, noQEMU.Stderr)
	}
}
