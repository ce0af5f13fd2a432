//go:build systemtest

// These tests change the machine itself (kernel packages, /boot, the real
// DKMS tree), so they run in a step of their own, one package at a time:
// make test runs them with -tags systemtest -p 1.

package hooks_test

// End-to-end tests of the hooks through the real package managers, as
// root, on the machine's own trees: apt and dpkg installing and removing
// a real Debian kernel (the linux-image and linux-headers of a cloud
// kernel ABI that apt can install and the machine does not have, found at
// run time: testkit.InstallableKernel), systemd's kernel-install, and dnf 4 with
// post-transaction-actions in an --installroot. Each test restores what
// it changes: kernel packages it installed are purged, test modules are
// removed from the real tree, hook files are removed and Debian's dkms
// hooks put back; then testkit.GuardMachine puts back anything else under
// testkit.MachinePaths (depmod indexes, initrds, a generated MOK) and
// fails the test for what it cannot. A missing prerequisite fails under CI=true and skips
// otherwise. Run them alone:
//
//	go test -count=1 -run 'Real' -v -timeout 30m ./hooks

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// dpkgStates maps each package dpkg knows to its status abbreviation
// ("ii ", "rc ", "un "…).
func dpkgStates(t *testing.T) map[string]string {
	t.Helper()
	r := testkit.Run(t, "dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n")
	if r.Code != 0 {
		t.Fatalf("dpkg-query: exit %d: %s", r.Code, r.Stderr)
	}
	m := map[string]string{}
	for _, l := range strings.Split(r.Stdout, "\n") {
		if name, st, ok := strings.Cut(l, "\t"); ok {
			m[name] = st
		}
	}
	return m
}

func present(status string) bool {
	return status != "" && !strings.HasPrefix(status, "un") && !strings.HasPrefix(status, "pn")
}

// requireOldKernel returns a kernel that apt can install and the machine
// does not have (the test installs and removes it), with its image and
// headers packages; and guards the machine.
func requireOldKernel(t *testing.T) (kernel, image, headers string) {
	t.Helper()
	testkit.RequireTool(t, "apt-get", "apt")
	testkit.RequireTool(t, "update-initramfs", "initramfs-tools")
	testkit.GuardMachine(t, testkit.MachinePaths...)
	kernel = testkit.InstallableKernel(t)
	return kernel, "linux-image-" + kernel, "linux-headers-" + kernel
}

// aptFixture prepares a test that installs, with apt, a kernel the
// machine lacks (requireOldKernel: the machine guarded): dkmsd's hooks
// installed, the test modules added to the real tree, and what the test
// installs purged at the end, while the hooks are still there to see the
// kernel go.
func aptFixture(t *testing.T) (oldKernel, oldImage, oldHeaders string, hooks *realHooks, mods *realModules) {
	t.Helper()
	testkit.RequireRoot(t)
	oldKernel, oldImage, oldHeaders = requireOldKernel(t)
	hooks = installRealHooks(t)
	mods = addRealModules(t, hooks.dkms)
	purgeNewPackages(t)
	return oldKernel, oldImage, oldHeaders, hooks, mods
}

// purgeNewPackages purges, at cleanup, every package the test installed
// (present now, absent before). Register it after the hooks are installed
// so the hooks see the kernel go.
func purgeNewPackages(t *testing.T) {
	t.Helper()
	before := dpkgStates(t)
	t.Cleanup(func() {
		var purge []string
		for name, st := range dpkgStates(t) {
			if present(st) && !present(before[name]) {
				purge = append(purge, name)
			}
		}
		if len(purge) == 0 {
			return
		}
		slices.Sort(purge)
		if r := testkit.AptGet(t, append([]string{"purge"}, purge...)...); r.Code != 0 {
			t.Errorf("cleanup: apt-get purge %v: exit %d\n%s", purge, r.Code, r.Out)
		}
	})
}

// lastTransaction reads the summary the hooks recorded last.
func lastTransaction(t *testing.T, dkmsTree string) lifecycle.Transaction {
	t.Helper()
	var tr lifecycle.Transaction
	b, err := os.ReadFile(filepath.Join(dkmsTree, ".dkmsd", "last-transaction.json"))
	if err != nil {
		t.Fatalf("last transaction: %v", err)
	}
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatal(err)
	}
	return tr
}

