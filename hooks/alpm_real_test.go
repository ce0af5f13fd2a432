package hooks

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// nobodyUID is the unprivileged uid makepkg runs as (Debian's nobody):
// makepkg refuses to run as root.
const nobodyUID = 65534

// makepkgPackages builds the test's two packages with real makepkg from one
// split PKGBUILD (one makepkg run, which is slow: a bash script that forks
// hundreds of times): dkmsd-hello-dkms holds the module's source under
// usr/src, khdr links usr/lib/modules/<k>/build to the machine's headers.
// It returns the two archives.
func makepkgPackages(t *testing.T, k, headers string, src map[string]string) (modPkg, hdrPkg string) {
	t.Helper()
	// A t.TempDir is 0700, out of nobody's reach.
	dir, err := os.MkdirTemp("", "dkmsd-makepkg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for f, text := range src {
		p := filepath.Join(dir, "hello", f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pkgbuild := fmt.Sprintf(`pkgbase=dkmsd-test
pkgname=(dkmsd-hello-dkms khdr)
pkgver=1
pkgrel=1
pkgdesc='dkmsd test'
arch=(any)
license=(GPL)
options=(!strip !docs !libtool !staticlibs !zipman !purge !debug !lto)
package_dkmsd-hello-dkms() {
	mkdir -p "$pkgdir/usr/src/dkmsd_hello-1.0"
	cp -a "$startdir/hello/." "$pkgdir/usr/src/dkmsd_hello-1.0/"
}
package_khdr() {
	mkdir -p "$pkgdir/usr/lib/modules/"%[1]s
	ln -s %[2]s "$pkgdir/usr/lib/modules/"%[1]s/build
}
`, shellQuote(k), shellQuote(headers))
	if err := os.WriteFile(filepath.Join(dir, "PKGBUILD"), []byte(pkgbuild), 0o644); err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, nobodyUID, nobodyUID)
	})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	id := strconv.Itoa(nobodyUID)
	cmd := exec.CommandContext(t.Context(), "setpriv", "--reuid="+id, "--regid="+id, "--clear-groups", "--",
		"makepkg", "--nodeps", "--noconfirm")
	cmd.Dir = dir
	// An uncompressed archive (PKGEXT) spares a compressor; HOME keeps
	// nobody's nonexistent home and any user makepkg.conf out.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "HOME=" + dir, "TMPDIR=" + dir,
		"PKGDEST=" + out, "SRCDEST=" + filepath.Join(dir, "srcdest"), "BUILDDIR=" + filepath.Join(dir, "build"),
		"PACKAGER=dkmsd <dkmsd@localhost>", "PKGEXT=.pkg.tar"}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("makepkg: %v\n%s", err, b)
	}
	return filepath.Join(out, "dkmsd-hello-dkms-1-1-any.pkg.tar"), filepath.Join(out, "khdr-1-1-any.pkg.tar")
}

// shellQuote quotes s for bash.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// alpmSandbox runs real pacman, with dkmsd's hook files, on a machine
// whose DKMS trees, module dirs and os-release are the test's: a mount
// namespace (bwrap) over the machine, read-only, with the test's dirs in
// place of /var/lib/dkms, /usr/src, /usr/lib/modules, /etc/dkms and /boot.
// pacman runs hooks chrooted into its root, so the root must be "/".
type alpmSandbox struct {
	dir string
}

func (s alpmSandbox) path(rel ...string) string {
	return filepath.Join(append([]string{s.dir}, rel...)...)
}

