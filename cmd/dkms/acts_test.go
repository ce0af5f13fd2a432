package main

// Nothing is accepted and ignored: every setting dist/framework.conf
// documents (and every one dkmsd reads), and every option dkms --help
// shows (and every one the parser takes), has a scenario here whose
// outcome differs with and without it. TestEveryKeyAndOptionHasAScenario
// fails when one appears without a scenario; TestEveryKeyAndOptionActsRealHeaders
// plays them on relocated roots over the real headers.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// actsCase is one setting or option and a scenario that shows it acting.
type actsCase struct {
	// name is a framework.conf setting ("parallel_jobs") or an option
	// ("--force", "-j").
	name string
	// run plays the scenario on roots from s, with or without the setting
	// or option, and returns what it shows.
	run func(t *testing.T, s *actsSetup, with bool) string
	// want, when set, is in what the scenario shows with it and not in
	// what it shows without it.
	want string
}

// coveredNames are the settings and options with a scenario.
func coveredNames() map[string]bool {
	names := map[string]bool{}
	for _, cs := range [][]actsCase{keyCases, optionCases, dkms34Cases} {
		for _, c := range cs {
			names[c.name] = true
		}
	}
	return names
}

// documentedKeys are the settings dist/framework.conf shows, commented
// out or not.
func documentedKeys(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testkit.RepoRoot(), "dist", "framework.conf"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^#? ?([a-z][a-z0-9_]*)=`)
	var keys []string
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		if !slices.Contains(keys, m[1]) {
			keys = append(keys, m[1])
		}
	}
	return keys
}

// helpOptions are the long options dkms --help shows.
func helpOptions(t *testing.T) []string {
	t.Helper()
	out := testkit.Cmd{Argv: []string{testkit.Binary(t, "dkms"), "--help"}}.Run(t).Out
	var opts []string
	for _, m := range regexp.MustCompile(`--[a-z][a-z_-]*`).FindAllString(out, -1) {
		if !slices.Contains(opts, m) {
			opts = append(opts, m)
		}
	}
	if len(opts) == 0 {
		t.Fatalf("dkms --help shows no long option:\n%s", out)
	}
	return opts
}

// parsedOptions are every option the parser takes without a value, every
// long option with one, and the short options that have no long form.
func parsedOptions() []string {
	opts := append([]string{"-c", "-j"}, longValue...)
	for o := range flagOptions {
		if strings.HasPrefix(o, "--") {
			opts = append(opts, o)
		}
	}
	sort.Strings(opts)
	return opts
}

// TestEveryKeyAndOptionHasAScenario: a setting documented in
// dist/framework.conf or read by tree.ReadFramework, and an option shown
// by dkms --help or taken by the parser, each has a scenario; each
// setting dkmsd reads is documented; no scenario is left for a name that
// is gone.
func TestEveryKeyAndOptionHasAScenario(t *testing.T) {
	covered := coveredNames()
	documented := documentedKeys(t)
	for _, k := range documented {
		if !covered[k] {
			t.Errorf("dist/framework.conf documents %s, but no scenario shows it acting: add one to keyCases", k)
		}
	}
	for _, k := range tree.FrameworkNames() {
		if !covered[k] {
			t.Errorf("framework.conf setting %s is read, but no scenario shows it acting: add one to keyCases", k)
		}
		if !slices.Contains(documented, k) {
			t.Errorf("framework.conf setting %s is read but not documented in dist/framework.conf", k)
		}
	}
	known := append(append(append([]string{}, documented...), tree.FrameworkNames()...), parsedOptions()...)
	for _, o := range helpOptions(t) {
		if !covered[o] {
			t.Errorf("dkms --help shows %s, but no scenario shows it acting: add one to optionCases", o)
		}
		known = append(known, o)
	}
	for _, o := range parsedOptions() {
		if !covered[o] {
			t.Errorf("the parser takes %s, but no scenario shows it acting: add one to optionCases", o)
		}
	}
	for _, cs := range [][]actsCase{keyCases, optionCases} {
		for _, c := range cs {
			if !slices.Contains(known, c.name) {
				t.Errorf("scenario for %s, which is neither documented, read nor parsed", c.name)
			}
		}
	}
}

