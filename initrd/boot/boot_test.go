package boot

import (
	"errors"
	"testing"
)

// TestWatch reads console lines as a verification boot prints them (taken
// from a real boot of the cloud kernel): a module counts as loaded once
// the kernel loaded it and its init, if it ran, returned 0; the boot ends
// at the initramfs tool's marker.
func TestWatch(t *testing.T) {
	r := &Result{loaded: map[string]bool{}, failed: map[string]string{}}
	lines := []string{
		"[   47.198969] module_load: dm_mod ",
		"[   52.939803] module_load: efivarfs ",
		"[   52.946378] initcall efivarfs_init+0x0/0x1000 [efivarfs] returned -19 after 165 usecs",
		"[   53.749188] module_load: dkmsd_hello OE",
		"[   53.749797] calling  dkmsd_hello_init+0x0/0x1000 [dkmsd_hello] @ 151",
		"[   53.750289] initcall dkmsd_hello_init+0x0/0x1000 [dkmsd_hello] returned 0 after 170 usecs",
		"[   53.750389] initcall raid_init+0x0/0x1000 [raid10] returned 0 after 161 usecs",
	}
	for _, l := range lines {
		if r.watch(l) {
			t.Fatalf("the boot stopped at %q", l)
		}
	}
	if !r.watch("Spawning shell within the initramfs") || !r.Reached {
		t.Errorf("the initramfs-tools marker did not end the boot")
	}
	for name, want := range map[string]bool{"dkmsd_hello": true, "dkmsd-hello": true, "dm_mod": true, "efivarfs": false, "raid10": false, "zfs": false} {
		if r.Loaded(name) != want {
			t.Errorf("Loaded(%s) = %v, want %v", name, !want, want)
		}
	}
	if r.Failure("efivarfs") != "init returned -19" {
		t.Errorf("Failure(efivarfs) = %q", r.Failure("efivarfs"))
	}
	other := &Result{loaded: map[string]bool{}, failed: map[string]string{}}
	if !other.watch("[   95.8] dracut: Refusing to continue") || !other.Reached {
		t.Errorf("dracut's marker did not end the boot")
	}
	panicked := &Result{loaded: map[string]bool{}, failed: map[string]string{}}
	if !panicked.watch("[  2.0] Kernel panic - not syncing: VFS: Unable to mount root fs") || panicked.Reached {
		t.Errorf("a panic must end the boot without it counting as having loaded the modules")
	}
}

// TestRunWithoutQEMU: no emulator is ErrNoQEMU, before anything starts.
func TestRunWithoutQEMU(t *testing.T) {
	_, err := Run(t.Context(), Options{Kernel: "/nonexistent", Initrd: "/nonexistent", QEMU: "qemu-system-dkmsd-none"})
	if !errors.Is(err, ErrNoQEMU) {
		t.Errorf("Run with no qemu: %v, want ErrNoQEMU", err)
	}
}
