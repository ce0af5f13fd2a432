package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestBootQEMURealDracut makes an initrd for the cloud kernel with
// Debian's dracut (dracut-core: usr-merged, /usr/lib/modules, zstd; a
// small one — the base and kernel-modules dracut modules — to keep the
// test short), in a relocated root whose etc/dracut.conf.d asks for
// dkmsd_hello with force_drivers. dracut writes an early-microcode
// segment first (--early-microcode; the root's lib/firmware/intel-ucode
// holds a stand-in blob, not real microcode, so the test needs none on
// the machine). `dkms install` must append the module to that image
// (initramfs-<k>.img, Fedora's name) with an rd.driver.pre line in
// etc/cmdline.d, keeping the early segment byte for byte first; the image
// must read back, boot under QEMU with the module loaded, and `dkms
// verify` must say so. One QEMU boot for the console check, one for
// verify.
func TestBootQEMURealDracut(t *testing.T) {
	bootKernel := requireBootKernel(t)
	testkit.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	testkit.RequireTool(t, "dracut", "dracut-core")
	testkit.RequireTool(t, "zstd", "zstd")
	testkit.RequireTool(t, "unshare", "util-linux")
	bin := testkit.Binary(t, "dkms")
	root, err := filepath.EvalSymlinks(testkit.NewRoot(t, bootKernel))
	if err != nil {
		t.Fatal(err)
	}
	testkit.CopyModule(t, root, "dkmsd_hello-1.0")
	confd := filepath.Join(root, "etc/dracut.conf.d")
	if err := os.MkdirAll(confd, 0o755); err != nil {
		t.Fatal(err)
	}
	// As an administrator writes it; a later file adds to what an
	// earlier one set, and omit_drivers keeps another module out.
	for name, text := range map[string]string{
		"10-storage.conf": "add_drivers+=\" loop \"\nomit_drivers+=\" dkmsd-omitted \"\n",
		"50-hello.conf":   "force_drivers+=\" dkmsd_hello \"\n",
	} {
		if err := os.WriteFile(filepath.Join(confd, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/boot/vmlinuz-"+bootKernel, filepath.Join(root, "boot", "vmlinuz-"+bootKernel)); err != nil {
		t.Fatal(err)
	}

	// A stand-in for a microcode file: dracut concatenates what it finds
	// in intel-ucode into the early segment's GenuineIntel.bin; the
	// kernel's loader finds no update in it for the emulated CPU.
	ucode := []byte("dkmsd stand-in for an Intel microcode file, not microcode\n")
	ucodeDir := filepath.Join(root, "lib/firmware/intel-ucode")
	if err := os.MkdirAll(ucodeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ucodeDir, "06-55-04"), ucode, 0o644); err != nil {
		t.Fatal(err)
	}

	// dracut itself gets empty configuration: the image it makes is the
	// one a kernel arrives with, before dkmsd.
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "dracut.conf"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(root, "boot", "initramfs-"+bootKernel+".img")
	// The cloud kernel is built without CONFIG_MICROCODE, and dracut
	// writes no early segment for such a kernel: dracut runs in a mount
	// namespace of its own where /boot/config-<k> is a copy saying
	// CONFIG_MICROCODE_INTEL=y (the machine's file is not touched).
	config, err := os.ReadFile("/boot/config-" + bootKernel)
	if err != nil {
		t.Fatal(err)
	}
	microcodeConfig := filepath.Join(t.TempDir(), "config-"+bootKernel)
	if err := os.WriteFile(microcodeConfig, append(config, "CONFIG_MICROCODE_INTEL=y\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$1" "$2" && shift 2 && exec "$@"`,
		"sh", microcodeConfig, "/boot/config-"+bootKernel,
		"dracut", "--no-hostonly", "--conf", filepath.Join(empty, "dracut.conf"), "--confdir", empty,
		"-m", "base kernel-modules", "--drivers", "loop", "--compress", "zstd -q -3 -T0",
		"--early-microcode", "--fwdir", filepath.Join(root, "lib/firmware"), "--kver", bootKernel, "--force", img)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dracut: %v\n%s", err, out)
	}
	t.Logf("dracut made %s in %s", img, time.Since(start).Round(time.Second))
	original, err := initrd.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	if original.Main != initrd.Zstd {
		t.Fatalf("dracut's image is %s, want zstd", original.Main)
	}
	if mods, _ := original.Resolve("lib/modules/" + bootKernel); mods != "usr/lib/modules/"+bootKernel {
		t.Fatalf("dracut's image keeps its modules in %s, want usr/lib/modules/%s", mods, bootKernel)
	}
	early := original.Segments[0]
	if !early.Early || early.Offset != 0 || earlyMicrocode(t, original) != string(ucode) {
		t.Fatalf("dracut's image does not start with an early segment holding the stand-in microcode: early %v at %d, %d bytes", early.Early, early.Offset, early.Length)
	}

	out := dkmsOK(t, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel)
	if !strings.Contains(out, "Regenerated "+img+" (append, zstd, 1 modules added") {
		t.Errorf("dkms install did not append to dracut's image:\n%s", out)
	}
	after, err := initrd.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Segments) != len(original.Segments)+1 {
		t.Errorf("%d segments after the install, want %d + 1", len(after.Segments), len(original.Segments))
	}
	if s := after.Segments[0]; !s.Early || s.Offset != 0 || s.Length != early.Length ||
		string(after.Data[:early.Length]) != string(original.Data[:early.Length]) || earlyMicrocode(t, after) != string(ucode) {
		t.Errorf("the early segment is not kept byte for byte first: early %v at %d, %d bytes; was %d bytes", s.Early, s.Offset, s.Length, early.Length)
	}
	if n := helloInImage(t, after, bootKernel); n != "usr/lib/modules/"+bootKernel+"/updates/dkms/dkmsd_hello.ko" {
		t.Errorf("dkmsd_hello in the image: %q", n)
	}
	if list, _ := after.Content("etc/cmdline.d/50-dkmsd.conf"); string(list) != "rd.driver.pre=dkmsd_hello\n" {
		t.Errorf("etc/cmdline.d/50-dkmsd.conf = %q", list)
	}
	if got := dkmsOK(t, bin, "--root", root, "initrd-modules", "-k", bootKernel); got != "dkmsd_hello early\n" {
		t.Errorf("dkms initrd-modules = %q, want dracut's force_drivers module, early", got)
	}

	r := <-startQEMUDracut(t, bootKernel, img)
	if r.err != nil {
		t.Fatalf("qemu with %s: %v after %s\n%s", img, r.err, r.took.Round(time.Second), consoleTail(r.log, 40))
	}
	t.Logf("booted with %s in %s", img, r.took.Round(100*time.Millisecond))
	for _, want := range []string{"Run /init as init process", helloLoaded} {
		if !strings.Contains(r.log, want) {
			t.Errorf("dracut image: no %q on the console:\n%s", want, consoleTail(r.log, 40))
		}
	}
	// After its cmdline hook (rd.driver.pre), this small image gives up
	// on the root= it cannot handle; a full one waits for the device.
	if !strings.Contains(r.log, "Refusing to continue") && !strings.Contains(r.log, "Could not boot") {
		t.Errorf("dracut image: it did not get past its cmdline hook:\n%s", consoleTail(r.log, 40))
	}
	if strings.Contains(r.log, "Initramfs unpacking failed") {
		t.Errorf("dracut image: the kernel could not unpack it:\n%s", consoleLines(r.log, "nitramfs"))
	}
	res := dkms(t, baseEnv(), "--root", root, "verify", "-k", bootKernel)
	if res.Code != 0 || !strings.Contains(res.Stdout, "dkmsd_hello: loaded\n") {
		t.Errorf("dkms verify on the dracut image: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
}

// earlyMicrocode is the GenuineIntel.bin of the image's early segment.
func earlyMicrocode(t *testing.T, img *initrd.Image) string {
	t.Helper()
	for _, r := range img.Segments[0].Records {
		if r.Name == "kernel/x86/microcode/GenuineIntel.bin" {
			b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
	return ""
}

// startQEMUDracut boots a dracut image: it loads rd.driver.pre early,
// then gives up on a root device no disk provides ("Refusing to
// continue", or "Could not boot." after rd.retry=1) and, with no shell
// allowed, ends (init exits: panic=-1 reboots, -no-reboot ends qemu).
func startQEMUDracut(t *testing.T, bootKernel, img string) <-chan bootResult {
	return startQEMUWith(t.Context(), bootKernel, img, "console=ttyS0 panic=-1 ignore_loglevel root=/dev/dkmsd-no-disk rd.retry=1 rd.shell=0 rd.emergency=poweroff")
}
