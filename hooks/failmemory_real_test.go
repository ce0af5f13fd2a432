package hooks_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestHookRemembersFailedBuild: a module that fails to build is built once
// by the first hook run for a kernel; later hook runs say it is still
// failing, since when and where its log is, without building it — until
// the compiler, its source or a user's own dkms command gives a reason to
// try again. dkms status says it too.
func TestHookRemembersFailedBuild(t *testing.T) {
	testkit.RequireTool(t, "make", "make")
	kernel := testkit.Kernels(t, 1)[0]
	root, counter, bin := relocatedHookRoot(t, kernel, true)
	dkms := filepath.Join(bin, "dkms")

	// A module whose source does not compile; PRE_BUILD counts its builds.
	const name, version = "dkmsd_failmem", "1.0"
	failCounter := filepath.Join(t.TempDir(), "failbuilds")
	src := filepath.Join(root, "usr/src", name+"-"+version)
	files := testkit.HelloFiles(t, name, version)
	files[name+".c"] = "#error dkmsd_failmem does not compile on purpose\n"
	files["dkms.conf"] = `PACKAGE_NAME="` + name + `"
PACKAGE_VERSION="` + version + `"
BUILT_MODULE_NAME[0]="` + name + `"
DEST_MODULE_LOCATION[0]="/extra"
PRE_BUILD="count_build.sh ` + failCounter + ` ${kernelver}"
AUTOINSTALL="yes"
`
	files["count_build.sh"] = "#!/bin/sh\n# dkmsd hook tests: count builds.\necho \"$2\" >> \"$1\"\n"
	testkit.WriteModule(t, src, files)
	// The counter is outside the build dir: out of the build sandbox.
	if err := os.WriteFile(filepath.Join(root, "etc/dkms", name+".conf"), []byte("BUILD_SANDBOX=no\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.MustRun(t, dkms, "--root", root, "add", "-m", name, "-v", version)

	hook := func(path string) testkit.Result {
		t.Helper()
		env := []string{"DKMSD_ROOT=" + root, "DKMSD_APT_HOOK=off", "DPKG_MAINTSCRIPT_PACKAGE=linux-image-" + kernel, "DEB_MAINT_PARAMS=configure "}
		if path != "" {
			env = append(env, "PATH="+path)
		}
		r := testkit.Cmd{Argv: []string{filepath.Join(bin, "dkmsd-apt"), "postinst", kernel, "/boot/vmlinuz-" + kernel}, Env: env}.Run(t)
		if r.Code != 0 {
			t.Fatalf("dkmsd-apt postinst: exit %d (a hook never fails the transaction)\n%s", r.Code, r.Out)
		}
		return r
	}
	wantFailBuilds := func(step string, n int) {
		t.Helper()
		if got := len(builds(t, failCounter)); got != n {
			t.Errorf("%s: %s built %d times in all, want %d", step, name, got, n)
		}
	}
	record := filepath.Join(root, "var/lib/dkms/.dkmsd/failed", name+"-"+version+"-"+kernel+"-x86_64.failure")
	stillFailing := "dkmsd: " + name + "/" + version + " has failed to build for " + kernel + " (x86_64) since "
	keptLog := filepath.Join(root, "var/lib/dkms/.dkmsd/failed", name+"-"+version+"-"+kernel+"-x86_64.log")

	r := hook("")
	wantFailBuilds("first hook run", 1)
	wantBuilds(t, counter, kernel) // the good module is installed
	wantFile(t, record, true)
	if !strings.Contains(r.Out, "Autoinstall on "+kernel+" failed for module(s) "+name+"(10).") {
		t.Errorf("first hook run: no failure summary:\n%s", r.Out)
	}

	r = hook("")
	wantFailBuilds("second hook run, nothing changed", 1)
	if !strings.Contains(r.Out, stillFailing) || !strings.Contains(r.Out, "log: "+keptLog) {
		t.Errorf("second hook run: want %q… with the log %s:\n%s", stillFailing, keptLog, r.Out)
	}
	if !strings.Contains(r.Out, "Autoinstall on "+kernel+" failed for module(s) "+name+"(10).") {
		t.Errorf("second hook run: the summary must still count it as failed:\n%s", r.Out)
	}
	if log, err := os.ReadFile(keptLog); err != nil || !strings.Contains(string(log), "does not compile on purpose") {
		t.Errorf("the log the notice names (%s) does not hold the compiler's error: %v", keptLog, err)
	}
	wantBuilds(t, counter, kernel)

	st := testkit.Cmd{Argv: []string{dkms, "--root", root, "status", name}}.Run(t)
	if st.Code != 0 || strings.TrimSpace(st.Stdout) != name+"/"+version+": added" || !strings.Contains(st.Stderr, stillFailing) {
		t.Errorf("dkms status: exit %d, stdout %q, stderr %q; want %q and the notice on stderr", st.Code, st.Stdout, st.Stderr, name+"/"+version+": added")
	}

	// Another compiler (the same gcc under a path of its own, as an
	// upgrade or an alternatives switch would make it): tried again, once.
	cc := kernelCompiler(t, kernel)
	ccPath, err := exec.LookPath(cc)
	if err != nil {
		t.Fatalf("the kernel's compiler %s: %v", cc, err)
	}
	ccDir := t.TempDir()
	if err := os.Symlink(ccPath, filepath.Join(ccDir, cc)); err != nil {
		t.Fatal(err)
	}
	otherPath := ccDir + ":" + os.Getenv("PATH")
	hook(otherPath)
	wantFailBuilds("after a compiler change", 2)
	hook(otherPath)
	wantFailBuilds("compiler changed, then nothing", 2)

	// A new source (the package's next upload): tried again.
	if err := os.WriteFile(filepath.Join(src, name+".c"), []byte("#error dkmsd_failmem does not compile on purpose, still\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hook(otherPath)
	wantFailBuilds("after a source change", 3)
	hook(otherPath)
	wantFailBuilds("source changed, then nothing", 3)

	// The user's own command always builds (dkms 3.0.10 does), and the
	// hooks try again after it.
	r = testkit.Cmd{Argv: []string{dkms, "--root", root, "autoinstall", "-k", kernel, "--force"}, Env: []string{"PATH=" + otherPath}}.Run(t)
	if r.Code != 11 {
		t.Errorf("dkms autoinstall --force: exit %d, want 11\n%s", r.Code, r.Out)
	}
	wantFailBuilds("dkms autoinstall --force", 4)
	wantFile(t, record, false)
	hook(otherPath)
	wantFailBuilds("hook after the user's retry", 5)
	wantFile(t, record, true)

	// Removing the module forgets its failure.
	testkit.MustRun(t, dkms, "--root", root, "remove", "-m", name, "-v", version, "--all")
	wantFile(t, record, false)
	wantFile(t, keptLog, false)
}

// kernelCompiler is the compiler kernel was built with, from its headers'
// configuration (CONFIG_CC_VERSION_TEXT), as dkms builds with it.
func kernelCompiler(t *testing.T, kernel string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("/lib/modules", kernel, "build/.config"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CONFIG_CC_VERSION_TEXT=\""); ok {
			cc, _, _ := strings.Cut(v, " ")
			return cc
		}
	}
	t.Fatalf("%s's headers name no compiler (CONFIG_CC_VERSION_TEXT)", kernel)
	return ""
}
