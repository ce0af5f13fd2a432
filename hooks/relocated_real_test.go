package hooks_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// wantFile checks that path exists, or that it does not.
func wantFile(t *testing.T, path string, exists bool) {
	t.Helper()
	_, err := os.Stat(path)
	if exists && err != nil {
		t.Errorf("%s: %v", path, err)
	}
	if !exists && err == nil {
		t.Errorf("%s exists", path)
	}
}

// relocatedHookRoot is a root (DKMSD_ROOT) holding the probe module,
// added, and kernel's module dir; with headers, its build link points at
// the machine's real headers.
func relocatedHookRoot(t *testing.T, kernel string, headers bool) (root, counter, bin string) {
	t.Helper()
	testkit.RequireRoot(t)
	bin = testkit.Binaries(t)
	root = testkit.NewRoot(t)
	if err := os.MkdirAll(filepath.Join(root, "lib/modules", kernel), 0o755); err != nil {
		t.Fatal(err)
	}
	if headers {
		target, err := filepath.EvalSymlinks("/lib/modules/" + kernel + "/build")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, "lib/modules", kernel, "build")); err != nil {
			t.Fatal(err)
		}
	}
	counter = filepath.Join(t.TempDir(), "builds")
	writeProbeModule(t, filepath.Join(root, "usr/src"), counter)
	testkit.MustRun(t, filepath.Join(bin, "dkms"), "--root", root, "add", "-m", probeModule.name, "-v", probeModule.version)
	return root, counter, bin
}

