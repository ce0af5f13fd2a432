package hooks_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// dnfKernel is the kernel version of the fake packages the dnf test
// builds: ${ver}-${rel}.${arch} of kernel-core/kernel-devel 6.1.0-55.
const dnfKernel = "6.1.0-55.x86_64"

// ptaPlugin is Debian's dnf-plugins-core post-transaction-actions plugin.
const ptaPlugin = "/usr/lib/python3/dist-packages/dnf-plugins/post-transaction-actions.py"

// ptaBrokenCall is what Debian 12's plugin (dnf-plugins-core 4.3.1-3)
// calls to substitute ${ver} & co. python3-libdnf 0.69.0-2 is built with
// SWIG 4.1, which no longer generates the flat Class_method aliases of
// static methods, so the call raises AttributeError, dnf logs the
// traceback, skips every action and still exits 0. Upstream fixed it in
// dnf-plugins-core PR #485 (libdnf.conf.ConfigParser.substitute).
const (
	ptaBrokenCall = "libdnf.conf.ConfigParser_substitute("
	ptaFixedCall  = "libdnf.conf.ConfigParser.substitute("
)

// kernelRepo builds empty kernel-core and kernel-devel 6.1.0-55.x86_64
// rpms and a repository of them.
func kernelRepo(t *testing.T) string {
	t.Helper()
	top := t.TempDir()
	spec := filepath.Join(top, "kernel.spec")
	if err := os.WriteFile(spec, []byte(`Name: kernel
Version: 6.1.0
Release: 55
Summary: dkmsd hook tests: empty kernel packages
License: GPL-2.0-only
BuildArch: x86_64
AutoReqProv: no
%description
Empty packages named like Fedora's, for dkmsd's dnf hook tests.
%package core
Summary: empty kernel-core
%description core
Empty.
%package devel
Summary: empty kernel-devel
%description devel
Empty.
%files core
%files devel
`), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.MustRun(t, "rpmbuild", "--define", "_topdir "+top, "-bb", spec)
	repo := filepath.Join(top, "repo")
	rpms, _ := filepath.Glob(filepath.Join(top, "RPMS", "x86_64", "*.rpm"))
	if len(rpms) != 2 {
		t.Fatalf("rpmbuild made %v, want kernel-core and kernel-devel", rpms)
	}
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, r := range rpms {
		if err := os.Rename(r, filepath.Join(repo, filepath.Base(r))); err != nil {
			t.Fatal(err)
		}
	}
	testkit.MustRun(t, "createrepo_c", "-q", repo)
	return repo
}

// TestRealDnfPostTransactionActions runs Debian's dnf 4 with the
// post-transaction-actions plugin in an --installroot against a local
// repository of fake kernel packages, with dist/dnf/dkmsd.action as the
// only action file, its command rewritten to run the built dkmsd-dnf on a
// relocated root (DKMSD_ROOT) whose lib/modules/6.1.0-55.x86_64/build is
// the machine's real headers. Installing kernel-devel builds and installs
// the test modules for 6.1.0-55.x86_64; installing kernel-core then does
// nothing more; removing kernel-core removes them.
//
// "debian-plugin" uses the plugin as Debian ships it. On Debian 12 it
// cannot run any action (see ptaBrokenCall): the subtest checks that
// nothing ran and reports the prerequisite as missing. "upstream-fix" runs
// the same plugin with only upstream's fix applied, from a private
// pluginpath, so that dkmsd's action file and dkmsd-dnf are tested through
// a real dnf transaction.
func TestRealDnfPostTransactionActions(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "dnf", "dnf")
	testkit.RequireTool(t, "rpmbuild", "rpm")
	testkit.RequireTool(t, "createrepo_c", "createrepo-c")
	testkit.RequireTool(t, "make", "make")
	stock, err := os.ReadFile(ptaPlugin)
	if err != nil {
		testkit.Missing(t, "dnf's post-transaction-actions plugin "+ptaPlugin+" (apt-get install -y dnf-plugins-core)")
	}
	bin := testkit.Binaries(t)
	headers := testkit.Kernels(t, 1)[0]
	build, err := filepath.EvalSymlinks("/lib/modules/" + headers + "/build")
	if err != nil {
		t.Fatal(err)
	}
	release := headersRelease(t, build)
	repo := kernelRepo(t)
	broken := strings.Contains(string(stock), ptaBrokenCall)

	t.Run("debian-plugin", func(t *testing.T) {
		dnfHookCase(t, bin, repo, build, release, "", broken)
	})
	t.Run("upstream-fix", func(t *testing.T) {
		if !broken {
			t.Skip("Debian's plugin works as shipped: no fix to apply")
		}
		dir := t.TempDir()
		fixed := strings.ReplaceAll(string(stock), ptaBrokenCall, ptaFixedCall)
		if err := os.WriteFile(filepath.Join(dir, "post-transaction-actions.py"), []byte(fixed), 0o644); err != nil {
			t.Fatal(err)
		}
		dnfHookCase(t, bin, repo, build, release, dir, false)
	})
}