// wantOneSummary checks the transaction the apt Post-Invoke reported:
// each test module installed once, for kernel.
func wantOneSummary(t *testing.T, dkmsTree, kernel string, mods []testModule) {
	t.Helper()
	tr := lastTransaction(t, dkmsTree)
	if tr.Hook != "apt-post-invoke" || tr.Installed != len(mods) || tr.Failed != 0 {
		t.Errorf("last transaction: hook %q, %s; want apt-post-invoke, %d installed, 0 failed (lines %q)", tr.Hook, tr.Summary, len(mods), tr.Lines)
	}
	for _, m := range mods {
		if n := strings.Count(strings.Join(tr.Lines, "\n"), " "+m.name); n != 1 {
			t.Errorf("last transaction names %s %d times, want once: %q", m.name, n, tr.Lines)
		}
	}
	if len(tr.Lines) == 0 || !strings.HasPrefix(tr.Lines[0], "Autoinstall on "+kernel+" succeeded for module(s) ") {
		t.Errorf("last transaction lines %q", tr.Lines)
	}
}

func hookState(kind, kernel string) string {
	return filepath.Join("/var/lib/dkms/.dkmsd/hooks", kind, kernel)
}

// TestRealAptKernelImageAndHeaders installs a kernel's image and headers
// in one apt run with dkmsd's hooks installed: dpkg fires
// header_postinst.d, postinst.d and the apt Post-Invoke, and the test
// modules are built once each, installed for the kernel (vermagic), the
// REMAKE_INITRD one is in the initrd initramfs-tools made (through
// dkmsd's initramfs-tools hook), and one summary is reported. A
// reinstall fires the hooks again and builds nothing. Removing the
// packages removes the modules from the tree.
func TestRealAptKernelImageAndHeaders(t *testing.T) {
	oldKernel, oldImage, oldHeaders, hooks, mods := aptFixture(t)
	initrdImg := "/boot/initrd.img-" + oldKernel

	r := testkit.AptGet(t, "install", oldImage, oldHeaders)
	if r.Code != 0 {
		t.Fatalf("apt-get install %s %s: exit %d\n%s", oldImage, oldHeaders, r.Code, r.Out)
	}
	t.Logf("apt-get install output:\n%s", r.Out)
	wantInstalled(t, hooks.dkms, nil, "/lib/modules", oldKernel, oldKernel, realTestModules)
	wantBuilds(t, mods.counter, oldKernel)
	wantInitrdModule(t, initrdImg, oldKernel)
	wantOneSummary(t, "/var/lib/dkms", oldKernel, realTestModules)
	wantFile(t, hookState("done", oldKernel), true)
	wantFile(t, hookState("pending", oldKernel), false)
	if strings.Contains(r.Out, "dkms_autoinstaller") || strings.Contains(r.Out, "/etc/kernel/postinst.d/dkms:") {
		t.Errorf("Debian's dkms hooks ran:\n%s", r.Out)
	}

	t.Run("reinstall", func(t *testing.T) {
		resetBuilds(t, mods.counter)
		r := testkit.AptGet(t, "install", "--reinstall", oldImage, oldHeaders)
		if r.Code != 0 {
			t.Fatalf("apt-get install --reinstall: exit %d\n%s", r.Code, r.Out)
		}
		wantBuilds(t, mods.counter)
		wantInstalled(t, hooks.dkms, nil, "/lib/modules", oldKernel, oldKernel, realTestModules)
		// update-initramfs made the initrd again: dkmsd's initramfs-tools
		// hook kept the module in it.
		wantInitrdModule(t, initrdImg, oldKernel)
		if t.Failed() {
			t.Logf("apt-get install --reinstall output:\n%s", r.Out)
		}
	})

	t.Run("remove", func(t *testing.T) {
		r := testkit.AptGet(t, "remove", oldImage, oldHeaders)
		if r.Code != 0 {
			t.Fatalf("apt-get remove: exit %d\n%s", r.Code, r.Out)
		}
		wantRemoved(t, hooks.dkms, nil, "/", oldKernel, realTestModules)
		wantFile(t, hookState("done", oldKernel), false)
		if t.Failed() {
			t.Logf("apt-get remove output:\n%s", r.Out)
		}
	})
}

