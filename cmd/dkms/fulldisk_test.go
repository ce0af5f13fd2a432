package main

// Full disks and read-only trees: tmpfs mounts (tiny, filled, or remounted
// read-only) over one tree of a relocated root. They need root (mount);
// every mount is undone when the test ends.

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// mountTmpfs mounts a tmpfs of size (mount's size= option) on dir,
// unmounted when the test ends.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	testkit.RequireTool(t, "mount", "mount")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		testkit.Missing(t, "mounting a tmpfs (root with CAP_SYS_ADMIN): "+strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
}

// remount changes the options of the mount on dir (ro, rw).
func remount(t *testing.T, dir, opts string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,"+opts, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -o remount,%s %s: %v: %s", opts, dir, err, out)
	}
}

// tmpfsKernelDir mounts a tmpfs of size as <root>/lib/modules/<k>, with
// the build link to the headers that NewRoot had put there.
func tmpfsKernelDir(t *testing.T, b *batchRoot, k, size string) string {
	t.Helper()
	dir := b.path("lib/modules", k)
	headers, err := os.Readlink(filepath.Join(dir, "build"))
	if err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, dir, size)
	if err := os.Symlink(headers, filepath.Join(dir, "build")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fillTo writes <dir>/.fill so that at most leave bytes stay free on
// dir's file system (leave 0: full).
func fillTo(t *testing.T, dir string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, ".fill"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for i := range chunk {
		chunk[i] = 0xa5
	}
	for freeBytes(t, dir) > leave {
		n := min(int64(len(chunk)), freeBytes(t, dir)-leave)
		if _, err := f.Write(chunk[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	if got := freeBytes(t, dir); got > leave {
		t.Fatalf("%s has %d bytes free after filling, want at most %d", dir, got, leave)
	}
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// treeState is what must not change when a command is refused: every
// path of the install tree, the boot dir and the dkms tree (less the lock
// file and dkmsd's own state dir) with its mode and content, and dkms
// status.
type treeState struct {
	files  map[string]string
	status []string
}

func (b *batchRoot) state(t *testing.T) treeState {
	t.Helper()
	files := map[string]string{}
	for _, tr := range []string{"var/lib/dkms", "lib/modules", "boot"} {
		for p, d := range contentDigests(t, b.path(tr)) {
			if tr == "var/lib/dkms" && (p == ".dkmsd.lock" || strings.HasPrefix(p, ".dkmsd/")) {
				continue
			}
			files[tr+"/"+p] = d
		}
	}
	return treeState{files: files, status: b.status(t)}
}

// sameState fails the test where the trees or the status differ from
// before, and when an intent or a temporary file was left.
func (b *batchRoot) sameState(t *testing.T, what string, before treeState) {
	t.Helper()
	after := b.state(t)
	var changed, dirs []string
	for _, d := range diffDigests(before.files, after.files) {
		// An empty directory made on the way is not worth a failure.
		if p, ok := strings.CutPrefix(d, "new: "); ok && strings.HasSuffix(p, "/") {
			if entries, err := os.ReadDir(b.path(p)); err == nil && len(entries) == 0 {
				dirs = append(dirs, p)
				continue
			}
		}
		changed = append(changed, d)
	}
	if len(changed) > 0 {
		t.Errorf("%s changed the trees: %q", what, changed)
	}
	if len(dirs) > 0 {
		t.Logf("%s left empty directories: %q", what, dirs)
	}
	if !slices.Equal(before.status, after.status) {
		t.Errorf("%s changed dkms status:\n got %q\nwant %q", what, after.status, before.status)
	}
	if intents, _ := filepath.Glob(b.path("var/lib/dkms/.dkmsd/intent/*")); len(intents) > 0 {
		t.Errorf("%s left intents: %q", what, intents)
	}
	if left := dkmsdTempFiles(b.root); len(left) > 0 {
		t.Errorf("%s left temporary files: %q", what, left)
	}
}

// wantFailure checks that a refused command exited with code (0: any
// non-zero) and that its stderr holds every text of want.
func wantFailure(t *testing.T, what string, r testkit.Result, code int, want ...string) {
	t.Helper()
	if r.Code == 0 || (code != 0 && r.Code != code) {
		t.Errorf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", what, r.Code, code, r.Stdout, r.Stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.Stderr, w) {
			t.Errorf("%s: stderr lacks %q:\n%s", what, w, r.Stderr)
		}
	}
}

// TestFullDiskInstallTreeRealHeaders installs onto a kernel whose module
// dir is a 3 MB tmpfs filled up: with no room for the first module, with
// room for the first of two but not the second, and over a displaced
// original module. The install fails naming the file it could not write
// and the full device, and leaves the trees and dkms status as they were:
// no .dkmsd-* temporary file, no partial .ko, the original back in place,
// no intent.
func TestFullDiskInstallTreeRealHeaders(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, module string
		// leave is the free space left, from the built module sizes.
		leave    func(b *batchRoot, k string) int64
		original bool
		failing  string // the file named in the error
	}{
		{"no room for the first module", "dkmsd_twomods/2.1", func(*batchRoot, string) int64 { return 0 }, false, "dkmsd_alpha.ko"},
		{"room for one of two modules", "dkmsd_twomods/2.1", func(b *batchRoot, k string) int64 {
			fi, err := os.Stat(b.path("var/lib/dkms/dkmsd_twomods/2.1", k, machineArch(), "module/dkmsd_alpha.ko"))
			if err != nil {
				t.Fatal(err)
			}
			return (fi.Size() + 4095) &^ 4095
		}, false, "dkmsd_beta_renamed.ko"},
		{"displaced original", "dkmsd_hello/1.0", func(*batchRoot, string) int64 { return 0 }, true, "dkmsd_hello.ko"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBatchRoot(t)
			k := b.kernels[0]
			kdir := tmpfsKernelDir(t, b, k, "3m")
			for _, m := range []string{"dkmsd_hello-1.0", "dkmsd_twomods-2.1"} {
				testkit.CopyModule(t, b.root, m)
			}
			b.mustRun(t, "add", "dkmsd_hello/1.0")
			b.mustRun(t, "add", "dkmsd_twomods/2.1")
			b.mustRun(t, "build", "dkmsd_twomods/2.1", "-k", k)
			if c.original {
				// A small module of the same name that install moves
				// aside first: its page is freed, ours needs more.
				orig := filepath.Join(kdir, "updates", "dkmsd_hello.ko")
				if err := os.MkdirAll(filepath.Dir(orig), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(orig, []byte("the distribution's own dkmsd_hello\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
			} else {
				b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k)
			}
			fillTo(t, kdir, c.leave(b, k))
			before := b.state(t)

			r := b.run(t, "install", c.module, "-k", k)
			wantFailure(t, "install on a full "+kdir, r, 1, "No space left on the device holding "+filepath.Join(kdir, "updates/dkms", c.failing))
			b.sameState(t, "the failed install", before)
		})
	}
}

// TestFullDiskUninstallKeepsOriginalRealHeaders uninstalls dkmsd_hello
// from a full kernel module dir, where the original it displaced (bigger
// than dkmsd_hello) cannot be put back: the original must not be lost. It
// stays archived in original_module with its .origin file (or is back in
// place), and the command says it could not restore it.
func TestFullDiskUninstallKeepsOriginalRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	kdir := tmpfsKernelDir(t, b, k, "3m")
	testkit.CopyModule(t, b.root, "dkmsd_hello-1.0")
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	orig := filepath.Join(kdir, "updates", "dkmsd_hello.ko")
	origBytes := bytes.Repeat([]byte("the distribution's own dkmsd_hello, bigger than dkmsd's\n"), 20000)
	if err := os.MkdirAll(filepath.Dir(orig), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orig, origBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k)
	saved := b.path("var/lib/dkms/dkmsd_hello/original_module", k, machineArch(), "dkmsd_hello.ko")
	if got, err := os.ReadFile(saved); err != nil || !bytes.Equal(got, origBytes) {
		t.Fatalf("install did not archive the original as %s: %v", saved, err)
	}
	fillTo(t, kdir, 0)

	r := b.run(t, "uninstall", "dkmsd_hello/1.0", "-k", k)
	t.Logf("uninstall on a full %s: exit %d\nstdout:\n%s\nstderr:\n%s", kdir, r.Code, r.Stdout, r.Stderr)
	inPlace, _ := os.ReadFile(orig)
	archived, _ := os.ReadFile(saved)
	origin, _ := os.ReadFile(saved + ".origin")
	switch {
	case bytes.Equal(inPlace, origBytes):
	case bytes.Equal(archived, origBytes) && strings.TrimSpace(string(origin)) == orig:
	default:
		t.Errorf("the original module is lost: not at %s (%d bytes there), not archived as %s (%d bytes, .origin %q)\ntrees: %q",
			orig, len(inPlace), saved, len(archived), origin, testkit.Tree(t, b.path("var/lib/dkms/dkmsd_hello")))
	}
	if !bytes.Equal(inPlace, origBytes) {
		wantFailure(t, "uninstall that could not restore the original", r, 0, orig, "No space left")
	}
}

// TestFullDiskBootRealHeaders regenerates the initrd on a /boot (a tmpfs)
// with too little room for a second copy of it: `dkms initrd` and an
// install of a REMAKE_INITRD module fail with an error naming /boot, the
// space missing and the image, which stays byte for byte as it was, with no
// temporary file beside it. The install itself stands.
func TestFullDiskBootRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernelWithInitrd(t)
	src := "/boot/initrd.img-" + k
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	boot := b.path("boot")
	// Room for the image and 3 MB: less than the new image needs.
	mountTmpfs(t, boot, strconv.FormatInt(fi.Size()+3<<20, 10))
	img := filepath.Join(boot, filepath.Base(src))
	copyBootFile(t, src, img)
	old := readOrEmpty(img)
	b.cloneHello(t, "dkmsd_bootfull", "1.0", []string{`REMAKE_INITRD="yes"`}, nil)
	b.mustRun(t, "add", "dkmsd_bootfull/1.0")
	b.mustRun(t, "install", "dkmsd_bootfull/1.0", "-k", k, "--no-initrd")
	bootBefore := fileDigests(t, boot)

	r := b.run(t, "initrd", "-k", k)
	wantFailure(t, "dkms initrd on a full /boot", r, 1, "not enough space in "+boot, img+" is unchanged")
	if !bytes.Equal(readOrEmpty(img), old) {
		t.Errorf("%s changed", img)
	}
	if d := diffDigests(bootBefore, fileDigests(t, boot)); len(d) > 0 {
		t.Errorf("dkms initrd on a full /boot changed it: %q", d)
	}

	b.mustRun(t, "uninstall", "dkmsd_bootfull/1.0", "-k", k, "--no-initrd")
	r = b.run(t, "install", "dkmsd_bootfull/1.0", "-k", k)
	wantFailure(t, "dkms install with a full /boot", r, 1, "not enough space in "+boot, img+" is unchanged")
	if !bytes.Equal(readOrEmpty(img), old) {
		t.Errorf("%s changed", img)
	}
	if d := diffDigests(bootBefore, fileDigests(t, boot)); len(d) > 0 {
		t.Errorf("dkms install with a full /boot changed it: %q", d)
	}
	b.wantStatus(t, statusLine("dkmsd_bootfull", "1.0", k, "installed"))
}

// TestReadOnlyDKMSTreeRealHeaders remounts the dkms tree (a tmpfs holding
// dkmsd_hello installed and dkmsd_twomods added) read-only: build,
// install, uninstall and autoinstall fail with an error naming the tree and
// change nothing; the hooks report it and exit 0 (they never fail a package
// transaction); dkms status works and shows what it showed.
func TestReadOnlyDKMSTreeRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	tr := b.path("var/lib/dkms")
	mountTmpfs(t, tr, "64m")
	for _, m := range []string{"dkmsd_hello-1.0", "dkmsd_twomods-2.1"} {
		testkit.CopyModule(t, b.root, m)
	}
	b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k)
	b.mustRun(t, "add", "dkmsd_twomods/2.1")
	remount(t, tr, "ro")
	before := b.state(t)
	lock := filepath.Join(tr, ".dkmsd.lock")

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"build", "dkmsd_twomods/2.1", "-k", k}, "No write access to DKMS tree at " + tr},
		{[]string{"install", "dkmsd_twomods/2.1", "-k", k}, lock},
		{[]string{"uninstall", "dkmsd_hello/1.0", "-k", k}, lock},
		{[]string{"remove", "dkmsd_hello/1.0", "--all"}, "No write access to DKMS tree at " + tr},
		{[]string{"autoinstall", "-k", k}, "No write access to DKMS tree at " + tr},
	} {
		what := "dkms " + strings.Join(c.args, " ") + " on a read-only tree"
		r := b.run(t, c.args...)
		wantFailure(t, what, r, 1, c.want)
		if c.want == lock && !strings.Contains(r.Stderr, "read-only file system") {
			t.Errorf("%s: stderr does not say the file system is read-only:\n%s", what, r.Stderr)
		}
		b.sameState(t, what, before)
	}

	hooks := testkit.Binaries(t)
	cmd := exec.CommandContext(t.Context(), filepath.Join(hooks, "dkmsd-apt"), "header_postinst", k)
	cmd.Env = append(slices.Clone(b.env), "DKMSD_ROOT="+b.root)
	r, err := testkit.Exec(cmd)
	if err != nil {
		t.Fatalf("dkmsd-apt header_postinst: %v\nstdout:\n%s\nstderr:\n%s", err, r.Stdout, r.Stderr)
	}
	if r.Code != 0 || !strings.Contains(r.Stderr, lock) {
		t.Errorf("dkmsd-apt header_postinst on a read-only tree: exit %d (want 0), stderr should name %s:\n%s", r.Code, lock, r.Stderr)
	}
	b.sameState(t, "dkmsd-apt on a read-only tree", before)
	if st := b.status(t); !slices.Equal(st, []string{"dkmsd_hello/1.0, " + k + ", " + machineArch() + ": installed", "dkmsd_twomods/2.1: added"}) {
		t.Errorf("dkms status on a read-only tree: %q", st)
	}
}

