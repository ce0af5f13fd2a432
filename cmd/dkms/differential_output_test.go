package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// diffStep is one command run by both implementations.
type diffStep struct {
	args []string
	// before prepares each side's root for the step.
	before func(t *testing.T, s side)
	// dev is a documented difference (docs/compatibility.md); nil means
	// exit code, stdout and stderr are the same byte for byte.
	dev *deviation
	// check: compare every status query after this step, not only
	// `dkms status` (dkms 3.0.10's status takes seconds).
	check bool
}

// deviation is what a step may show differently, and why.
type deviation struct {
	why string
	// dkmsd and ref are the exit codes when they differ on purpose.
	dkmsd, ref int
	// drop is removed from dkmsd's output (what it adds), dropBoth from
	// both before they are compared.
	drop, dropBoth *regexp.Regexp
}

func (s diffStep) name() string { return "dkms " + strings.Join(s.args, " ") }

// outputOf is a command's outcome as the comparison sees it.
type outputOf struct {
	code           int
	stdout, stderr string
}

// compareStep runs one step on both sides and reports every difference
// that is not documented.
func compareStep(t *testing.T, dkmsd, ref side, st diffStep) {
	t.Helper()
	if st.before != nil {
		st.before(t, dkmsd)
		st.before(t, ref)
	}
	a, b := runBoth(t, dkmsd, ref, st.args...)
	compareOutputs(t, st.name(), dkmsd.outcome(a, st.dev, true), ref.outcome(b, st.dev, false), st.dev)
}

// outcome normalizes a result and removes what a deviation lets differ.
func (s side) outcome(r testkit.Result, dev *deviation, isDkmsd bool) outputOf {
	o := outputOf{code: r.Code, stdout: s.normalize(r.Stdout), stderr: s.normalize(r.Stderr)}
	if dev == nil {
		return o
	}
	for _, re := range []*regexp.Regexp{dev.dropBoth, map[bool]*regexp.Regexp{true: dev.drop, false: nil}[isDkmsd]} {
		if re != nil {
			o.stdout, o.stderr = re.ReplaceAllString(o.stdout, ""), re.ReplaceAllString(o.stderr, "")
		}
	}
	return o
}

func compareOutputs(t *testing.T, name string, a, b outputOf, dev *deviation) {
	t.Helper()
	wantA, wantB := b.code, b.code
	if dev != nil && dev.dkmsd != dev.ref {
		wantA, wantB = dev.dkmsd, dev.ref
	}
	if a.code != wantA || b.code != wantB {
		t.Errorf("%s: exit %d, dkms 3.0.10 exit %d (want %d and %d)", name, a.code, b.code, wantA, wantB)
	}
	if a.stdout != b.stdout {
		t.Errorf("%s: stdout differs%s", name, textDiff(a.stdout, b.stdout))
	}
	if a.stderr != b.stderr {
		t.Errorf("%s: stderr differs%s", name, textDiff(a.stderr, b.stderr))
	}
}

// textDiff shows both texts from their first differing line on.
func textDiff(a, b string) string {
	la, lb := strings.SplitAfter(a, "\n"), strings.SplitAfter(b, "\n")
	i := 0
	for i < len(la) && i < len(lb) && la[i] == lb[i] {
		i++
	}
	return fmt.Sprintf(" from line %d:\n--- dkmsd:\n%s--- dkms 3.0.10:\n%s", i+1, strings.Join(la[i:], ""), strings.Join(lb[i:], ""))
}

