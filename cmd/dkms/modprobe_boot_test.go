package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// Aliases of two PCI devices every qemu "pc" machine has: the i440FX host
// bridge and the PIIX3 ISA bridge.
const (
	hostBridgeAlias = "pci:v00008086d00001237sv*sd*bc*sc*i*"
	isaBridgeAlias  = "pci:v00008086d00007000sv*sd*bc*sc*i*"
)

// bootModule is the source of dkmsd_hello renamed, with extra lines
// appended to its C file and its init's "return 0;" replaced by ret.
func bootModule(t *testing.T, name, extra, ret string) map[string]string {
	t.Helper()
	files := testkit.HelloFiles(t, name, "1.0")
	c := files[name+".c"]
	if ret != "" {
		c = strings.Replace(c, "\treturn 0;", ret, 1)
	}
	files[name+".c"] = c + extra
	return files
}

// staticDkms builds the dkms command without cgo, to run in an initramfs
// that has no C library of its own version.
func staticDkms(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "dkms")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/dkms")
	cmd.Dir = testkit.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build (static): %v\n%s", err, b)
	}
	return out
}

// vmInit is the initramfs's init (rdinit=): with the relocated root the
// host built the modules in, it installs them with the static dkms under
// the booted kernel and lists /proc/modules after each step, between
// "@@dkmsd" markers on the serial console. klibc's sh runs it.
const vmInit = `#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
K=$(uname -r)
R=%s
OTHER=%s
step() { echo "@@dkmsd step $1"; }
dkms() { /dkmsd/dkms --root "$R" --no-initrd "$@"; echo "@@dkmsd exit $?"; }
mods() { echo "@@dkmsd modules"; cat /proc/modules; echo "@@dkmsd end"; }
step default
dkms install dkmsd_probe/1.0 -k "$K"
mods
step other-kernel
dkms install dkmsd_probe/1.0 -k "$OTHER" --modprobe-on-install
mods
step nodev
dkms install dkmsd_nodev/1.0 -k "$K" --modprobe-on-install
mods
step plain
dkms install dkmsd_plain/1.0 -k "$K" --modprobe-on-install
mods
step removed
rmmod dkmsd_probe
dkms uninstall dkmsd_probe/1.0 -k "$K"
mods
step option
dkms install dkmsd_probe/1.0 -k "$K" --modprobe-on-install
mods
step framework
rmmod dkmsd_probe
dkms uninstall dkmsd_probe/1.0 -k "$K"
echo 'modprobe_on_install="true"' > "$R/etc/dkms/framework.conf"
dkms install dkmsd_probe/1.0 -k "$K"
mods
step done
`

// vmSegment is an uncompressed cpio archive holding the init script, the
// static dkms, kmod's depmod (a link to the initrd's kmod) and the whole
// relocated root at its own path, so its absolute links hold.
func vmSegment(t *testing.T, root, other, dkms string) []byte {
	t.Helper()
	bin, err := os.ReadFile(dkms)
	if err != nil {
		t.Fatal(err)
	}
	recs := []cpio.Record{
		cpio.StaticFile("dkmsd-init", fmt.Sprintf(vmInit, root, other), 0o755),
		cpio.StaticFile("dkmsd/dkms", string(bin), 0o755),
		cpio.Symlink("usr/sbin/depmod", "/usr/bin/kmod"),
	}
	for _, d := range []string{"proc", "sys", "dev", "run"} {
		recs = append(recs, cpio.Directory(d, 0o755))
	}
	rec := cpio.NewRecorder()
	err = filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		r, err := rec.GetRecord(p)
		if err != nil {
			return err
		}
		r.Name = cpio.Normalize(p)
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bootWithInit boots kernel with the machine's initrd and segment appended
// (on a 4-byte boundary, where the kernel looks for the next archive),
// running /dkmsd-init; it returns the serial console.
func bootWithInit(t *testing.T, kernel string, segment []byte) string {
	t.Helper()
	base, err := os.ReadFile("/boot/initrd.img-" + kernel)
	if err != nil {
		t.Fatal(err)
	}
	img := append(base, make([]byte, (4-len(base)%4)%4)...)
	img = append(img, segment...)
	path := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "1024", "-nographic", "-no-reboot",
		"-kernel", "/boot/vmlinuz-"+kernel, "-initrd", path,
		"-append", "console=ttyS0 panic=-1 ignore_loglevel rdinit=/dkmsd-init")
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	log := strings.ReplaceAll(out.String(), "\r", "")
	if err != nil {
		t.Fatalf("qemu: %v after %s\n%s", err, time.Since(start).Round(time.Second), consoleTail(log, 60))
	}
	t.Logf("booted and ran the steps in %s", time.Since(start).Round(100*time.Millisecond))
	return log
}

// vmStep is what one step of vmInit showed.
type vmStep struct {
	text    string // everything between its marker and the next
	exit    string // the last dkms exit status
	modules string // /proc/modules after it
}

var stepRE = regexp.MustCompile(`(?m)^@@dkmsd step (\S+)$`)