func (s alpmSandbox) pacman(t *testing.T, args ...string) string {
	t.Helper()
	bw := []string{"bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--bind", "/tmp", "/tmp",
		"--bind", s.path("var/lib/dkms"), "/var/lib/dkms", "--bind", s.path("usr/src"), "/usr/src",
		"--bind", s.path("usr/lib/modules"), "/usr/lib/modules", "--bind", s.path("etc/dkms"), "/etc/dkms",
		"--bind", s.path("boot"), "/boot", "--ro-bind", s.path("os-release"), "/usr/lib/os-release"}
	// The machine's headers stay where their links point.
	hdrs, _ := filepath.Glob("/usr/src/linux-*")
	for _, h := range hdrs {
		bw = append(bw, "--ro-bind", h, h)
	}
	bw = append(bw, "pacman", "--root", "/", "--dbpath", s.path("db"), "--cachedir", s.path("cache"), "--logfile", s.path("pacman.log"),
		"--hookdir", s.path("hooks"), "--config", s.path("pacman.conf"), "--noconfirm")
	cmd := exec.Command(bw[0], append(bw[1:], args...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TMPDIR="+s.path("tmp"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pacman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestAlpmHooksRealPacman: with dkmsd's pacman hooks, installing a DKMS
// module's package registers it; installing a package that brings a
// kernel's headers (usr/lib/modules/<k>/build) builds and installs the
// module for that kernel (Arch's /updates/dkms); removing that package
// removes the module from the kernel first; removing the module's package
// takes it out of the DKMS tree.
func TestAlpmHooksRealPacman(t *testing.T) {
	testkit.RequireRoot(t)
	for tool, pkg := range map[string]string{"pacman": "pacman-package-manager", "makepkg": "makepkg", "bsdtar": "libarchive-tools",
		"fakeroot": "fakeroot", "setpriv": "util-linux", "bwrap": "bubblewrap", "depmod": "kmod", "make": "make", "gcc": "gcc"} {
		testkit.RequireTool(t, tool, pkg)
	}
	k := testkit.Kernels(t, 1)[0]
	headers, err := filepath.EvalSymlinks("/lib/modules/" + k + "/build")
	if err != nil {
		t.Fatal(err)
	}
	s := alpmSandbox{dir: t.TempDir()}
	for _, d := range []string{"var/lib/dkms", "usr/src", "usr/lib/modules", "etc/dkms", "boot", "db", "cache", "hooks", "tmp"} {
		if err := os.MkdirAll(s.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(s.path("os-release"), []byte("NAME=\"Arch Linux\"\nID=arch\n"), 0o644)
	os.WriteFile(s.path("pacman.conf"), []byte("[options]\nArchitecture = auto\nSigLevel = Never\nLocalFileSigLevel = Never\n"), 0o644)
	os.WriteFile(s.path("etc/dkms/framework.conf"), []byte("try_sign_modules=false\n"), 0o644)
	alpm := testkit.Binary(t, "dkmsd-alpm")
	for _, h := range []string{"dkmsd-install.hook", "dkmsd-remove.hook"} {
		text, err := os.ReadFile(filepath.Join(testkit.RepoRoot(), "dist/alpm", h))
		if err != nil {
			t.Fatal(err)
		}
		text = []byte(strings.ReplaceAll(string(text), "/usr/libexec/dkmsd/dkmsd-alpm", alpm))
		os.WriteFile(s.path("hooks", h), text, 0o644)
	}

	modPkg, hdrPkg := makepkgPackages(t, k, headers, testkit.HelloFiles(t, "dkmsd_hello", "1.0"))

	out := s.pacman(t, "-U", modPkg)
	if _, err := os.Lstat(s.path("var/lib/dkms/dkmsd_hello/1.0/source")); err != nil {
		t.Fatalf("the module's package did not register it: %v\n%s", err, out)
	}
	out = s.pacman(t, "-U", hdrPkg)
	ko := s.path("usr/lib/modules", k, "updates/dkms/dkmsd_hello.ko")
	if _, err := os.Stat(ko); err != nil {
		t.Fatalf("module not installed for %s after the headers came: %v\n%s", k, err, out)
	}
	if dep, _ := os.ReadFile(s.path("usr/lib/modules", k, "modules.dep")); !strings.Contains(string(dep), "updates/dkms/dkmsd_hello.ko:") {
		t.Errorf("modules.dep lacks the module:\n%s", dep)
	}
	out = s.pacman(t, "-R", "khdr")
	if _, err := os.Stat(ko); !os.IsNotExist(err) {
		t.Errorf("module still installed after the kernel's package left: %v\n%s", err, out)
	}
	if _, err := os.Stat(s.path("var/lib/dkms/dkmsd_hello/1.0", k)); !os.IsNotExist(err) {
		t.Errorf("module still built for the removed kernel\n%s", out)
	}
	out = s.pacman(t, "-R", "dkmsd-hello-dkms")
	if _, err := os.Lstat(s.path("var/lib/dkms/dkmsd_hello")); !os.IsNotExist(err) {
		t.Errorf("the module is still in the DKMS tree after its package left: %v\n%s", err, out)
	}
}
