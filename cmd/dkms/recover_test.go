package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/dkmsd/dkmsd/initrd"
)

// TestRecoverKilledUninstallThenInitrd puts the tree in the state an
// uninstall of a REMAKE_INITRD module leaves when it is killed after
// logging its intent and marking the initrd stale, before deleting the
// module: files in place, kernel link in place, intent and pending marker
// written. The next command to take the lock (the crash probe, which
// changes nothing itself) must complete the uninstall and only then bring
// the initrd up to date: the image no longer holds the module. Regenerating
// first would rebuild the image with the module still installed and then
// clear the marker, leaving a module in the initrd that is not installed.
func TestRecoverKilledUninstallThenInitrd(t *testing.T) {
	b := newBatchRoot(t)
	k := b.kernelWithInitrd(t)
	img := b.path("boot", "initrd.img-"+k)
	copyBootFile(t, "/boot/initrd.img-"+k, img)
	b.cloneHello(t, "dkmsd_crashinitrd", "1.0", []string{`REMAKE_INITRD="yes"`}, nil)
	b.mustRun(t, "add", "dkmsd_crashinitrd/1.0")
	b.mustRun(t, "install", "dkmsd_crashinitrd/1.0", "-k", k)
	holds := func() bool {
		t.Helper()
		image, err := initrd.Read(img)
		if err != nil {
			t.Fatalf("%s: %v", img, err)
		}
		return imageHasModule(image, k, "dkmsd_crashinitrd")
	}
	if !holds() {
		t.Fatalf("after install, %s does not hold dkmsd_crashinitrd", img)
	}

	installed := b.path("lib/modules", k, "updates/dkms/dkmsd_crashinitrd.ko")
	if _, err := os.Stat(installed); err != nil {
		t.Fatal(err)
	}
	intent, err := json.Marshal(map[string]any{"op": "uninstall", "Module": "dkmsd_crashinitrd", "Version": "1.0",
		"Kernel": k, "Arch": machineArch(), "files": []string{installed}})
	if err != nil {
		t.Fatal(err)
	}
	dir := b.path("var/lib/dkms/.dkmsd/intent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dkmsd_crashinitrd--1.0--"+k+"--"+machineArch()+".json"), intent, 0o644); err != nil {
		t.Fatal(err)
	}
	markInitrdPending(t, b.root, k)

	r := b.run(t, crashProbe...)
	if r.Code != 3 {
		t.Fatalf("probe: exit %d, want 3\nstderr:\n%s", r.Code, r.Stderr)
	}
	if _, err := os.Stat(installed); !os.IsNotExist(err) {
		t.Errorf("%s still there after recovery (%v)", installed, err)
	}
	b.wantStatus(t, "dkmsd_crashinitrd/1.0, "+k+", "+machineArch()+": built")
	if holds() {
		t.Errorf("after recovery %s still holds dkmsd_crashinitrd, which is no longer installed\nstderr:\n%s", img, r.Stderr)
	}
	if _, err := os.Stat(b.path("var/lib/dkms/.dkmsd/initrd", k+".pending")); !os.IsNotExist(err) {
		t.Errorf("initrd pending marker left: %v", err)
	}
}