// TestRealAptPreinstUpgradeRebuilds is an in-place upgrade of a kernel
// package (same version, new build): its preinst.d marks the kernel, the
// module stays installed meanwhile, and the postinst that follows rebuilds
// it although the hook had already done this kernel — only if the image
// changed; a reinstall of the same revision builds nothing.
func TestRealAptPreinstUpgradeRebuilds(t *testing.T) {
	testkit.RequireTool(t, "make", "make")
	kernel := testkit.Kernels(t, 1)[0]
	root, counter, bin := relocatedHookRoot(t, kernel, true)
	apt := filepath.Join(bin, "dkmsd-apt")
	// The image the package manager replaces: a copy, so that the test can
	// change it as a new package revision would.
	image := filepath.Join(t.TempDir(), "vmlinuz-"+kernel)
	if err := os.WriteFile(image, []byte("kernel image, revision 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := func(params string) []string {
		return []string{"DKMSD_ROOT=" + root, "DKMSD_APT_HOOK=off", "DPKG_MAINTSCRIPT_PACKAGE=linux-image-" + kernel, "DEB_MAINT_PARAMS=" + params}
	}
	hook := func(phase, params string) testkit.Result {
		t.Helper()
		r := testkit.Cmd{Argv: []string{apt, phase, kernel, image}, Env: env(params)}.Run(t)
		if r.Code != 0 {
			t.Fatalf("%s %s: exit %d\n%s", phase, params, r.Code, r.Out)
		}
		return r
	}
	mark := filepath.Join(root, "var/lib/dkms/.dkmsd/hooks/reinstall", kernel)
	hook("preinst", "install") // a first install: nothing is built, nothing to mark
	wantFile(t, mark, false)
	hook("postinst", "configure ")
	hook("postinst", "configure ") // done for this kernel and tree: no build
	wantBuilds(t, counter, kernel)
	target, _ := filepath.EvalSymlinks("/lib/modules/" + kernel + "/build")

	// apt-get install --reinstall: the same package revision puts the
	// same image back; what is built for it stays.
	r := hook("preinst", "upgrade 6.1.999-1")
	if want := "dkmsd: kernel " + kernel + " is being reinstalled: its DKMS modules will be rebuilt when it is configured, if its image changed."; !strings.Contains(r.Out, want) {
		t.Errorf("preinst upgrade printed %q, want %q", r.Out, want)
	}
	wantFile(t, mark, true)
	// dpkg may configure the headers first: their header_postinst hook is
	// given no image, and compares the one the preinst named.
	r = testkit.Cmd{Argv: []string{apt, "header_postinst", kernel}, Env: []string{"DKMSD_ROOT=" + root, "DKMSD_APT_HOOK=off", "DPKG_MAINTSCRIPT_PACKAGE=linux-headers-" + kernel}}.Run(t)
	if want := "dkmsd: kernel " + kernel + " was reinstalled with the same image: its DKMS modules are kept."; r.Code != 0 || !strings.Contains(r.Out, want) {
		t.Errorf("header_postinst after a same-image reinstall: exit %d, printed %q, want %q", r.Code, r.Out, want)
	}
	hook("postinst", "configure 6.1.999-1")
	wantBuilds(t, counter, kernel)
	wantFile(t, mark, false)

	// A new package revision at the same ABI: the image changes between
	// the preinst and the postinst, and the modules are rebuilt.
	hook("preinst", "upgrade 6.1.999-1")
	wantFile(t, mark, true)
	// Unlike dkms's kernel_preinst, nothing is removed before the new
	// image is even unpacked.
	wantInstalled(t, filepath.Join(bin, "dkms"), []string{"--root", root}, filepath.Join(root, "lib/modules"), kernel, headersRelease(t, target), []testModule{probeModule})
	if err := os.WriteFile(image, []byte("kernel image, revision 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hook("postinst", "configure 6.1.999-1")
	wantBuilds(t, counter, kernel, kernel)
	wantInstalled(t, filepath.Join(bin, "dkms"), []string{"--root", root}, filepath.Join(root, "lib/modules"), kernel, headersRelease(t, target), []testModule{probeModule})
	wantFile(t, mark, false)
}

// TestHookNoHeadersNamesPackage: a kernel arriving without its headers
// is put off until they come, and the hook names the package that holds
// them as the package manager that called it spells it.
func TestHookNoHeadersNamesPackage(t *testing.T) {
	for _, tc := range []struct {
		name, kernel string
		argv         []string
		pkg          string
	}{
		{"dnf", "6.5.6-300.fc39.x86_64", []string{"dkmsd-dnf", "--kernel", "6.5.6-300.fc39.x86_64"}, "kernel-devel-6.5.6-300.fc39.x86_64"},
		{"apt", "6.1.0-99-amd64", []string{"dkmsd-apt", "header_postinst", "6.1.0-99-amd64"}, "linux-headers-6.1.0-99-amd64"},
	} {
		root, counter, bin := relocatedHookRoot(t, tc.kernel, false)
		argv := append([]string{filepath.Join(bin, tc.argv[0])}, tc.argv[1:]...)
		r := testkit.Cmd{Argv: argv, Env: []string{"DKMSD_ROOT=" + root}}.Run(t)
		want := "dkmsd: the headers of kernel " + tc.kernel + " are not installed yet: install " + tc.pkg + " and its DKMS modules will be built then."
		if r.Code != 0 || !strings.Contains(r.Out, want) {
			t.Errorf("%s: exit %d, output %q; want exit 0 and %q", tc.name, r.Code, r.Out, want)
		}
		wantFile(t, filepath.Join(root, "var/lib/dkms/.dkmsd/hooks/pending", tc.kernel), true)
		wantBuilds(t, counter)
	}
}

// TestHookBusyTreeLeavesKernelPending: while another process holds the
// tree lock, a kernel hook waits only hook_lock_timeout, says who holds
// the lock and what it is doing, leaves the kernel pending and lets the
// package manager go on; the next dkms to take the lock builds the pending
// kernel's modules before it lets go.
func TestHookBusyTreeLeavesKernelPending(t *testing.T) {
	testkit.RequireTool(t, "make", "make")
	kernel := testkit.Kernels(t, 1)[0]
	root, counter, bin := relocatedHookRoot(t, kernel, true)
	if err := os.WriteFile(filepath.Join(root, "etc/dkms/framework.conf"), []byte("hook_lock_timeout=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lockPath := filepath.Join(root, "var/lib/dkms", lifecycle.LockFile)
	lock, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	holder := fmt.Sprintf("pid=%d\nsince=%s\ncommand=dkms build other/1.0\ndoing=build-started other/1.0 for %s (x86_64)\ndoing_since=%s\n",
		os.Getpid(), time.Now().Format(time.RFC3339), kernel, time.Now().Format(time.RFC3339))
	if _, err := lock.WriteAt([]byte(holder), 0); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "dkmsd-apt"), "postinst", kernel, "/boot/vmlinuz-"+kernel)
	cmd.Env = append(os.Environ(), "DKMSD_ROOT="+root, "DEB_MAINT_PARAMS=configure ")
	r, err := testkit.Exec(cmd)
	if err != nil || r.Code != 0 {
		t.Fatalf("postinst with the tree busy: %v, exit %d (killed after 30s: the bound of 2s was not kept)\n%s", err, r.Code, r.Out)
	}
	for _, want := range []string{
		fmt.Sprintf("Waiting for %s: process %d (dkms build other/1.0), holding it since ", lockPath, os.Getpid()),
		"last step: build-started other/1.0 for " + kernel + " (x86_64) at ",
		"dkmsd: the DKMS tree is busy: " + lockPath + " is held by process ",
		"Kernel " + kernel + " is marked pending: its DKMS modules will be built when that process is done, or by the next kernel hook.",
	} {
		if !strings.Contains(r.Out, want) {
			t.Errorf("postinst output lacks %q:\n%s", want, r.Out)
		}
	}
	wantFile(t, filepath.Join(root, "var/lib/dkms/.dkmsd/hooks/pending", kernel), true)
	wantBuilds(t, counter)

	// The holder lets go; the next dkms to take the lock (here one that
	// has nothing of its own to do) builds the pending kernel.
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	r = testkit.Cmd{Argv: []string{filepath.Join(bin, "dkms"), "--root", root, "uninstall", "dkmsd_nonexistent/0"}}.Run(t)
	if r.Code != 3 {
		t.Errorf("dkms uninstall of a module not in the tree: exit %d, want 3\n%s", r.Code, r.Out)
	}
	wantBuilds(t, counter, kernel)
	target, _ := filepath.EvalSymlinks("/lib/modules/" + kernel + "/build")
	wantInstalled(t, filepath.Join(bin, "dkms"), []string{"--root", root}, filepath.Join(root, "lib/modules"), kernel, headersRelease(t, target), []testModule{probeModule})
	wantFile(t, filepath.Join(root, "var/lib/dkms/.dkmsd/hooks/pending", kernel), false)
}
