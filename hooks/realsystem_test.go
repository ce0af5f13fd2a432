package hooks_test

// Helpers for the tests that run the hooks through the real package
// managers on the machine's own trees: build the commands, install the
// hook files with `make install-hooks`, add test modules to the real
// /usr/src and /var/lib/dkms, install and remove kernel packages, read
// initrds. Each helper undoes what it did in t.Cleanup.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// libexec is where `make install-hooks PREFIX=/usr` puts the commands.
const libexec = "/usr/libexec/dkmsd"

// realArch is the architecture of Debian's amd64 kernels.
const realArch = "x86_64"

// repoRoot is the repository's top directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

var hookBins struct {
	once sync.Once
	dir  string
	err  error
}

// hookBinaries builds dkms and the hook commands once per test process,
// into a dkmsd-hookbin-* directory under os.TempDir (left in place: tests
// and benchmarks of one process share it).
func hookBinaries(tb testing.TB) string {
	tb.Helper()
	hookBins.once.Do(func() {
		dir, err := os.MkdirTemp("", "dkmsd-hookbin-")
		if err != nil {
			hookBins.err = err
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/",
			"./cmd/dkms", "./cmd/dkmsd-apt", "./cmd/dkmsd-dnf", "./cmd/dkmsd-kernel-install", "./cmd/dkmsd-notify")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			hookBins.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		hookBins.dir = dir
	})
	if hookBins.err != nil {
		tb.Fatal(hookBins.err)
	}
	return hookBins.dir
}

// runResult is how a command ended.
type runResult struct {
	out  string // stdout and stderr, interleaved
	code int
}

// run runs argv with the test's environment plus extra variables.
func run(tb testing.TB, extraEnv []string, argv ...string) runResult {
	tb.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"), extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		tb.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return runResult{out.String(), code}
}

// mustRun runs argv and fails the test unless it exits 0.
func mustRun(tb testing.TB, extraEnv []string, argv ...string) string {
	tb.Helper()
	r := run(tb, extraEnv, argv...)
	if r.code != 0 {
		tb.Fatalf("%s: exit %d\n%s", strings.Join(argv, " "), r.code, r.out)
	}
	return r.out
}

// installedHookFiles are the files `make install-hooks DESTDIR=
// PREFIX=/usr` installs.
var installedHookFiles = []string{
	libexec + "/dkms",
	libexec + "/dkmsd-kernel-install",
	libexec + "/dkmsd-apt",
	libexec + "/dkmsd-dnf",
	"/usr/lib/kernel/install.d/40-dkmsd.install",
	"/etc/kernel/postinst.d/dkmsd",
	"/etc/kernel/header_postinst.d/dkmsd",
	"/etc/kernel/prerm.d/dkmsd",
	"/etc/apt/apt.conf.d/95dkmsd",
	"/etc/dnf/plugins/post-transaction-actions.d/dkmsd.action",
	"/etc/dnf/libdnf5-plugins/actions.d/dkmsd.actions",
	"/usr/share/initramfs-tools/hooks/dkmsd",
}

// debianDKMSHooks are Debian's dkms 3.0.10 kernel hooks, which would also
// build the test modules on a kernel install.
var debianDKMSHooks = []string{
	"/etc/kernel/postinst.d/dkms",
	"/etc/kernel/header_postinst.d/dkms",
	"/etc/kernel/prerm.d/dkms",
}

// realHooks is dkmsd's hooks installed into the machine.
type realHooks struct {
	bin  string // the built commands (bin/ of `make build`)
	dkms string // the installed dkms, /usr/libexec/dkmsd/dkms
}

