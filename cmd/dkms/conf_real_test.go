package main

// Directives and overrides that dkms 3.0.10 lacks, with upstream dkms
// 3.4's semantics, run as processes on relocated roots over the real
// headers: per-module BUILD_EXCLUSIVE_*[#], /etc/dkms/<module>/ patches
// and scripts, and a BUILD_DEPENDS on a module the tree has never heard of.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// twoModulePackage writes <name>-1.0 building <name>_a and <name>_b from
// one Makefile, with extra dkms.conf lines.
func (b *batchRoot) twoModulePackage(t *testing.T, name string, confExtra ...string) {
	t.Helper()
	files := map[string]string{
		"Makefile": fmt.Sprintf("obj-m += %s_a.o %s_b.o\n", name, name),
		"dkms.conf": strings.Join(append([]string{
			`PACKAGE_NAME="` + name + `"`, `PACKAGE_VERSION="1.0"`,
			`BUILT_MODULE_NAME[0]="` + name + `_a"`, `DEST_MODULE_LOCATION[0]="/extra"`,
			`BUILT_MODULE_NAME[1]="` + name + `_b"`, `DEST_MODULE_LOCATION[1]="/extra"`,
		}, confExtra...), "\n") + "\n",
	}
	for _, m := range []string{name + "_a", name + "_b"} {
		files[m+".c"] = testkit.HelloFiles(t, m, "1.0")[m+".c"]
	}
	b.writeModuleFiles(t, name, "1.0", files)
}

// koIn lists the module files (name.ko*) in dir by module name.
func koIn(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	for _, f := range koFiles(t, dir) {
		names = append(names, strings.SplitN(filepath.Base(f), ".ko", 2)[0])
	}
	slices.Sort(names)
	return names
}

// TestBuildExclusivePerModuleRealHeaders: BUILD_EXCLUSIVE_ARCH[1] leaves
// module 1 of a two-module package out: module 0 is built and installed,
// module 1 is neither, with nothing said about it and exit 0; the package
// is "installed" with no difference noted. The plain form (element 0)
// still rules out the whole package with 77.
func TestBuildExclusivePerModuleRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	b.twoModulePackage(t, "dkmsd_pm", `BUILD_EXCLUSIVE_ARCH[1]="nonexistent"`)

	r := b.run(t, "install", "dkmsd_pm/1.0", "-k", k)
	if r.Code != 0 {
		t.Fatalf("install: exit %d, want 0\n%s", r.Code, r.Out)
	}
	if strings.Contains(r.Out, "dkmsd_pm_b") {
		t.Errorf("install mentions the excluded module:\n%s", r.Out)
	}
	if !strings.Contains(r.Stdout, "dkmsd_pm_a.ko") {
		t.Errorf("install does not show dkmsd_pm_a installed:\n%s", r.Out)
	}
	built := b.path("var/lib/dkms/dkmsd_pm/1.0", k, machineArch(), "module")
	if got := koIn(t, built); !slices.Equal(got, []string{"dkmsd_pm_a"}) {
		t.Errorf("built modules = %q, want only dkmsd_pm_a", got)
	}
	if got := koIn(t, b.path("lib/modules", k)); !slices.Equal(got, []string{"dkmsd_pm_a"}) {
		t.Errorf("installed modules = %q, want only dkmsd_pm_a", got)
	}
	b.wantStatus(t, statusLine("dkmsd_pm", "1.0", k, "installed"))

	r = b.run(t, "uninstall", "dkmsd_pm/1.0", "-k", k)
	if r.Code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", r.Code, r.Out)
	}
	if got := koIn(t, b.path("lib/modules", k)); len(got) != 0 {
		t.Errorf("after uninstall the kernel still has %q", got)
	}

	// Element 0 is the package's: 77, nothing built.
	k2 := b.kernels[1]
	r = b.run(t, "build", "dkmsd_pm/1.0", "-k", k2, "--directive", "BUILD_EXCLUSIVE_ARCH=nonexistent")
	if r.Code != 77 {
		t.Errorf("build with BUILD_EXCLUSIVE_ARCH (element 0): exit %d, want 77\n%s", r.Code, r.Out)
	}
	if pathPresent(b.path("var/lib/dkms/dkmsd_pm/1.0", k2)) {
		t.Errorf("an excluded package was built for %s", k2)
	}
}

// oneLinePatch is a unified diff (no context) replacing line old of file
// with new in a -p1 tree.
func oneLinePatch(t *testing.T, file, text, old, new string) string {
	t.Helper()
	lines := strings.Split(text, "\n")
	n := slices.Index(lines, old)
	if n < 0 {
		t.Fatalf("%q not in %s", old, file)
	}
	return fmt.Sprintf("--- a/%s\n+++ b/%s\n@@ -%d +%d @@\n-%s\n+%s\n", file, file, n+1, n+1, old, new)
}