// TestEveryKeyAndOptionActsRealHeaders plays every scenario twice, with
// and without its setting or option, each time on a fresh relocated root,
// and requires different outcomes.
func TestEveryKeyAndOptionActsRealHeaders(t *testing.T) {
	t.Parallel()
	s := &actsSetup{parent: t}
	for _, c := range keyCases {
		t.Run(c.name, func(t *testing.T) { t.Parallel(); playActs(t, s, c) })
	}
	for _, c := range optionCases {
		t.Run(c.name, func(t *testing.T) { t.Parallel(); playActs(t, s, c) })
	}
	for _, c := range dkms34Cases {
		t.Run(c.name, func(t *testing.T) { t.Parallel(); playActs(t, s, c) })
	}
}

// playActs runs c's scenario with and without its setting or option.
func playActs(t *testing.T, s *actsSetup, c actsCase) {
	with, without := c.run(t, s, true), c.run(t, s, false)
	if with == without {
		t.Errorf("%s changes nothing: both runs show\n%s", c.name, with)
	}
	if c.want != "" && (!strings.Contains(with, c.want) || strings.Contains(without, c.want)) {
		t.Errorf("%s: want %q with it and not without it\nwith:\n%s\nwithout:\n%s", c.name, c.want, with, without)
	}
}

// actsSetup hands the scenarios their roots; the root with a built module
// is built once, in the parent test's temporary dir, and copied.
type actsSetup struct {
	parent *testing.T
	once   sync.Once
	built  *batchRoot
	err    string
}

// root is a fresh relocated root over the real headers of two kernels.
func (s *actsSetup) root(t *testing.T) *batchRoot {
	t.Helper()
	return newBatchRoot(t)
}

// builtKernel is the kernel the built root's module is built for: one
// with an initrd in /boot when there is one.
func builtKernel(b *batchRoot) string {
	for i := len(b.kernels) - 1; i >= 0; i-- {
		if _, err := os.Stat("/boot/initrd.img-" + b.kernels[i]); err == nil {
			return b.kernels[i]
		}
	}
	return b.kernels[0]
}

// builtRoot is a fresh copy of a root where dkmsd_hello/1.0 (with
// REMAKE_INITRD="yes") is built for builtKernel.
func (s *actsSetup) builtRoot(t *testing.T) (*batchRoot, string) {
	t.Helper()
	s.once.Do(func() {
		b := newBatchRoot(t)
		src := b.root
		b.root = s.parent.TempDir() // outlives this subtest
		if out, err := exec.Command("cp", "-a", src+"/.", b.root).CombinedOutput(); err != nil {
			s.err = string(out)
			return
		}
		b.cloneHello(t, "dkmsd_hello", "1.0", []string{`REMAKE_INITRD="yes"`}, nil)
		if r := b.run(t, "build", "dkmsd_hello/1.0", "-k", builtKernel(b)); r.Code != 0 {
			s.err = r.Out
			return
		}
		s.built = b
	})
	if s.built == nil {
		t.Fatalf("the built root could not be made: %s", s.err)
	}
	b := newBatchRoot(t)
	if out, err := exec.Command("cp", "-a", s.built.root+"/.", b.root).CombinedOutput(); err != nil {
		t.Fatalf("copy the built root: %v: %s", err, out)
	}
	link := b.path("var/lib/dkms/dkmsd_hello/1.0/source")
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(b.path("usr/src/dkmsd_hello-1.0"), link); err != nil {
		t.Fatal(err)
	}
	return b, builtKernel(b)
}

// withInitrd copies the machine's initrd of k into the root's /boot and
// returns its path there.
func withInitrd(t *testing.T, b *batchRoot, k string) string {
	t.Helper()
	src := "/boot/initrd.img-" + k
	data, err := os.ReadFile(src)
	if err != nil {
		testkit.Missing(t, src+" (apt-get install -y linux-image-cloud-amd64)")
	}
	img := b.path("boot", "initrd.img-"+k)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// initrdOutcome says how the image at img compares with the original
// bytes: unchanged, appended to (the original is a prefix) or rewritten.
func initrdOutcome(t *testing.T, img string, original []byte) string {
	t.Helper()
	now, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case bytes.Equal(now, original):
		return "initrd unchanged"
	case bytes.HasPrefix(now, original):
		return "initrd appended"
	default:
		return "initrd rewritten"
	}
}