// dnfHookCase runs the three transactions on a fresh root and installroot.
// pluginPath "" means dnf's own plugins (all but post-transaction-actions
// disabled). broken: the plugin is known not to run actions.
func dnfHookCase(t *testing.T, bin, repo, build, release, pluginPath string, broken bool) {
	root := testkit.NewRoot(t)
	kdir := filepath.Join(root, "lib/modules", dnfKernel)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(build, filepath.Join(kdir, "build")); err != nil {
		t.Fatal(err)
	}
	counter := filepath.Join(t.TempDir(), "builds")
	writeProbeModule(t, filepath.Join(root, "usr/src"), counter)
	testkit.CopyModule(t, root, "dkmsd_hello-1.0")
	mods := []testModule{realTestModules[0], probeModule}
	dkms := filepath.Join(bin, "dkms")
	for _, m := range mods {
		testkit.MustRun(t, dkms, "--root", root, "add", "-m", m.name, "-v", m.version)
	}

	// The plugin's configuration and dkmsd's action file, its command
	// pointed at the built dkmsd-dnf and the relocated root.
	conf, actions := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(conf, "post-transaction-actions.conf"),
		[]byte("[main]\nenabled = 1\nactiondir = "+actions+"/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	action, err := os.ReadFile(filepath.Join(testkit.RepoRoot(), "dist/dnf/dkmsd.action"))
	if err != nil {
		t.Fatal(err)
	}
	rewritten := strings.ReplaceAll(string(action), "/usr/libexec/dkmsd/dkmsd-dnf", "DKMSD_ROOT="+root+" "+filepath.Join(bin, "dkmsd-dnf"))
	if rewritten == string(action) {
		t.Fatalf("dist/dnf/dkmsd.action does not run /usr/libexec/dkmsd/dkmsd-dnf:\n%s", action)
	}
	if err := os.WriteFile(filepath.Join(actions, "dkmsd.action"), []byte(rewritten), 0o644); err != nil {
		t.Fatal(err)
	}

	installroot := t.TempDir()
	dnf := func(args ...string) testkit.Result {
		t.Helper()
		argv := []string{"dnf", "-y", "--installroot=" + installroot, "--releasever=39", "--nogpgcheck",
			"--setopt=reposdir=/dev/null", "--disablerepo=*", "--repofrompath=local," + repo, "--enablerepo=local",
			"--setopt=pluginconfpath=" + conf}
		if pluginPath != "" {
			argv = append(argv, "--setopt=pluginpath="+pluginPath)
		} else {
			// Debian's other plugins fail without their configuration
			// (versionlock: "Locklist not set").
			argv = append(argv, "--disableplugin=*", "--enableplugin=post-transaction-actions")
		}
		r := testkit.Run(t, append(argv, args...)...)
		if r.Code != 0 {
			t.Fatalf("dnf %s: exit %d\n%s", strings.Join(args, " "), r.Code, r.Out)
		}
		if strings.Contains(r.Out, "Traceback") && !broken {
			t.Errorf("dnf %s: a plugin failed:\n%s", strings.Join(args, " "), r.Out)
		}
		return r
	}
	rpmQ := func() string {
		return testkit.Run(t, "rpm", "--root", installroot, "-qa").Out
	}

	r := dnf("install", "kernel-devel")
	t.Logf("dnf install kernel-devel:\n%s", r.Out)
	if !strings.Contains(rpmQ(), "kernel-devel-6.1.0-55.x86_64") {
		t.Fatalf("kernel-devel is not installed in the installroot: %s", rpmQ())
	}
	if broken {
		if !strings.Contains(r.Out, "ConfigParser_substitute") {
			t.Fatalf("the plugin was expected to fail on %s:\n%s", ptaBrokenCall, r.Out)
		}
		if got := builds(t, counter); len(got) != 0 {
			t.Errorf("the hook ran although the plugin failed: builds %q", got)
		}
		// Debian 12's dnf-plugins-core 4.3.1-3 calls
		// libdnf.conf.ConfigParser_substitute, which python3-libdnf
		// 0.69.0-2 (built with SWIG 4.1) lacks: dnf logs an
		// AttributeError, runs no action and exits 0. Fixed upstream by
		// rpm-software-management/dnf-plugins-core PR #485; the
		// upstream-fix subtest runs dkmsd's hook through the plugin with
		// that one fix. This subtest pins the defect down.
		t.Logf("Debian's post-transaction-actions plugin runs no action (%s is missing); see the upstream-fix subtest", ptaBrokenCall)
		return
	}
	wantBuilds(t, counter, dnfKernel)
	wantInstalled(t, dkms, []string{"--root", root}, filepath.Join(root, "lib/modules"), dnfKernel, release, mods)

	// kernel-core's line runs the same command: dkmsd has nothing to do.
	r = dnf("install", "kernel-core")
	wantBuilds(t, counter, dnfKernel)
	wantInstalled(t, dkms, []string{"--root", root}, filepath.Join(root, "lib/modules"), dnfKernel, release, mods)
	if t.Failed() {
		t.Logf("dnf install kernel-core:\n%s", r.Out)
	}

	r = dnf("remove", "kernel-core")
	t.Logf("dnf remove kernel-core:\n%s", r.Out)
	wantRemoved(t, dkms, []string{"--root", root}, root, dnfKernel, mods)
}