// writeSource writes a module source dir with the given dkms.conf under
// the side's source tree.
func writeSource(dir, conf string) func(t *testing.T, s side) {
	return func(t *testing.T, s side) {
		d := filepath.Join(s.root, "usr/src", dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "dkms.conf"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// removeSource deletes a module's source dir from the side's source tree.
func removeSource(dir string) func(t *testing.T, s side) {
	return func(t *testing.T, s side) {
		if err := os.RemoveAll(filepath.Join(s.root, "usr/src", dir)); err != nil {
			t.Fatal(err)
		}
	}
}

// The documented differences the steps below meet.
var (
	headersMissing = &deviation{why: "headers missing: exit 21 naming the package (dkms 3.1.5)", dkmsd: 21, ref: 1}
	binariesOnly   = &deviation{why: "ldtarball of a binaries-only tarball succeeds (dkms exits 1 after loading it)", dkmsd: 0, ref: 1}
	noArchive      = &deviation{why: "ldtarball names the missing archive (dkms prints an empty name)",
		drop: regexp.MustCompile(`ROOT/nonesuch\.tar\.gz`)}
	// autoinstall runs its jobs at the same time: each job's text is
	// shown once it is over, in dkms's order, with a line of its own and
	// a summary; depmod runs once per kernel instead of after each module.
	parallelAutoinstall = &deviation{why: "parallel autoinstall: job lines, summary, one depmod per kernel",
		drop:     regexp.MustCompile(`(?m)^(\S+/\S+, \S+, \S+: (installed in|skipped \(|failed in|not built).*|Autoinstall on .*)\n`),
		dropBoth: regexp.MustCompile(`(?m)^depmod\.\.\.\n`)}
)

// badConf is a dkms.conf with every kind of problem dkms 3.0.10 checks
// for, so that their texts and order are compared.
// (Arrays with gaps are left out: dkms 3.0.10 counts their elements,
// dkmsd their highest index, a documented difference.)
const badConf = "PACKAGE_NAME=dkmsd_badconf\nPACKAGE_VERSION=1.0\nDEST_MODULE_LOCATION[0]=/lib\nBUILT_MODULE_NAME[1]=x.ko\nDEST_MODULE_LOCATION[1]=/extra\n"

// differentialSteps is the command sequence of
// TestDifferentialDkms3010RealHeaders: every action, with the outcomes
// dkms 3.0.10 has for it.
func differentialSteps(k1, k2 string) []diffStep {
	return []diffStep{
		{args: []string{"add", "dkmsd_hello/1.0"}},
		{args: []string{"add", "dkmsd_hello/1.0"}}, // already added: 3
		{args: []string{"add", "-m", "dkmsd_scripted", "-v", "1.0"}},
		{args: []string{"add", "dkmsd_badconf/1.0"}, before: writeSource("dkmsd_badconf-1.0", badConf)},
		{args: []string{"add", "dkmsd_nonesuch/1.0"}},
		{args: []string{"add", "@ROOT@/usr/src/dkmsd_sourced-2.6"}, check: true}, // BASH_SOURCE, pushd/popd
		{args: []string{"build", "dkmsd_hello/1.0", "-k", k1}},
		{args: []string{"build", "dkmsd_hello/1.0", "-k", k1}}, // already built: 0
		{args: []string{"build", "dkmsd_failbuild/1.0", "-k", k1}},
		{args: []string{"build", "dkmsd_exclusive/1.0", "-k", k1}},
		{args: []string{"build", "dkmsd_hello/1.0", "-k", "9.9.9-nonesuch"}, dev: headersMissing},
		{args: []string{"build", "dkmsd_hello/1.0", "--all"}},
		{args: []string{"install", "dkmsd_hello/1.0", "-k", k1, "-k", k2, "--no-depmod"}},
		{args: []string{"install", "dkmsd_hello/1.0", "-k", k1, "--no-depmod"}}, // already installed
		{args: []string{"install", "dkmsd_hello/1.0", "-k", k1, "--force", "--no-depmod"}},
		{args: []string{"install", "dkmsd_twomods/2.1", "-k", k1 + "/x86_64", "-k", k2 + "/x86_64", "--no-depmod"}},
		{args: []string{"install", "dkmsd_patched/1.0", "-k", k2, "--no-depmod"}},
		{args: []string{"install", "dkmsd_scripted/1.0", "-k", k1, "--no-depmod"}},
		{args: []string{"install", "dkmsd_sourced/2.6", "-k", k1, "--no-depmod"}},
		{args: []string{"install", "dkmsd_cleaned/1.0", "-k", k2, "--no-depmod"}, check: true}, // CLEAN
		{args: []string{"install", "dkmsd_hello/1.0", "-k", "9.9.9-nonesuch", "--no-depmod"}, dev: headersMissing},
		{args: []string{"uninstall", "dkmsd_twomods/2.1", "-k", k1, "--no-depmod"}},
		{args: []string{"uninstall", "dkmsd_twomods/2.1", "-k", k1, "--no-depmod"}}, // not installed: 0
		{args: []string{"unbuild", "dkmsd_hello/1.0", "-k", k2, "--no-depmod"}},
		{args: []string{"uninstall", "dkmsd_scripted/1.0", "-k", k1, "--no-depmod"}},
		{args: []string{"remove", "dkmsd_patched/1.0", "--all", "--no-depmod"}},
		{args: []string{"remove", "dkmsd_twomods/2.1", "-k", k2, "--no-depmod"}, check: true},
		{args: []string{"remove", "dkmsd_nonesuch/1.0", "--all"}},
		{args: []string{"remove", "dkmsd_hello"}},
		{args: []string{"mktarball", "dkmsd_cleaned/1.0", "-k", k2}},
		{args: []string{"mktarball", "dkmsd_cleaned/1.0", "-k", k2, "--archive", "@ROOT@/cleaned.tar.gz"}},
		{args: []string{"mktarball", "dkmsd_cleaned/1.0", "-k", k2, "--binaries-only", "--archive", "@ROOT@/cleaned-bin.tar.gz"}},
		{args: []string{"mktarball", "dkmsd_cleaned/1.0", "-k", k1}}, // not built: 6
		{args: []string{"remove", "dkmsd_cleaned/1.0", "--all", "--no-depmod"}},
		{args: []string{"ldtarball", "@ROOT@/cleaned.tar.gz"}, before: removeSource("dkmsd_cleaned-1.0")},
		{args: []string{"ldtarball", "@ROOT@/cleaned.tar.gz"}}, // already added: 8
		{args: []string{"remove", "dkmsd_cleaned/1.0", "--all", "--no-depmod"}},
		{args: []string{"ldtarball", "@ROOT@/cleaned-bin.tar.gz"}, before: removeSource("dkmsd_cleaned-1.0"), dev: binariesOnly, check: true},
		{args: []string{"ldtarball", "@ROOT@/nonesuch.tar.gz"}, dev: noArchive},
		{args: []string{"autoinstall", "-k", k2, "--no-depmod"}, dev: parallelAutoinstall, check: true},
		{args: []string{"match", "-k", k1}},
		{args: []string{"match", "--templatekernel", k1, "-k", k1}},
		{args: []string{"status", "-k", k1, "--all"}},
		{args: []string{"status", "--binaries-only", "--source-only"}},
		{args: []string{"status", "-k", k1, "-k", k2, "-a", "x86_64", "-a", "x86_64", "-a", "x86_64"}},
		{args: []string{"add", "build"}},
		{args: []string{"--frobnicate", "status"}},
		{args: []string{"frobnicate"}},
		{args: []string{}},
		{args: []string{"--version"}},
	}
}

// TestDifferentialDkms3010RealHeaders runs the same command sequence with
// dkmsd and with Debian's dkms 3.0.10 on separate relocated roots and
// compares, after every step, its exit code, stdout and stderr byte for
// byte (see normalize), those of a set of status queries, and the files
// installed. The differences docs/compatibility.md lists are named in the
// steps. depmod is off on both sides: dkms 3.0.10 would run it on the
// machine's own /lib/modules whatever --installtree says (dkmsd's depmod
// is covered by the integration tests).
func TestDifferentialDkms3010RealHeaders(t *testing.T) {
	t.Parallel()
	dkmsd, ref, ks := differentialSetup(t)
	k1, k2 := ks[0], ks[1]
	for _, s := range []side{dkmsd, ref} {
		for _, m := range []string{"dkmsd_hello-1.0", "dkmsd_twomods-2.1", "dkmsd_patched-1.0", "dkmsd_scripted-1.0",
			"dkmsd_failbuild-1.0", "dkmsd_exclusive-1.0", "dkmsd_sourced-2.6", "dkmsd_cleaned-1.0"} {
			testkit.CopyModule(t, s.root, m)
		}
	}
	statuses := [][]string{
		{"status"},
		{"status", "-m", "dkmsd_hello"},
		{"status", "dkmsd_twomods/2.1"},
		{"status", "-k", k1},
		{"status", "-k", k1, "-k", k2},
		{"status", "dkmsd_hello/1.0", "-k", k2, "-a", "x86_64"},
		{"status", "-a", "x86_64"},
		{"status", "-m", "dkmsd_nonesuch"},
		{"status", "dkmsd_*"},
	}
	for _, st := range differentialSteps(k1, k2) {
		compareStep(t, dkmsd, ref, st)
		queries := statuses[:1]
		if st.check {
			queries = statuses
		}
		for _, q := range queries {
			a, b := runBoth(t, dkmsd, ref, q...)
			compareOutputs(t, "after "+st.name()+": dkms "+strings.Join(q, " "), dkmsd.outcome(a, nil, true), ref.outcome(b, nil, false), nil)
		}
		if d := diffFileSets(fileSet(t, filepath.Join(dkmsd.root, "lib/modules")), fileSet(t, filepath.Join(ref.root, "lib/modules"))); len(d) > 0 {
			t.Errorf("after %s the install trees differ:\n%s", st.name(), strings.Join(d, "\n"))
		}
	}
	// The scripts ran in the same order on both sides.
	ma, _ := os.ReadFile(filepath.Join(dkmsd.root, "var/lib/dkms/dkmsd_scripted.marker"))
	mb, _ := os.ReadFile(filepath.Join(ref.root, "var/lib/dkms/dkmsd_scripted.marker"))
	if len(ma) == 0 || string(ma) != string(mb) {
		t.Errorf("script marker: dkmsd %q, dkms 3.0.10 %q", ma, mb)
	}
	// The failed build keeps its log on both sides.
	for _, s := range []side{dkmsd, ref} {
		log, err := os.ReadFile(filepath.Join(s.root, "var/lib/dkms/dkmsd_failbuild/1.0/build/make.log"))
		if err != nil || !strings.Contains(string(log), "deliberate build failure") {
			t.Errorf("%s: failed build's make.log: %v", s.name, err)
		}
	}
}

// edit is a documented difference written as a change to dkms 3.0.10's
// output: old, which must be there, becomes new.
type edit struct{ old, new string }

// expectEdited compares dkmsd's output with dkms 3.0.10's after edits.
func expectEdited(t *testing.T, name, what, got, ref string, edits ...edit) {
	t.Helper()
	want := ref
	for _, e := range edits {
		if !strings.Contains(want, e.old) {
			t.Errorf("%s: dkms 3.0.10's %s lacks %q:\n%s", name, what, e.old, ref)
			return
		}
		want = strings.Replace(want, e.old, e.new, 1)
	}
	if got != want {
		t.Errorf("%s: %s differs from dkms 3.0.10's with the documented changes%s", name, what, textDiff(got, want))
	}
}

// scratchModules builds, in a root of their own, a dkmsd_hello of the
// same version as testdata's (1.0) and an older one (0.9), and returns
// their module files: what a kernel's own tree may hold under the name.
func scratchModules(t *testing.T, dkmsd side, kernel string) (same, older []byte) {
	t.Helper()
	s := side{name: "scratch", bin: dkmsd.bin, root: testkit.NewRoot(t, kernel), env: dkmsd.env}
	old := filepath.Join(s.root, "usr/src/dkmsd_hello-0.9")
	if err := os.Rename(testkit.CopyModule(t, s.root, "dkmsd_hello-1.0"), old); err != nil {
		t.Fatal(err)
	}
	testkit.CopyModule(t, s.root, "dkmsd_hello-1.0")
	for _, f := range []string{"dkms.conf", "dkmsd_hello.c"} {
		b, err := os.ReadFile(filepath.Join(old, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(old, f), []byte(strings.ReplaceAll(string(b), "1.0", "0.9")), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(v string) []byte {
		if r := s.run(t, "build", "dkmsd_hello/"+v, "-k", kernel); r.Code != 0 {
			t.Fatalf("scratch build of dkmsd_hello/%s: exit %d\n%s", v, r.Code, r.Out)
		}
		b, err := os.ReadFile(filepath.Join(s.root, "var/lib/dkms/dkmsd_hello", v, kernel, machineArch(), "module/dkmsd_hello.ko"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return read("1.0"), read("0.9")
}

// TestDifferentialOriginalModuleRealHeaders installs dkmsd_hello where
// the kernel's own tree already has a dkmsd_hello.ko, with both
// implementations. Of the same version, dkms 3.0.10 refuses it and still
// marks it installed; dkmsd refuses it with "Installation aborted." (exit
// 6, as later dkms). Of an older version, both install it; dkmsd archives
// the original and says so with dkms's words for it (3.0.10 leaves it in
// place on Debian), and puts it back on uninstall. Everything else is
// the same byte for byte.
func TestDifferentialOriginalModuleRealHeaders(t *testing.T) {
	t.Parallel()
	dkmsd, ref, ks := differentialSetup(t)
	k := ks[0]
	same, older := scratchModules(t, dkmsd, k)
	origDir := filepath.Join("lib/modules", k, "kernel/drivers/misc")
	place := func(ko []byte) {
		for _, s := range []side{dkmsd, ref} {
			if err := os.MkdirAll(filepath.Join(s.root, origDir), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(s.root, origDir, "dkmsd_hello.ko"), ko, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range []side{dkmsd, ref} {
		testkit.CopyModule(t, s.root, "dkmsd_hello-1.0")
	}
	compareStep(t, dkmsd, ref, diffStep{args: []string{"build", "dkmsd_hello/1.0", "-k", k}})

	place(same)
	install := []string{"install", "dkmsd_hello/1.0", "-k", k, "--no-depmod"}
	a, b := dkmsd.run(t, install...), ref.run(t, install...)
	if a.Code != 6 || b.Code != 0 {
		t.Errorf("install over the same version: exit %d, dkms 3.0.10 exit %d (want 6 and 0)", a.Code, b.Code)
	}
	expectEdited(t, "install over the same version", "stdout", dkmsd.normalize(a.Stdout), ref.normalize(b.Stdout), edit{"depmod...\n", ""})
	expectEdited(t, "install over the same version", "stderr", dkmsd.normalize(a.Stderr), ref.normalize(b.Stderr),
		edit{"You may override by specifying --force.\n", "You may override by specifying --force.\nError! Installation aborted.\n"})
	// dkms 3.0.10 marked it installed: uninstall it there to go on alike.
	if r := ref.run(t, "uninstall", "dkmsd_hello/1.0", "-k", k, "--no-depmod"); r.Code != 0 {
		t.Fatalf("dkms 3.0.10 uninstall: exit %d\n%s", r.Code, r.Out)
	}
	compareStep(t, dkmsd, ref, diffStep{args: []string{"status"}})

	place(older)
	name := "install over an older version"
	a, b = dkmsd.run(t, install...), ref.run(t, install...)
	if a.Code != 0 || b.Code != 0 {
		t.Errorf("%s: exit %d, dkms 3.0.10 exit %d", name, a.Code, b.Code)
	}
	archived := filepath.Join("ROOT/var/lib/dkms/dkmsd_hello/original_module", k, machineArch())
	expectEdited(t, name, "stdout", dkmsd.normalize(a.Stdout), ref.normalize(b.Stdout), edit{" - Original module\n",
		" - Original module\n   - Found ROOT/" + origDir + "/dkmsd_hello.ko\n   - Storing in " + archived + "/\n   - Archiving for uninstallation purposes\n"})
	expectEdited(t, name, "stderr", dkmsd.normalize(a.Stderr), ref.normalize(b.Stderr))
	a, b = dkmsd.run(t, "status"), ref.run(t, "status")
	expectEdited(t, "status with an archived original", "stdout", a.Stdout, b.Stdout, edit{"installed\n", "installed (original_module exists)\n"})
	if _, err := os.Stat(filepath.Join(dkmsd.root, origDir, "dkmsd_hello.ko")); !os.IsNotExist(err) {
		t.Errorf("dkmsd left the original in the kernel's tree: %v", err)
	}

	name = "uninstall with an archived original"
	uninstall := []string{"uninstall", "dkmsd_hello/1.0", "-k", k, "--no-depmod"}
	a, b = dkmsd.run(t, uninstall...), ref.run(t, uninstall...)
	if a.Code != 0 || b.Code != 0 {
		t.Errorf("%s: exit %d, dkms 3.0.10 exit %d", name, a.Code, b.Code)
	}
	expectEdited(t, name, "stdout", dkmsd.normalize(a.Stdout), ref.normalize(b.Stdout),
		edit{"   - No original module was found for this module on this kernel.\n   - Use the dkms install command to reinstall any previous module version.\n",
			"   - Archived original module found in the DKMS tree\n   - Moving it to: ROOT/" + origDir + "/\n"},
		edit{"depmod...\n", "depmod...\n\nRemoving original_module from DKMS tree for kernel " + k + " (" + machineArch() + ")\n"})
	expectEdited(t, name, "stderr", dkmsd.normalize(a.Stderr), ref.normalize(b.Stderr))
	// The original is back: both trees are the same again.
	if d := diffFileSets(fileSet(t, filepath.Join(dkmsd.root, "lib/modules")), fileSet(t, filepath.Join(ref.root, "lib/modules"))); len(d) > 0 {
		t.Errorf("after the uninstall the install trees differ:\n%s", strings.Join(d, "\n"))
	}
	compareStep(t, dkmsd, ref, diffStep{args: []string{"status"}})
}