// TestReadOnlyInstallTreeRealHeaders remounts a kernel's module dir (a
// tmpfs holding dkmsd_twomods installed and a module of dkmsd_hello's name
// that dkmsd_hello would displace) read-only: installing dkmsd_hello and
// uninstalling dkmsd_twomods fail naming the read-only file system, and
// leave the trees and dkms status as they were — also once the next
// command has taken the lock and recovered the tree.
func TestReadOnlyInstallTreeRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	kdir := tmpfsKernelDir(t, b, k, "16m")
	for _, m := range []string{"dkmsd_hello-1.0", "dkmsd_twomods-2.1"} {
		testkit.CopyModule(t, b.root, m)
	}
	orig := filepath.Join(kdir, "updates", "dkmsd_hello.ko")
	if err := os.MkdirAll(filepath.Dir(orig), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orig, []byte("the distribution's own dkmsd_hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.mustRun(t, "install", "dkmsd_twomods/2.1", "-k", k)
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
	remount(t, kdir, "ro")
	before := b.state(t)

	r := b.run(t, "install", "dkmsd_hello/1.0", "-k", k)
	wantFailure(t, "install onto a read-only "+kdir, r, 1, kdir, "read-only file system")
	b.sameState(t, "install onto a read-only module dir", before)

	r = b.run(t, "uninstall", "dkmsd_twomods/2.1", "-k", k)
	wantFailure(t, "uninstall from a read-only "+kdir, r, 1, kdir, "read-only file system")
	b.sameState(t, "uninstall from a read-only module dir", before)

	// The next command that takes the lock recovers what they left.
	probe := b.run(t, "uninstall", "dkmsd_nonexistent/0", "-k", k)
	if probe.Code != 3 {
		t.Errorf("probe: exit %d, want 3: %s", probe.Code, probe.Stderr)
	}
	b.sameState(t, "the recovery after them", before)
}
