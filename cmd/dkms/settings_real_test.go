package main

// Integration tests of framework.conf settings dkms 3.0.10 lacks and dkms
// 3.4 has (post_transaction, build_environment), run as dkms processes on
// relocated roots over the machine's real headers.

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// writeRootFile writes text to <root>/rel (made executable when mode says
// so), making its directory.
func writeRootFile(t *testing.T, root, rel, text string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// lines is a file's lines (none when it does not exist).
func lines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return []string{}
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// TestPostTransactionRealHeaders runs dkms with a post_transaction command
// that records its arguments: it runs once at the end of a successful
// install, autoinstall (however many modules it installed) and
// uninstall, with $kernelver expanded both when framework.conf is read and
// when the command is evaluated, and dkms's other variables ($arch,
// $module, $module_version) set but not exported; not after a build, an
// autoinstall with nothing to do, or a command that failed; its failure
// is shown and leaves the exit status alone; its output is in
// post_transaction.log.
func TestPostTransactionRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k0, k1 := b.kernels[0], b.kernels[1]
	arch := machineArch()
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	b.cloneHello(t, "dkmsd_second", "1.0", nil, nil)
	testkit.CopyModule(t, b.root, "dkmsd_failbuild-1.0")
	writeRootFile(t, b.root, "record.sh", `#!/bin/sh
dir=$(dirname "$0")
printf '%s|exported kernelver=%s\n' "$*" "${kernelver-unset}" >> "$dir/calls"
echo "post_transaction ran: $*"
[ ! -e "$dir/fail" ] || exit 3
`, 0o755)
	writeRootFile(t, b.root, "etc/dkms/framework.conf",
		`post_transaction="`+b.root+`/record.sh read=$kernelver"' eval=$kernelver/$arch/$module/$module_version'`+"\n", 0o644)
	command := b.root + "/record.sh read=%s eval=$kernelver/$arch/$module/$module_version"
	calls := b.path("calls")
	var want []string
	check := func(step string, r testkit.Result, code int, shown string, newCalls ...string) {
		t.Helper()
		if r.Code != code {
			t.Errorf("%s: exit %d, want %d\n%s", step, r.Code, code, r.Out)
		}
		want = append(want, newCalls...)
		if got := lines(t, calls); !slices.Equal(got, want) {
			t.Errorf("%s: post_transaction calls\n got %q\nwant %q", step, got, want)
		}
		ran := strings.Contains(r.Stdout, "Executing post-transaction command")
		switch {
		case shown == "" && ran:
			t.Errorf("%s: post_transaction shown though it should not run:\n%s", step, r.Stdout)
		case shown != "" && !strings.HasSuffix(r.Stdout, shown):
			t.Errorf("%s: stdout does not end with %q:\n%s", step, shown, r.Stdout)
		}
	}
	done := "\nExecuting post-transaction command... done.\n"

	r := b.run(t, "install", "dkmsd_hello/1.0", "-k", k0)
	check("install", r, 0, done, "read="+k0+" eval="+k0+"/"+arch+"/dkmsd_hello/1.0|exported kernelver=unset")
	logRE := regexp.MustCompile(`^\nExecuting post-transaction command\n# command: ` + regexp.QuoteMeta(strings.Replace(command, "%s", k0, 1)) + `\n` +
		`post_transaction ran: read=` + k0 + ` eval=` + k0 + `/` + arch + `/dkmsd_hello/1\.0\n\n# exit code: 0\n# elapsed time: 00:00:0\d\n-{64}\n$`)
	if got, _ := os.ReadFile(b.path("var/lib/dkms/post_transaction.log")); !logRE.Match(got) {
		t.Errorf("post_transaction.log:\n%s\nwant it to match %s", got, logRE)
	}

	check("build", b.run(t, "build", "dkmsd_second/1.0", "-k", k1), 0, "")
	b.mustRun(t, "add", "dkmsd_failbuild/1.0")
	if err := os.WriteFile(b.path("etc/dkms/no-autoinstall"), []byte("dkmsd_failbuild\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	check("autoinstall of two modules", b.run(t, "autoinstall", "-k", k1), 0, done, "read="+k1+" eval="+k1+"/"+arch+"//|exported kernelver=unset")
	check("autoinstall with nothing to do", b.run(t, "autoinstall", "-k", k1), 0, "")

	if err := os.WriteFile(b.path("fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	failed := "\nExecuting post-transaction command...(bad exit status: 3)\nFailed command:\n" + strings.Replace(command, "%s", k0, 1) + "\n"
	check("uninstall, post_transaction failing", b.run(t, "uninstall", "dkmsd_hello/1.0", "-k", k0), 0, failed,
		"read="+k0+" eval="+k0+"/"+arch+"/dkmsd_hello/1.0|exported kernelver=unset")
	if got, _ := os.ReadFile(b.path("var/lib/dkms/post_transaction.log")); !strings.Contains(string(got), "\n# exit code: 3\n") || strings.Count(string(got), "# command:") != 1 {
		t.Errorf("post_transaction.log after the failure (emptied, then the one run):\n%s", got)
	}
	os.Remove(b.path("fail"))

	check("install that fails", b.run(t, "install", "dkmsd_failbuild/1.0", "-k", k0), 10, "")
	if err := os.Remove(b.path("etc/dkms/no-autoinstall")); err != nil {
		t.Fatal(err)
	}
	check("autoinstall with a failure", b.run(t, "autoinstall", "-k", k0), 11, "")
	if got := b.status(t); !slices.Contains(got, statusLine("dkmsd_hello", "1.0", k0, "installed")) {
		t.Errorf("the failed autoinstall did install dkmsd_hello (so post_transaction was held back for the failure alone); status: %q", got)
	}
}

// TestBuildEnvironmentRealHeaders builds a module whose Makefile stops
// unless DKMSD_TOOLSET is "enabled-<kernel>", which only framework.conf's
// build_environment file exports (using $kernelver); the file also puts
// a strip wrapper first in PATH, which the build must use. Without the
// setting, or with a file that does not exist (ignored, as dkms does),
// the build fails.
func TestBuildEnvironmentRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	makefile := `ifneq ($(DKMSD_TOOLSET),enabled-$(KERNELRELEASE))
$(error DKMSD_TOOLSET is "$(DKMSD_TOOLSET)": the build_environment file was not sourced)
endif
obj-m += dkmsd_toolset.o
`
	b.cloneHello(t, "dkmsd_toolset", "1.0", nil, map[string]string{"Makefile": makefile})
	toolset := b.path("opt/toolset")
	writeRootFile(t, b.root, "opt/toolset/enable", `echo "enabling the toolset"
export DKMSD_TOOLSET="enabled-$kernelver"
export PATH="`+toolset+`/bin:$PATH"
NOT_EXPORTED=1
`, 0o644)
	writeRootFile(t, b.root, "opt/toolset/bin/strip", "#!/bin/sh\necho \"$@\" >> "+toolset+"/strip.calls\nexec /usr/bin/strip \"$@\"\n", 0o755)
	b.letOut(t, "dkmsd_toolset") // the strip wrapper logs outside the build dir
	conf := func(setting string) {
		writeRootFile(t, b.root, "etc/dkms/framework.conf", setting+"\n", 0o644)
	}
	makeLog := b.path("var/lib/dkms/dkmsd_toolset/1.0/build/make.log")

	for _, c := range []struct{ name, setting string }{
		{"unset", ""},
		{"missing file", `build_environment="` + toolset + `/missing"`},
	} {
		conf(c.setting)
		r := b.run(t, "build", "dkmsd_toolset/1.0", "-k", k)
		if r.Code != 10 {
			t.Errorf("%s: build exit %d, want 10 (make fails)\n%s", c.name, r.Code, r.Out)
		}
		if log, _ := os.ReadFile(makeLog); !strings.Contains(string(log), `DKMSD_TOOLSET is "": the build_environment file was not sourced`) {
			t.Errorf("%s: make.log does not show the Makefile's error:\n%s", c.name, log)
		}
	}

	conf(`build_environment="` + toolset + `/enable"`)
	r := b.run(t, "build", "dkmsd_toolset/1.0", "-k", k)
	if r.Code != 0 {
		t.Fatalf("build with build_environment: exit %d\n%s", r.Code, r.Out)
	}
	if strings.Contains(r.Out, "enabling the toolset") {
		t.Errorf("the build_environment file's output was shown (dkms discards it):\n%s", r.Out)
	}
	ko := b.path("var/lib/dkms/dkmsd_toolset/1.0/build/dkmsd_toolset.ko")
	if got := lines(t, filepath.Join(toolset, "strip.calls")); !slices.Equal(got, []string{"-g " + ko}) {
		t.Errorf("strip wrapper calls %q, want one: -g %s", got, ko)
	}
	if got := b.status(t); !slices.Equal(got, []string{statusLine("dkmsd_toolset", "1.0", k, "built")}) {
		t.Errorf("status %q", got)
	}
}