// TestRealAptHeadersAfterImage installs the image alone (the hook says
// the headers are missing, exits 0, apt succeeds, nothing is built), then
// the headers: header_postinst builds the modules, and since
// initramfs-tools made the initrd already, dkmsd adds the REMAKE_INITRD
// module to it itself.
func TestRealAptHeadersAfterImage(t *testing.T) {
	oldKernel, oldImage, oldHeaders, hooks, mods := aptFixture(t)
	initrdImg := "/boot/initrd.img-" + oldKernel

	r := testkit.AptGet(t, "install", oldImage)
	if r.Code != 0 {
		t.Fatalf("apt-get install %s: exit %d\n%s", oldImage, r.Code, r.Out)
	}
	t.Logf("apt-get install %s output:\n%s", oldImage, r.Out)
	if want := "the headers of kernel " + oldKernel + " are not installed yet"; !strings.Contains(r.Out, want) {
		t.Errorf("apt's output does not say %q", want)
	}
	wantBuilds(t, mods.counter)
	for _, l := range testkit.StatusLines(t, hooks.dkms, nil) {
		if strings.Contains(l, oldKernel) {
			t.Errorf("status after the image alone: %q", l)
		}
	}
	wantFile(t, hookState("pending", oldKernel), true)
	if vm := initrdModule(t, initrdImg, oldKernel, probeModule.kos[0]); vm != "" {
		t.Errorf("%s holds %s before the headers came", initrdImg, probeModule.kos[0])
	}

	r = testkit.AptGet(t, "install", oldHeaders)
	if r.Code != 0 {
		t.Fatalf("apt-get install %s: exit %d\n%s", oldHeaders, r.Code, r.Out)
	}
	t.Logf("apt-get install %s output:\n%s", oldHeaders, r.Out)
	wantBuilds(t, mods.counter, oldKernel)
	wantInstalled(t, hooks.dkms, nil, "/lib/modules", oldKernel, oldKernel, realTestModules)
	if want := "Regenerated " + initrdImg; !strings.Contains(r.Out, want) {
		t.Errorf("apt's output does not say %q", want)
	}
	wantInitrdModule(t, initrdImg, oldKernel)
	wantOneSummary(t, "/var/lib/dkms", oldKernel, realTestModules)
	wantFile(t, hookState("pending", oldKernel), false)

	r = testkit.AptGet(t, "remove", oldImage, oldHeaders)
	if r.Code != 0 {
		t.Fatalf("apt-get remove: exit %d\n%s", r.Code, r.Out)
	}
	wantRemoved(t, hooks.dkms, nil, "/", oldKernel, realTestModules)
}

// installedKernel is a kernel of this machine with both its image in /boot
// and its headers.
func installedKernel(t *testing.T) string {
	t.Helper()
	heads, _ := filepath.Glob("/lib/modules/*/build/include")
	slices.Sort(heads)
	for _, h := range heads {
		k := filepath.Base(filepath.Dir(filepath.Dir(h)))
		if _, err := os.Stat("/boot/vmlinuz-" + k); err == nil {
			return k
		}
	}
	testkit.Missing(t, "a kernel with both its image and headers (apt-get install -y linux-image-cloud-amd64 linux-headers-cloud-amd64)")
	return ""
}

// realKernelFixture prepares a test on an installed kernel of the
// machine: the machine guarded (its initrd and depmod indexes are put
// back), the hooks installed, the test modules added to the real tree.
func realKernelFixture(t *testing.T) (kernel string, hooks *realHooks, mods *realModules) {
	t.Helper()
	testkit.RequireRoot(t)
	testkit.GuardMachine(t, testkit.MachinePaths...)
	kernel = installedKernel(t)
	for _, l := range statusLinesOrNone(t) {
		if strings.Contains(l, ", "+kernel+", ") {
			t.Fatalf("a DKMS module is already built for %s (%q): the test removes every module for it", kernel, l)
		}
	}
	wantUpdatesDirGone(t, kernel)
	hooks = installRealHooks(t)
	mods = addRealModules(t, hooks.dkms)
	return kernel, hooks, mods
}

