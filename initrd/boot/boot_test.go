package boot

import (
	"errors"
	"strings"
	"testing"
)

// TestWatch reads console lines as a verification boot prints them (the
// timer warning and the probe's lines as real boots of the cloud kernel
// printed them; a module in state Loading is one whose init had not
// returned): a module counts as loaded when
// the probe's /proc/modules line shows it Live; the boot ends at the
// probe's end line, and a panic or an initramfs that stopped on its own
// ends it without the probe having run.
func TestWatch(t *testing.T) {
	r := &Result{loaded: map[string]bool{}, failed: map[string]string{}}
	lines := []string{
		"[    0.012000] ..MP-BIOS bug: 8254 timer not connected to IO-APIC",
		"dkmsd-verify: modprobe zfs: exit 1",
		"dkmsd-verify: module dkmsd_hello 16384 0 - Live 0xffffffffc049d000 (OE)",
		"dkmsd-verify: module raid10 69632 0 - Loading 0xffffffffc0512000",
	}
	for _, l := range lines {
		if r.watch(l) {
			t.Fatalf("the boot stopped at %q", l)
		}
	}
	if !r.watch("dkmsd-verify: end") || !r.Reached {
		t.Errorf("the probe's end line did not end the boot")
	}
	for name, want := range map[string]bool{"dkmsd_hello": true, "dkmsd-hello": true, "raid10": false, "zfs": false, "dm_mod": false} {
		if r.Loaded(name) != want {
			t.Errorf("Loaded(%s) = %v, want %v", name, !want, want)
		}
	}
	for name, want := range map[string]string{"zfs": "modprobe exit 1", "raid10": "state Loading", "dkmsd_hello": "", "dm_mod": ""} {
		if got := r.Failure(name); got != want {
			t.Errorf("Failure(%s) = %q, want %q", name, got, want)
		}
	}
	for _, l := range []string{
		"[  2.0] Kernel panic - not syncing: VFS: Unable to mount root fs",
		"Spawning shell within the initramfs",
		"[   95.8] dracut: Refusing to continue",
		"[    9.996910] reboot: Power down",
	} {
		other := &Result{loaded: map[string]bool{}, failed: map[string]string{}}
		if !other.watch(l) || other.Reached {
			t.Errorf("%q must end the boot without it counting as the probe's end", l)
		}
	}
}

// TestArgs: the boot's memory follows the initrd's size; no default
// devices; the serial console on qemu's standard output.
func TestArgs(t *testing.T) {
	for size, want := range map[int64]int64{0: 192, 17 << 20: 294, 17<<20 + 1: 300, 200 << 20: 1392} {
		if got := Memory(size); got != want {
			t.Errorf("Memory(%d) = %d, want %d", size, got, want)
		}
	}
	args := strings.Join(Args("tcg", "/boot/vmlinuz-K", "/tmp/probe.img", 17<<20), " ")
	for _, want := range []string{"-accel tcg -m 294M -nodefaults", "-serial stdio", "-no-reboot", "-kernel /boot/vmlinuz-K -initrd /tmp/probe.img -append " + Cmdline} {
		if !strings.Contains(args, want) {
			t.Errorf("Args: %s\nwant %q in it", args, want)
		}
	}
}

// TestRunWithoutQEMU: no emulator is ErrNoQEMU, before anything starts.
func TestRunWithoutQEMU(t *testing.T) {
	_, err := Run(t.Context(), Options{Kernel: "/nonexistent", Initrd: "/nonexistent", QEMU: "qemu-system-dkmsd-none"})
	if !errors.Is(err, ErrNoQEMU) {
		t.Errorf("Run with no qemu: %v, want ErrNoQEMU", err)
	}
}