// vmSteps splits the console at the step markers.
func vmSteps(t *testing.T, log string) map[string]vmStep {
	t.Helper()
	steps := map[string]vmStep{}
	idx := stepRE.FindAllStringSubmatchIndex(log, -1)
	for i, m := range idx {
		end := len(log)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		s := vmStep{text: log[m[1]:end]}
		if all := regexp.MustCompile(`(?m)^@@dkmsd exit (\d+)$`).FindAllStringSubmatch(s.text, -1); len(all) > 0 {
			s.exit = all[len(all)-1][1]
		}
		if _, rest, ok := strings.Cut(s.text, "@@dkmsd modules\n"); ok {
			s.modules, _, _ = strings.Cut(rest, "@@dkmsd end")
		}
		steps[log[m[2]:m[3]]] = s
	}
	if _, ok := steps["done"]; !ok {
		t.Fatalf("the init script did not get to its end:\n%s", consoleTail(log, 80))
	}
	return steps
}

// loaded reports whether /proc/modules, as a step listed it, has module.
func (s vmStep) loaded(module string) bool {
	return regexp.MustCompile(`(?m)^` + module + ` \d+ `).MatchString(s.modules)
}

// TestBootQEMUModprobeOnInstall proves modprobe_on_install on a real
// kernel: the cloud kernel boots under qemu into an initramfs holding a
// relocated root where the host built three modules for it (build cannot
// run there: no compiler) and a static dkms, which installs them step by
// step. As in dkms, what gets loaded is what the machine's devices ask
// for: dkmsd_probe (an alias of the host bridge) loads once installed
// with --modprobe-on-install or modprobe_on_install="true", not without
// them, and not when the install is for another kernel; dkmsd_plain (no
// alias) never loads; dkmsd_nodev (an alias of the ISA bridge, an init
// that fails) is tried and fails without failing the install.
func TestBootQEMUModprobeOnInstall(t *testing.T) {
	// Not t.Parallel: timing-bound (docs/testing.md, "Using both cores").
	bootKernel := requireBootKernel(t)
	testkit.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	other := ""
	for _, k := range testkit.Kernels(t, 2) {
		if k != bootKernel {
			other = k
		}
	}
	root, err := filepath.EvalSymlinks(testkit.NewRoot(t, bootKernel, other))
	if err != nil {
		t.Fatal(err)
	}
	alias := func(a string) string { return "MODULE_ALIAS(\"" + a + "\");\n" }
	testkit.WriteModule(t, filepath.Join(root, "usr/src/dkmsd_probe-1.0"), bootModule(t, "dkmsd_probe", alias(hostBridgeAlias), ""))
	testkit.WriteModule(t, filepath.Join(root, "usr/src/dkmsd_nodev-1.0"), bootModule(t, "dkmsd_nodev", alias(isaBridgeAlias),
		"\tpr_info(\"dkmsd_nodev: no device for me\\n\");\n\treturn -ENODEV;"))
	testkit.WriteModule(t, filepath.Join(root, "usr/src/dkmsd_plain-1.0"), bootModule(t, "dkmsd_plain", "", ""))
	copyBootFile(t, "/etc/os-release", filepath.Join(root, "etc/os-release"))

	bin := testkit.Binary(t, "dkms")
	dkmsOK(t, bin, "--root", root, "build", "dkmsd_probe/1.0", "-k", bootKernel, "-k", other)
	dkmsOK(t, bin, "--root", root, "build", "dkmsd_nodev/1.0", "-k", bootKernel)
	dkmsOK(t, bin, "--root", root, "build", "dkmsd_plain/1.0", "-k", bootKernel)

	steps := vmSteps(t, bootWithInit(t, bootKernel, vmSegment(t, root, other, staticDkms(t))))
	for _, c := range []struct {
		step                   string
		probe, nodev, plain    bool
		wantOnConsole, comment string
	}{
		{step: "default", comment: "installed without --modprobe-on-install"},
		{step: "other-kernel", comment: "installed for another kernel than the running one"},
		{step: "nodev", probe: true, wantOnConsole: "dkmsd_nodev: no device for me", comment: "modprobe loads every module a device asks for"},
		{step: "plain", probe: true, comment: "a module no device asks for is not loaded"},
		{step: "removed", comment: "rmmod and dkms uninstall"},
		{step: "option", probe: true, comment: "--modprobe-on-install"},
		{step: "framework", probe: true, comment: "modprobe_on_install in framework.conf"},
	} {
		s := steps[c.step]
		if s.exit != "0" {
			t.Errorf("step %s (%s): dkms exit %q, want 0:\n%s", c.step, c.comment, s.exit, s.text)
		}
		for m, want := range map[string]bool{"dkmsd_probe": c.probe, "dkmsd_nodev": c.nodev, "dkmsd_plain": c.plain} {
			if s.loaded(m) != want {
				t.Errorf("step %s (%s): %s loaded = %v, want %v; /proc/modules:\n%s\nstep output:\n%s", c.step, c.comment, m, !want, want, s.modules, s.text)
			}
		}
		if c.wantOnConsole != "" && !strings.Contains(s.text, c.wantOnConsole) {
			t.Errorf("step %s (%s): no %q on the console (modprobe did not try the module):\n%s", c.step, c.comment, c.wantOnConsole, s.text)
		}
	}
}
