package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree/testkit"
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
	t.Parallel()
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
	writeUninstallIntent(t, b, "dkmsd_crashinitrd", "1.0", k, installed)
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

// TestRecoverKilledOriginalRestoreSweepsItsTemp puts the tree in the
// state an uninstall leaves when it is killed while copying an archived
// original module back to its place: the module file deleted, the intent
// logged, the kernel link and the archive still there, and beside the
// original's place the temporary file the copy was writing. The next
// command to take the lock completes the uninstall; it must also delete
// that temporary file, which lies outside the dirs the intent names.
func TestRecoverKilledOriginalRestoreSweepsItsTemp(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	testkit.CopyModule(t, b.root, "dkmsd_hello-1.0")
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
	original := b.path("lib/modules", k, "updates/dkmsd_hello.ko")
	if err := os.MkdirAll(filepath.Dir(original), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(original, []byte("the original module"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k)
	if _, err := os.Stat(original); !os.IsNotExist(err) {
		t.Fatalf("install did not archive the original %s (%v)", original, err)
	}

	installed := b.path("lib/modules", k, "updates/dkms/dkmsd_hello.ko")
	writeUninstallIntent(t, b, "dkmsd_hello", "1.0", k, installed)
	if err := os.Remove(installed); err != nil {
		t.Fatal(err)
	}
	temp := filepath.Join(filepath.Dir(original), ".dkmsd-dkmsd_hello.ko-123456789")
	if err := os.WriteFile(temp, []byte("the orig"), 0o600); err != nil {
		t.Fatal(err)
	}

	r := b.run(t, crashProbe...)
	if r.Code != 3 {
		t.Fatalf("probe: exit %d, want 3\nstderr:\n%s", r.Code, r.Stderr)
	}
	if got, err := os.ReadFile(original); err != nil || string(got) != "the original module" {
		t.Errorf("after recovery the original %s holds %q (%v), want it back", original, got, err)
	}
	b.wantStatus(t, "dkmsd_hello/1.0, "+k+", "+machineArch()+": built")
	if _, err := os.Lstat(temp); !os.IsNotExist(err) {
		t.Errorf("after recovery the killed copy's temporary file %s is still there (%v)\nstderr:\n%s", temp, err, r.Stderr)
	}
}

// writeUninstallIntent leaves the intent an uninstall of module/version on
// kernel logs before its first change, as a kill right after it would
// leave it.
func writeUninstallIntent(t *testing.T, b *batchRoot, module, version, kernel string, files ...string) {
	t.Helper()
	intent, err := json.Marshal(map[string]any{"op": "uninstall", "Module": module, "Version": version,
		"Kernel": kernel, "Arch": machineArch(), "files": files})
	if err != nil {
		t.Fatal(err)
	}
	dir := b.path("var/lib/dkms/.dkmsd/intent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := module + "--" + version + "--" + kernel + "--" + machineArch() + ".json"
	if err := os.WriteFile(filepath.Join(dir, name), intent, 0o644); err != nil {
		t.Fatal(err)
	}
}
