package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestKernelInstallDracutOrder runs systemd's real kernel-install add for
// the cloud kernel with the plugins of a system whose initrd dracut makes
// (layout=bls, kernel-install's staging area), in the order kernel-install
// sorts them by name: dkmsd's dist/kernel-install/40-dkmsd.install
// (calling the dkmsd-kernel-install built here, on a relocated root whose
// lib/modules/<k> is a copy of the machine's), a 50-dracut.install, and
// systemd's own 90-loaderentry.install, which installs the staged initrd
// in the boot entry. The 50-dracut.install is a stand-in for dracut's own
// plugin, which Debian's dracut-core does not ship: like it, for layout=bls
// it runs the real dracut into the staging area, and reads dkmsd's real
// drop-in (dist/dracut/50-dkmsd.conf, pointed at the relocated root).
//
// dkmsd's plugin must run before dracut's: it builds and installs
// dkmsd_hello, which dracut then puts in the initrd it makes, asked to by
// dkmsd's drop-in (add_drivers, and force_drivers: it loads early). Were
// dkmsd's plugin after dracut's, the image would lack the module. The
// initrd installed in the boot entry holds it.
func TestKernelInstallDracutOrder(t *testing.T) {
	bootKernel := requireBootKernel(t)
	testkit.RequireTool(t, "kernel-install", "systemd")
	testkit.RequireTool(t, "dracut", "dracut-core")
	testkit.RequireTool(t, "zstd", "zstd")
	loaderEntry := "/usr/lib/kernel/install.d/90-loaderentry.install"
	if _, err := os.Stat(loaderEntry); err != nil {
		testkit.Missing(t, loaderEntry+" (systemd)")
	}
	bin := testkit.Binary(t, "dkms")
	plugin := testkit.Binary(t, "dkmsd-kernel-install")
	root := bootRoot(t, bootKernel)
	kdir := filepath.Join(root, "lib/modules", bootKernel)
	// dracut takes every module from the root's tree (--kmoddir): the
	// machine's modules, copied, and what dkmsd installs there.
	src := "/lib/modules/" + bootKernel
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "kernel" || strings.HasPrefix(e.Name(), "modules.") {
			if out, err := exec.Command("cp", "-a", filepath.Join(src, e.Name()), kdir).CombinedOutput(); err != nil {
				t.Fatalf("copy %s: %v\n%s", e.Name(), err, out)
			}
		}
	}
	confd := filepath.Join(root, "etc/dracut.conf.d")
	if err := os.MkdirAll(confd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confd, "50-hello.conf"), []byte("force_drivers+=\" dkmsd_hello \"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dkmsOK(t, bin, "--root", root, "add", "dkmsd_hello/1.0")

	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The installed files, with the paths they call pointed at this
	// test's binaries and root.
	relocate := func(rel, from, to string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(), rel))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if !strings.Contains(text, from) {
			t.Fatalf("%s does not call %s", rel, from)
		}
		return strings.ReplaceAll(text, from, to)
	}
	dkmsWrapper := write("bin/dkms", "#!/bin/sh\nexec "+bin+" --root "+root+" \"$@\"\n", 0o755)
	write("dracut.conf.d/50-dkmsd.conf", relocate("dist/dracut/50-dkmsd.conf", "/usr/libexec/dkmsd/dkms", dkmsWrapper), 0o644)
	write("dracut.conf", "", 0o644)
	plugins := map[string]string{
		"40-dkmsd.install": write("install.d/40-dkmsd.install",
			relocate("dist/kernel-install/40-dkmsd.install", "/usr/libexec/dkmsd/dkmsd-kernel-install", plugin), 0o755),
		"50-dracut.install": write("install.d/50-dracut.install", `#!/bin/sh
# A stand-in for dracut's 50-dracut.install: with layout=bls, the real
# dracut makes the initrd in kernel-install's staging area, unless initrds
# were given.
[ "$1" = add ] || exit 0
[ "$KERNEL_INSTALL_LAYOUT" = bls ] && [ -n "$KERNEL_INSTALL_STAGING_AREA" ] || exit 0
[ $# -gt 4 ] && exit 0
echo "dracut for $2"
exec dracut --no-hostonly --conf `+filepath.Join(dir, "dracut.conf")+` --confdir `+filepath.Join(dir, "dracut.conf.d")+` \
	--kmoddir `+kdir+` -m "base kernel-modules" --compress "zstd -q -3 -T0" \
	--kver "$2" --force "$KERNEL_INSTALL_STAGING_AREA/initrd"
`, 0o755),
		"90-loaderentry.install": loaderEntry,
	}
	// kernel-install's own order: by file name, whatever the directory.
	var names []string
	for n := range plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	var list []string
	for _, n := range names {
		list = append(list, plugins[n])
	}
	confRoot := filepath.Join(dir, "kernel")
	write("kernel/install.conf", "layout=bls\n", 0o644)
	write("kernel/cmdline", "root=/dev/dkmsd-test ro\n", 0o644)
	bootRootDir := filepath.Join(dir, "boot-root")
	if err := os.MkdirAll(bootRootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	const machineID = "d1c0ffee0d15ea5e0dd5ca1ab1e0dd5d"

	cmd := exec.Command("kernel-install", "--verbose", "add", bootKernel, "/boot/vmlinuz-"+bootKernel)
	cmd.Env = baseEnv("KERNEL_INSTALL_PLUGINS="+strings.Join(list, " "), "KERNEL_INSTALL_CONF_ROOT="+confRoot,
		"BOOT_ROOT="+bootRootDir, "MACHINE_ID="+machineID, "DKMSD_ROOT="+root, "TMPDIR="+t.TempDir())
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("kernel-install add: %s", time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("kernel-install add: %v\n%s", err, out)
	}
	// The plugins ran, dkmsd's first, each with kernel-install's
	// arguments.
	at := -1
	for _, n := range names {
		i := strings.Index(string(out), "+"+plugins[n]+" add "+bootKernel+" ")
		if i < 0 || i < at {
			t.Errorf("kernel-install did not run %s after the plugins before it:\n%s", n, out)
		}
		at = i
	}
	if _, err := os.Stat(filepath.Join(kdir, "updates/dkms/dkmsd_hello.ko")); err != nil {
		t.Errorf("40-dkmsd.install did not install dkmsd_hello: %v\n%s", err, out)
	}
	img, err := initrd.Read(filepath.Join(bootRootDir, machineID, bootKernel, "initrd"))
	if err != nil {
		t.Fatalf("the boot entry's initrd: %v\n%s", err, out)
	}
	if n := helloInImage(t, img, bootKernel); n != "usr/lib/modules/"+bootKernel+"/updates/dkms/dkmsd_hello.ko" {
		t.Errorf("dkmsd_hello in the boot entry's initrd: %q, want usr/lib/modules/%s/updates/dkms/dkmsd_hello.ko\n%s", n, bootKernel, out)
	}
	if pre, _ := img.Content("etc/cmdline.d/20-force_drivers.conf"); !strings.Contains(string(pre), "rd.driver.pre=dkmsd_hello") {
		t.Errorf("the boot entry's initrd does not load dkmsd_hello early: etc/cmdline.d/20-force_drivers.conf = %q", pre)
	}
}
