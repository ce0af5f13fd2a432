package hooks

import (
	"archive/tar"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// pacmanPackage writes a package pacman installs: .PKGINFO, then files
// (path → content) and symlinks (path → target). makepkg would need
// bsdtar (libarchive-tools), which Debian's makepkg does not pull in; the
// archive is the same.
func pacmanPackage(t *testing.T, path, name string, files, links map[string]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	info := fmt.Sprintf("pkgname = %s\npkgbase = %s\npkgver = 1-1\npkgdesc = dkmsd test\nbuilddate = %d\npackager = dkmsd\nsize = 0\narch = any\n", name, name, time.Now().Unix())
	hdr := func(h *tar.Header) {
		h.ModTime = time.Now()
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	hdr(&tar.Header{Name: ".PKGINFO", Mode: 0o644, Size: int64(len(info))})
	tw.Write([]byte(info))
	dirs := map[string]bool{}
	parents := func(p string) {
		for d := filepath.Dir(p); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for p := range files {
		parents(p)
	}
	for p := range links {
		parents(p)
	}
	for _, d := range parentsFirst(dirs) {
		hdr(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755})
	}
	for p, text := range files {
		hdr(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(text))})
		tw.Write([]byte(text))
	}
	for p, target := range links {
		hdr(&tar.Header{Name: p, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// parentsFirst orders directories so that each comes after its parent.
func parentsFirst(m map[string]bool) []string {
	var out []string
	for d := range m {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
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
	for tool, pkg := range map[string]string{"pacman": "pacman-package-manager", "bwrap": "bubblewrap", "depmod": "kmod", "make": "make", "gcc": "gcc"} {
		testkit.RequireTool(t, tool, pkg)
	}
	k := testkit.Kernels(t, 1)[0]
	headers, err := filepath.EvalSymlinks("/lib/modules/" + k + "/build")
	if err != nil {
		t.Fatal(err)
	}
	s := alpmSandbox{dir: t.TempDir()}
	for _, d := range []string{"var/lib/dkms", "usr/src", "usr/lib/modules", "etc/dkms", "boot", "db", "cache", "hooks", "tmp", "pkgs"} {
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

	files := map[string]string{}
	for f, text := range testkit.HelloFiles(t, "dkmsd_hello", "1.0") {
		files["usr/src/dkmsd_hello-1.0/"+f] = text
	}
	modPkg, hdrPkg := s.path("pkgs/dkmsd-hello-dkms-1-1-any.pkg.tar"), s.path("pkgs/khdr-1-1-any.pkg.tar")
	pacmanPackage(t, modPkg, "dkmsd-hello-dkms", files, nil)
	pacmanPackage(t, hdrPkg, "khdr", nil, map[string]string{"usr/lib/modules/" + k + "/build": headers})

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