// statusLinesOrNone is Debian's dkms status before dkmsd is installed
// (none when dkms is absent).
func statusLinesOrNone(t *testing.T) []string {
	out, err := exec.Command("dkms", "status").Output()
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// kernelInstallPlugin is where make install-hooks puts the plugin.
const kernelInstallPlugin = "/usr/lib/kernel/install.d/40-dkmsd.install"

// kernelInstall runs systemd's kernel-install with only dkmsd's plugin.
func kernelInstall(t *testing.T, args ...string) testkit.Result {
	t.Helper()
	return testkit.Cmd{Argv: append([]string{"kernel-install", "--verbose"}, args...), Env: []string{"KERNEL_INSTALL_PLUGINS=" + kernelInstallPlugin}}.Run(t)
}

// TestRealKernelInstallAddRemove runs systemd's kernel-install add and
// remove with 40-dkmsd.install as the only plugin, on a kernel of the
// machine: add builds and installs the test modules for it and puts the
// REMAKE_INITRD one into its initrd (no initrd generator is configured on
// Debian, so the image in /boot is the one to update); a second add does
// nothing; remove uninstalls and unbuilds them. Both exit 0.
func TestRealKernelInstallAddRemove(t *testing.T) {
	testkit.RequireTool(t, "kernel-install", "systemd")
	kernel, hooks, mods := realKernelFixture(t)

	r := kernelInstall(t, "add", kernel, "/boot/vmlinuz-"+kernel)
	t.Logf("kernel-install add:\n%s", r.Out)
	if r.Code != 0 {
		t.Fatalf("kernel-install add: exit %d", r.Code)
	}
	if want := "+" + kernelInstallPlugin + " add " + kernel; !strings.Contains(r.Out, want) {
		t.Errorf("kernel-install did not run the plugin (%q)", want)
	}
	wantInstalled(t, hooks.dkms, nil, "/lib/modules", kernel, kernel, realTestModules)
	wantBuilds(t, mods.counter, kernel)
	if _, err := os.Stat("/boot/initrd.img-" + kernel); err == nil {
		wantInitrdModule(t, "/boot/initrd.img-"+kernel, kernel)
	}

	r = kernelInstall(t, "add", kernel, "/boot/vmlinuz-"+kernel)
	if r.Code != 0 {
		t.Fatalf("second kernel-install add: exit %d\n%s", r.Code, r.Out)
	}
	wantBuilds(t, mods.counter, kernel)

	r = kernelInstall(t, "remove", kernel)
	t.Logf("kernel-install remove:\n%s", r.Out)
	if r.Code != 0 {
		t.Fatalf("kernel-install remove: exit %d", r.Code)
	}
	wantRemoved(t, hooks.dkms, nil, "/", kernel, realTestModules)
}

// postInvokeCommand is the shell command of dist/apt/95dkmsd's
// DPkg::Post-Invoke, as installed.
func postInvokeCommand(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/etc/apt/apt.conf.d/95dkmsd")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "DPkg::Post-Invoke {")
	if !ok {
		t.Fatalf("no DPkg::Post-Invoke in 95dkmsd:\n%s", b)
	}
	start := strings.Index(rest, `"`)
	end := strings.LastIndex(rest, `";`)
	if start < 0 || end <= start {
		t.Fatalf("cannot read the Post-Invoke command:\n%s", b)
	}
	return rest[start+1 : end]
}

// TestRealHooksDoubleFiring runs, for one kernel of the machine, every
// hook a kernel installation may fire, each installed file called with its
// protocol's arguments and environment: the image's postinst.d (as dpkg,
// DEB_MAINT_PARAMS="configure "), the headers' header_postinst.d, the
// kernel-install plugin, and apt's Post-Invoke. Each module is built
// exactly once, every hook exits 0, and the Post-Invoke reports one
// summary with each module once.
func TestRealHooksDoubleFiring(t *testing.T) {
	testkit.RequireTool(t, "kernel-install", "systemd")
	kernel, hooks, mods := realKernelFixture(t)
	image := "/boot/vmlinuz-" + kernel
	dpkg := func(pkg string, more ...string) []string {
		return append([]string{"DPKG_MAINTSCRIPT_PACKAGE=" + pkg, "DPKG_MAINTSCRIPT_NAME=postinst"}, more...)
	}
	var all strings.Builder
	for _, step := range []struct {
		name string
		env  []string
		argv []string
	}{
		{"postinst.d", dpkg("linux-image-"+kernel, "DEB_MAINT_PARAMS=configure "), []string{"/etc/kernel/postinst.d/dkmsd", kernel, image}},
		{"header_postinst.d", dpkg("linux-headers-" + kernel), []string{"/etc/kernel/header_postinst.d/dkmsd", kernel}},
		{"kernel-install", []string{"KERNEL_INSTALL_PLUGINS=" + kernelInstallPlugin}, []string{"kernel-install", "add", kernel, image}},
		{"apt Post-Invoke", nil, []string{"/bin/sh", "-c", postInvokeCommand(t)}},
		// And once more, as a reconfigure would.
		{"postinst.d again", dpkg("linux-image-"+kernel, "DEB_MAINT_PARAMS=configure 6.1.0"), []string{"/etc/kernel/postinst.d/dkmsd", kernel, image}},
	} {
		r := testkit.Cmd{Argv: step.argv, Env: step.env}.Run(t)
		all.WriteString("=== " + step.name + "\n" + r.Out)
		if r.Code != 0 {
			t.Errorf("%s: exit %d\n%s", step.name, r.Code, r.Out)
		}
	}
	t.Logf("hook outputs:\n%s", all.String())
	wantBuilds(t, mods.counter, kernel)
	if n, want := strings.Count(all.String(), ", x86_64: installed in "), len(realTestModules); n != want {
		t.Errorf(`"<module>/<version>, <kernel>, x86_64: installed in …" printed %d times, want %d (one build per module)`, n, want)
	}
	wantInstalled(t, hooks.dkms, nil, "/lib/modules", kernel, kernel, realTestModules)
	tr := lastTransaction(t, "/var/lib/dkms")
	if tr.Hook != "apt-post-invoke" || tr.Installed != len(realTestModules) {
		t.Errorf("last transaction: hook %q, %s; want apt-post-invoke, %d installed (lines %q)", tr.Hook, tr.Summary, len(realTestModules), tr.Lines)
	}
}

// TestRealHeadersAptPendingFlush runs the Debian hooks as processes on a
// relocated root (DKMSD_ROOT) over the real headers: the image's
// postinst.d finds no headers and marks the kernel pending; the headers
// then appear without their header_postinst.d running (as with a headers
// package that has no hook), and the apt Post-Invoke builds the module
// and reports it once.
func TestRealHeadersAptPendingFlush(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "make", "make")
	kernel := testkit.Kernels(t, 1)[0]
	bin := testkit.Binaries(t)
	root := testkit.NewRoot(t) // no kernel: no headers yet
	if err := os.MkdirAll(filepath.Join(root, "lib/modules", kernel), 0o755); err != nil {
		t.Fatal(err)
	}
	counter := filepath.Join(t.TempDir(), "builds")
	writeProbeModule(t, filepath.Join(root, "usr/src"), counter)
	testkit.MustRun(t, filepath.Join(bin, "dkms"), "--root", root, "add", "-m", probeModule.name, "-v", probeModule.version)
	hookEnv := []string{"DKMSD_ROOT=" + root, "DPKG_MAINTSCRIPT_PACKAGE=linux-image-" + kernel, "DEB_MAINT_PARAMS=configure "}

	r := testkit.Cmd{Argv: []string{filepath.Join(bin, "dkmsd-apt"), "postinst", kernel, "/boot/vmlinuz-" + kernel}, Env: hookEnv}.Run(t)
	if r.Code != 0 || !strings.Contains(r.Out, "are not installed yet") {
		t.Fatalf("postinst without headers: exit %d\n%s", r.Code, r.Out)
	}
	pending := filepath.Join(root, "var/lib/dkms/.dkmsd/hooks/pending", kernel)
	wantFile(t, pending, true)

	target, err := filepath.EvalSymlinks("/lib/modules/" + kernel + "/build")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(root, "lib/modules", kernel, "build")); err != nil {
		t.Fatal(err)
	}
	r = testkit.Cmd{Argv: []string{filepath.Join(bin, "dkmsd-apt"), "post-invoke"}, Env: []string{"DKMSD_ROOT=" + root}}.Run(t)
	if r.Code != 0 {
		t.Fatalf("post-invoke: exit %d\n%s", r.Code, r.Out)
	}
	wantBuilds(t, counter, kernel)
	wantInstalled(t, filepath.Join(bin, "dkms"), []string{"--root", root}, filepath.Join(root, "lib/modules"), kernel, headersRelease(t, target), []testModule{probeModule})
	wantFile(t, pending, false)
	wantOneSummary(t, filepath.Join(root, "var/lib/dkms"), kernel, []testModule{probeModule})
	if t.Failed() {
		t.Logf("post-invoke output:\n%s", r.Out)
	}
}