// TestEtcDkmsModuleOverridesRealHeaders: /etc/dkms/<module>/patches/x.patch
// (under the relocated root) replaces the source's patch of that name,
// and an executable /etc/dkms/<module>/<script> runs, from that dir,
// instead of the source's script (dkms 3.4.0). The built module carries
// the override's MODULE_VERSION.
func TestEtcDkmsModuleOverridesRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	testkit.RequireTool(t, "modinfo", "kmod")
	testkit.RequireTool(t, "patch", "patch")
	k := b.kernels[0]
	const m = "dkmsd_ovr"
	files := testkit.HelloFiles(t, m, "1.0")
	src := files[m+".c"]
	files["dkms.conf"] += "PATCH[0]=\"version.patch\"\nPRE_BUILD=\"script.sh pre_build\"\nPOST_INSTALL=\"script.sh post_install\"\n"
	files["script.sh"] = "#!/bin/sh\necho \"source script $*\"\n"
	b.writeModuleFiles(t, m, "1.0", files)
	testkit.WriteModule(t, b.path("usr/src", m+"-1.0", "patches"), map[string]string{
		"version.patch": oneLinePatch(t, m+".c", src, `MODULE_VERSION("1.0");`, `MODULE_VERSION("1.0-source");`),
	})
	etc := b.path("etc/dkms", m)
	testkit.WriteModule(t, filepath.Join(etc, "patches"), map[string]string{
		"version.patch": oneLinePatch(t, m+".c", src, `MODULE_VERSION("1.0");`, `MODULE_VERSION("1.0-etc");`),
	})
	testkit.WriteModule(t, etc, map[string]string{"script.sh": "#!/bin/sh\necho \"override script $* in $(pwd)\"\n"})

	r := b.run(t, "install", m+"/1.0", "-k", k)
	if r.Code != 0 {
		t.Fatalf("install: exit %d\n%s", r.Code, r.Out)
	}
	kos := koFiles(t, b.path("lib/modules", k))
	if len(kos) != 1 {
		t.Fatalf("installed modules: %q", kos)
	}
	if v := strings.TrimSpace(testkit.MustRun(t, "modinfo", "-F", "version", filepath.Join(b.path("lib/modules", k), kos[0]))); v != "1.0-etc" {
		t.Errorf("installed module's version = %q, want 1.0-etc (the /etc/dkms patch)", v)
	}
	if want := "override script post_install in " + etc; !strings.Contains(r.Stdout, want) {
		t.Errorf("install output lacks %q:\n%s", want, r.Out)
	}
	log, err := os.ReadFile(b.path("var/lib/dkms", m, "1.0", k, machineArch(), "log", "make.log"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "override script pre_build in " + etc; !strings.Contains(string(log), want) {
		t.Errorf("make.log lacks %q:\n%s", want, log)
	}
	if strings.Contains(r.Out+string(log), "source script") {
		t.Errorf("the source's script ran as well:\n%s\n%s", r.Out, log)
	}
}

// TestAutoinstallDeferredBuildDependsRealHeaders: a BUILD_DEPENDS on a
// module the tree has never heard of defers the module with dkms 3.4.1's
// lines and exit 0, leaving it added; once the dependency is added, the
// next autoinstall installs both, the dependency first (the dependent's
// build refuses to start before it is installed). A dependency the tree
// knows but cannot install is still a failure (11).
func TestAutoinstallDeferredBuildDependsRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	b.cloneHello(t, "dkmsd_dependent", "1.0", []string{`BUILD_DEPENDS="dkmsd_provider"`}, nil)
	b.mustRun(t, "add", "dkmsd_dependent/1.0")

	r := b.run(t, "autoinstall", "-k", k)
	if r.Code != 0 {
		t.Fatalf("autoinstall with an unregistered BUILD_DEPENDS: exit %d, want 0\n%s", r.Code, r.Out)
	}
	for _, want := range []string{
		"dkmsd_dependent/1.0 autoinstall deferred: BUILD_DEPENDS not registered with DKMS: dkmsd_provider.",
		"Autoinstall on " + k + " deferred module(s) dkmsd_dependent/1.0 due to BUILD_DEPENDS not yet registered with DKMS.",
		"These may be provided externally or by a package not yet configured; autoinstall will retry on the next trigger.",
	} {
		if !slices.Contains(strings.Split(r.Stdout, "\n"), want) {
			t.Errorf("autoinstall stdout lacks the line %q:\n%s", want, r.Stdout)
		}
	}
	b.wantStatus(t, "dkmsd_dependent/1.0: added")

	b.cloneHello(t, "dkmsd_provider", "1.0", nil, nil)
	b.mustRun(t, "add", "dkmsd_provider/1.0")
	r = b.run(t, "autoinstall", "-k", k)
	if r.Code != 0 {
		t.Fatalf("autoinstall once the dependency is added: exit %d\n%s", r.Code, r.Out)
	}
	if strings.Contains(r.Out, "deferred") {
		t.Errorf("still deferred:\n%s", r.Out)
	}
	b.wantStatus(t,
		statusLine("dkmsd_dependent", "1.0", k, "installed"),
		statusLine("dkmsd_provider", "1.0", k, "installed"))

	// Known to the tree, not installable by autoinstall: a real failure.
	b.cloneHello(t, "dkmsd_manual", "1.0", []string{`AUTOINSTALL="no"`}, nil)
	b.cloneHello(t, "dkmsd_needsmanual", "1.0", []string{`BUILD_DEPENDS="dkmsd_manual"`}, nil)
	b.mustRun(t, "add", "dkmsd_manual/1.0")
	b.mustRun(t, "add", "dkmsd_needsmanual/1.0")
	r = b.run(t, "autoinstall", "-k", k)
	if r.Code != 11 {
		t.Errorf("autoinstall with a known, uninstallable BUILD_DEPENDS: exit %d, want 11\n%s", r.Code, r.Out)
	}
	if strings.Contains(r.Out, "deferred") {
		t.Errorf("a known dependency was deferred:\n%s", r.Out)
	}
}