// installRealHooks builds the commands, installs them and the hook files
// with `make install-hooks BIN=… DESTDIR= PREFIX=/usr`, and moves Debian's
// dkms hooks aside (to .dkms.moved-by-dkmsd-test, a name run-parts
// skips). Cleanup removes what was installed and puts back what was
// there.
func installRealHooks(t *testing.T) *realHooks {
	t.Helper()
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "make", "make")
	testkit.RequireTool(t, "gcc", "gcc")
	testkit.RequireTool(t, "run-parts", "debianutils")
	bin := hookBinaries(t)

	// What was there before: files (restored byte for byte) and the
	// directories make creates (removed when left empty).
	type saved struct {
		data []byte
		mode os.FileMode
	}
	before := map[string]*saved{}
	var newDirs []string
	for _, f := range installedHookFiles {
		if fi, err := os.Lstat(f); err == nil {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			before[f] = &saved{data, fi.Mode().Perm()}
			t.Logf("%s exists already: it is put back after the test", f)
		}
		for d := filepath.Dir(f); d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(d); os.IsNotExist(err) && !slices.Contains(newDirs, d) {
				newDirs = append(newDirs, d)
			}
		}
	}
	t.Cleanup(func() {
		for _, f := range installedHookFiles {
			if s := before[f]; s != nil {
				if err := os.WriteFile(f, s.data, s.mode); err != nil {
					t.Errorf("restore %s: %v", f, err)
				}
				continue
			}
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				t.Errorf("remove %s: %v", f, err)
			}
		}
		// Deepest first.
		slices.SortFunc(newDirs, func(a, b string) int { return len(b) - len(a) })
		for _, d := range newDirs {
			os.Remove(d)
		}
	})
	mustRun(t, nil, "make", "-C", repoRoot(), "--no-print-directory", "install-hooks", "BIN="+bin, "DESTDIR=", "PREFIX=/usr")
	for _, f := range installedHookFiles {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("make install-hooks did not install %s: %v", f, err)
		}
	}

	for _, h := range debianDKMSHooks {
		if _, err := os.Lstat(h); err != nil {
			continue
		}
		aside := filepath.Join(filepath.Dir(h), ".dkms.moved-by-dkmsd-test")
		if err := os.Rename(h, aside); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := os.Rename(aside, h); err != nil {
				t.Errorf("put back %s: %v", h, err)
			}
		})
	}
	return &realHooks{bin: bin, dkms: libexec + "/dkms"}
}

// testModule is a module version the real tests add, and the .ko files it
// installs (DEST_MODULE_NAME applied).
type testModule struct {
	name, version string
	kos           []string
}

// probeModule is generated by writeProbeModule: REMAKE_INITRD="yes", and
// a PRE_BUILD that appends the kernel version to a counter file, so the
// tests can count its builds.
var probeModule = testModule{"dkmsd_hookprobe", "1.0", []string{"dkmsd_hookprobe"}}

// realTestModules are the modules the real tests add: two fixtures of
// testdata/modules and the probe.
var realTestModules = []testModule{
	{"dkmsd_hello", "1.0", []string{"dkmsd_hello"}},
	{"dkmsd_twomods", "2.1", []string{"dkmsd_alpha", "dkmsd_beta_renamed"}},
	probeModule,
}