// writeFramework writes the root's framework.conf.
func writeFramework(t *testing.T, b *batchRoot, lines ...string) {
	t.Helper()
	if err := os.WriteFile(b.path("etc/dkms/framework.conf"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// failbuild copies testdata's dkmsd_failbuild into the root, with extra
// dkms.conf lines, and a MAKE that fails at once: make runs (with the -j
// and KERNELRELEASE dkms gives it) and stops with "no rule", so a build
// that gets that far ends with 10 in no time.
func failbuild(t *testing.T, b *batchRoot, confExtra ...string) {
	t.Helper()
	dir := testkit.CopyModule(t, b.root, "dkmsd_failbuild-1.0")
	f, err := os.OpenFile(filepath.Join(dir, "dkms.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := append([]string{`MAKE[0]="make -f /dev/null dkmsd-no-such-target"`}, confExtra...)
	if _, err := f.WriteString(strings.Join(lines, "\n") + "\n"); err != nil {
		t.Fatal(err)
	}
}

// exitOf is a result's exit status, as a scenario shows it.
func exitOf(r testkit.Result) string { return fmt.Sprintf("exit %d", r.Code) }

// opt is args with the option words added when with is set.
func opt(with bool, args []string, option ...string) []string {
	if with {
		return append(slices.Clone(args), option...)
	}
	return args
}

// makeLine is the make command a failed build logged in make.log.
func makeLine(t *testing.T, b *batchRoot, module string) string {
	t.Helper()
	data, err := os.ReadFile(b.path("var/lib/dkms", module, "1.0", "build", "make.log"))
	if err != nil {
		return "no make.log"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "# command: make") {
			return strings.TrimPrefix(l, "# command: ")
		}
	}
	return "no make line"
}

// signedModule reports whether a module file ends with a module signature.
func signedModule(t *testing.T, path string) bool {
	t.Helper()
	data, err := tree.ReadModuleFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return bytes.HasSuffix(data, []byte("~Module signature appended~\n"))
}

// onlyKo is the one module file (or link to one) under dir; it fails
// the test otherwise.
func onlyKo(t *testing.T, dir string) string {
	t.Helper()
	var kos []string
	for _, p := range testkit.Tree(t, dir) {
		p, _, _ = strings.Cut(p, " -> ")
		if strings.Contains(filepath.Base(p), ".ko") {
			kos = append(kos, p)
		}
	}
	if len(kos) != 1 {
		t.Fatalf("module files under %s: %q, want one", dir, kos)
	}
	return filepath.Join(dir, kos[0])
}

// TestUnknownOptionRefusedAsDkms3010: an option dkms does not have is
// refused as dkms 3.0.10 refuses it: the same error on stderr, the usage
// on stdout, exit 2, wherever it stands on the line.
func TestUnknownOptionRefusedAsDkms3010(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(referenceDkms); err != nil {
		testkit.Missing(t, "Debian's dkms 3.0.10 at "+referenceDkms+" (apt-get install -y dkms)")
	}
	for _, argv := range [][]string{{"--bogus"}, {"status", "--bogus"}, {"-x", "status"}, {"status", "--verbosex"}, {"build", "--no-such-thing=1"}} {
		ref := testkit.Cmd{Argv: append([]string{referenceDkms}, argv...)}.Run(t)
		got := testkit.Cmd{Argv: append([]string{testkit.Binary(t, "dkms")}, argv...)}.Run(t)
		if ref.Code != 2 || !strings.HasPrefix(ref.Stdout, "Usage: ") {
			t.Fatalf("dkms 3.0.10 %q: exit %d\n%s", argv, ref.Code, ref.Out)
		}
		if got.Code != ref.Code || got.Stderr != ref.Stderr || !strings.HasPrefix(got.Stdout, "Usage: ") {
			t.Errorf("dkms %q: exit %d, stderr %q, stdout %q; dkms 3.0.10: exit %d, stderr %q, usage on stdout",
				argv, got.Code, got.Stderr, firstLine(got.Stdout), ref.Code, ref.Stderr)
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
