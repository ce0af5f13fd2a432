// Package testkit prepares relocated roots for tests that build real
// modules against the machine's real kernel headers:
//
//	kernels := testkit.Kernels(t, 2)          // fails under CI=true if missing
//	root := testkit.NewRoot(t, kernels...)     // <root>/lib/modules/<k>/build -> headers
//	testkit.CopyModule(t, root, "dkmsd_hello-1.0")
//
// A prerequisite that is missing fails the test under CI=true, naming the
// package to install; outside CI the test is skipped with the same text.
package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree"
)

// Missing fails (CI=true) or skips the test because something is not
// installed.
func Missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing: %s", what)
	}
	t.Skipf("prerequisite missing: %s", what)
}

// RequireTool checks that a program is on PATH.
func RequireTool(t testing.TB, tool, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		Missing(t, tool+" (apt-get install -y "+debianPackage+")")
	}
	return p
}

// RequireRoot checks that the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root (run the tests as root: sudo make test)")
	}
}

// Kernels returns n kernel versions whose headers are installed on this
// machine (a <kernel>/build/include under /lib/modules), oldest first.
func Kernels(t testing.TB, n int) []string {
	t.Helper()
	entries, _ := filepath.Glob("/lib/modules/*/build/include")
	var ks []string
	for _, e := range entries {
		ks = append(ks, filepath.Base(filepath.Dir(filepath.Dir(e))))
	}
	sort.Slice(ks, func(i, j int) bool { return tree.CompareVersions(ks[i], ks[j]) < 0 })
	if len(ks) < n {
		Missing(t, "kernel headers for two kernels (apt-get install -y linux-headers-amd64 linux-headers-cloud-amd64); found: "+strings.Join(ks, " "))
	}
	return ks[:n]
}

// NewRoot makes a relocated root holding, for each kernel, a module dir
// whose build link points at the machine's real headers.
func NewRoot(t testing.TB, kernels ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"usr/src", "var/lib/dkms", "etc/dkms", "boot"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range kernels {
		target, err := filepath.EvalSymlinks("/lib/modules/" + k + "/build")
		if err != nil {
			t.Fatalf("headers of %s: %v", k, err)
		}
		kdir := filepath.Join(root, "lib/modules", k)
		if err := os.MkdirAll(kdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(kdir, "build")); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// ModulesDir is the repository's testdata/modules.
func ModulesDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "modules")
}

// CopyModule copies testdata/modules/<dir> (e.g. "dkmsd_hello-1.0") into
// the root's source tree and returns its path there.
func CopyModule(t testing.TB, root, dir string) string {
	t.Helper()
	dst := filepath.Join(root, "usr/src", dir)
	out, err := exec.Command("cp", "-a", filepath.Join(ModulesDir(), dir), dst).CombinedOutput()
	if err != nil {
		t.Fatalf("copy %s: %v: %s", dir, err, out)
	}
	return dst
}

// Tree lists every path under dir relative to it, with "/" after
// directories and "-> target" after symlinks, for before/after comparisons.
func Tree(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out = append(out, rel+" -> "+target)
		case fi.IsDir():
			out = append(out, rel+"/")
		default:
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// CorpusModule puts the source of a real Debian *-dkms package (deb, e.g.
// "ovpn-dco-dkms": downloaded and unpacked, not installed, by
// UnpackedPackage) into the root's source tree, as its package would
// (/usr/src/<name>-<version>), and returns its module name and version.
func CorpusModule(t testing.TB, root, deb string) (name, version string) {
	t.Helper()
	src, _ := filepath.Glob(filepath.Join(UnpackedPackage(t, deb), "usr/src/*/dkms.conf"))
	if len(src) != 1 {
		t.Fatalf("%s: want one /usr/src/*/dkms.conf, found %q", deb, src)
	}
	conf, err := os.ReadFile(src[0])
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PACKAGE_NAME="?([^"\s]+)"?\s*$`).FindSubmatch(conf)
	dir := filepath.Base(filepath.Dir(src[0]))
	if m == nil || !strings.HasPrefix(dir, string(m[1])+"-") {
		t.Fatalf("%s: its dkms.conf names no PACKAGE_NAME that %s starts with", deb, dir)
	}
	if out, err := exec.Command("cp", "-a", filepath.Dir(src[0]), filepath.Join(root, "usr/src", dir)).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", dir, err, out)
	}
	return string(m[1]), strings.TrimPrefix(dir, string(m[1])+"-")
}