// writeProbeModule writes dkmsd_hookprobe-1.0 into srcTree: the hello
// fixture's source under its own name, REMAKE_INITRD="yes", and a
// PRE_BUILD appending "${kernelver}" to counter.
func writeProbeModule(t testing.TB, srcTree, counter string) {
	t.Helper()
	dir := filepath.Join(srcTree, probeModule.name+"-"+probeModule.version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hello, err := os.ReadFile(filepath.Join(testkit.ModulesDir(), "dkmsd_hello-1.0", "dkmsd_hello.c"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"dkmsd_hookprobe.c": strings.ReplaceAll(string(hello), "dkmsd_hello", "dkmsd_hookprobe"),
		"Makefile":          "# SPDX-License-Identifier: GPL-2.0\nobj-m += dkmsd_hookprobe.o\n",
		"dkms.conf": `PACKAGE_NAME="dkmsd_hookprobe"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="dkmsd_hookprobe"
DEST_MODULE_LOCATION[0]="/extra"
# Counts builds: one line per build, the kernel's version.
PRE_BUILD="count_build.sh ` + counter + ` ${kernelver}"
REMAKE_INITRD="yes"
AUTOINSTALL="yes"
`,
		"count_build.sh": "#!/bin/sh\n# dkmsd hook tests: count builds.\necho \"$2\" >> \"$1\"\n",
	}
	for name, text := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// builds reads the probe's counter: one kernel version per build.
func builds(t testing.TB, counter string) []string {
	t.Helper()
	b, err := os.ReadFile(counter)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// resetBuilds empties the probe's counter.
func resetBuilds(t testing.TB, counter string) {
	t.Helper()
	if err := os.WriteFile(counter, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// realModules are the test modules added to the machine's real trees.
type realModules struct {
	dkms    string // the dkms command used
	counter string // the probe's build counter
}

// addRealModules copies the test modules into /usr/src and adds them with
// dkmsd's dkms. Cleanup removes them from every kernel (dkms remove
// --all), deletes their sources and dkms tree entries, and dkmsd's state
// dir when the test made it.
func addRealModules(t *testing.T, dkms string) *realModules {
	t.Helper()
	for _, m := range realTestModules {
		for _, p := range []string{"/usr/src/" + m.name + "-" + m.version, "/var/lib/dkms/" + m.name} {
			if _, err := os.Lstat(p); err == nil {
				t.Fatalf("%s exists: a previous run was interrupted, or the module is in use. Remove it first: %s remove -m %s -v %s --all; rm -rf /usr/src/%s-%s /var/lib/dkms/%s",
					p, dkms, m.name, m.version, m.name, m.version, m.name)
			}
		}
	}
	stateDir := "/var/lib/dkms/.dkmsd"
	_, err := os.Stat(stateDir)
	hadState := err == nil
	rm := &realModules{dkms: dkms, counter: filepath.Join(t.TempDir(), "builds")}
	t.Cleanup(func() {
		for _, m := range realTestModules {
			if _, err := os.Stat("/var/lib/dkms/" + m.name); err == nil {
				if r := run(t, nil, dkms, "remove", "-m", m.name, "-v", m.version, "--all"); r.code != 0 {
					t.Logf("cleanup: dkms remove %s/%s --all: exit %d\n%s", m.name, m.version, r.code, r.out)
				}
			}
			os.RemoveAll("/var/lib/dkms/" + m.name)
			os.RemoveAll("/usr/src/" + m.name + "-" + m.version)
		}
		if !hadState {
			os.RemoveAll(stateDir)
		}
	})
	for _, m := range realTestModules {
		if m.name == probeModule.name {
			writeProbeModule(t, "/usr/src", rm.counter)
		} else {
			testkit.CopyModule(t, "/", m.name+"-"+m.version)
		}
		mustRun(t, nil, dkms, "add", "-m", m.name, "-v", m.version)
	}
	return rm
}

// statusLines is `dkms status` (with args) as lines.
func statusLines(t testing.TB, dkms string, args ...string) []string {
	t.Helper()
	out := mustRun(t, nil, append([]string{dkms, "status"}, args...)...)
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		// The D-Bus and journal sinks may warn on stderr.
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "level=") {
			lines = append(lines, l)
		}
	}
	return lines
}

// wantInstalled checks that each module is installed for kernel: a status
// line saying so, and each .ko under <installTree>/<kernel>/updates/dkms
// (where Debian's dkms puts them) built for vermagic release.
func wantInstalled(t testing.TB, dkms string, dkmsArgs []string, installTree, kernel, release string, mods []testModule) {
	t.Helper()
	status := statusLines(t, dkms, dkmsArgs...)
	for _, m := range mods {
		line := fmt.Sprintf("%s/%s, %s, %s: installed", m.name, m.version, kernel, realArch)
		if !slices.Contains(status, line) {
			t.Errorf("dkms status has no %q:\n%s", line, strings.Join(status, "\n"))
		}
		for _, ko := range m.kos {
			p := filepath.Join(installTree, kernel, "updates", "dkms", ko+".ko")
			info, err := tree.ReadModInfo(p)
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			if v := strings.Fields(info.Get("vermagic")); len(v) == 0 || v[0] != release {
				t.Errorf("%s: vermagic %q, want %s …", p, info.Get("vermagic"), release)
			}
		}
	}
}

// wantRemoved checks that no module is built or installed for kernel any
// more: no status line names it, no <dkms_tree>/<m>/<v>/<kernel>*, no .ko
// left under updates/dkms.
func wantRemoved(t testing.TB, dkms string, dkmsArgs []string, root, kernel string, mods []testModule) {
	t.Helper()
	for _, l := range statusLines(t, dkms, dkmsArgs...) {
		if strings.Contains(l, ", "+kernel+", ") {
			t.Errorf("dkms status still has %q", l)
		}
	}
	for _, m := range mods {
		left, _ := filepath.Glob(filepath.Join(root, "var/lib/dkms", m.name, "*", kernel+"*"))
		left2, _ := filepath.Glob(filepath.Join(root, "var/lib/dkms", m.name, "kernel-"+kernel+"-*"))
		if left = append(left, left2...); len(left) > 0 {
			t.Errorf("left in the dkms tree after the kernel's removal: %v", left)
		}
		for _, ko := range m.kos {
			p := filepath.Join(root, "lib/modules", kernel, "updates", "dkms", ko+".ko")
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s is still installed", p)
			}
		}
	}
}

// initrdModule looks for updates/dkms/<ko>.ko under lib/modules/<kernel>
// in the initrd at path and returns its vermagic ("" when absent).
func initrdModule(t testing.TB, path, kernel, ko string) string {
	t.Helper()
	img, err := initrd.Read(path)
	if err != nil {
		t.Fatalf("initrd.Read: %v", err)
	}
	dir, err := img.Resolve("lib/modules/" + kernel)
	if err != nil {
		t.Fatalf("%s: Resolve lib/modules/%s: %v", path, kernel, err)
	}
	if !img.IsDir(dir) {
		t.Fatalf("%s: no lib/modules/%s directory (%s)", path, kernel, dir)
	}
	name := dir + "/updates/dkms/" + ko + ".ko"
	if _, ok := img.Lookup(name); !ok {
		return ""
	}
	data, err := img.Content(name)
	if err != nil {
		t.Fatalf("%s: %s: %v", path, name, err)
	}
	info, err := tree.ParseModInfo(data)
	if err != nil {
		t.Fatalf("%s: %s: %v", path, name, err)
	}
	return info.Get("vermagic")
}

// wantInitrdModule checks that the kernel's initrd holds the probe module,
// built for that kernel, and not the modules that do not belong in it.
func wantInitrdModule(t testing.TB, path, kernel string) {
	t.Helper()
	vm := initrdModule(t, path, kernel, probeModule.kos[0])
	if v := strings.Fields(vm); len(v) == 0 || v[0] != kernel {
		t.Errorf("%s: updates/dkms/%s.ko (REMAKE_INITRD) missing or not for %s: vermagic %q", path, probeModule.kos[0], kernel, vm)
	}
	if vm := initrdModule(t, path, kernel, "dkmsd_hello"); vm != "" {
		t.Errorf("%s holds dkmsd_hello.ko, which does not belong in it", path)
	}
}

// headersRelease is the kernel release the headers under build are for
// (UTS_RELEASE): the vermagic of what is built against them.
func headersRelease(t testing.TB, build string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(build, "include/generated/utsrelease.h"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), `UTS_RELEASE "`)
	rel, _, ok2 := strings.Cut(rest, `"`)
	if !ok || !ok2 {
		t.Fatalf("no UTS_RELEASE in %s/include/generated/utsrelease.h", build)
	}
	return rel
}

// wantUpdatesDirGone checks that the test left no updates/dkms directory
// in a real kernel's module dir that had none before.
func wantUpdatesDirGone(t *testing.T, kernel string) {
	t.Helper()
	dir := "/lib/modules/" + kernel + "/updates"
	if _, err := os.Stat(dir); err == nil {
		return // it was there before
	}
	t.Cleanup(func() {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%s is left behind", dir)
			os.RemoveAll(dir)
		}
	})
}

func wantBuilds(t *testing.T, counter string, want ...string) {
	t.Helper()
	if got := builds(t, counter); !slices.Equal(got, want) {
		t.Errorf("%s built for %q, want %q (one line per build)", probeModule.name, got, want)
	}
}
