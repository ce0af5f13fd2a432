//go:build systemtest

package main

// The crash harness: a relocated root over the real headers of two
// kernels, dkms commands killed with SIGKILL on it, and after each kill
// the invariants that make a kill harmless. Two tests drive it: random
// kills of five kinds of command (crash_random_system_test.go) and kills
// of an uninstall at every one of its steps (crash_sweep_system_test.go).
// They are system tests because they are long and timing matters to the
// first: `make test` runs them alone, after the parallel tests.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// crashModule is one module of the harness and the DEST_MODULE_NAMEs of
// its .ko files.
type crashModule struct {
	name, version string
	dests         []string
}

var (
	crashHello    = &crashModule{"dkmsd_hello", "1.0", []string{"dkmsd_hello"}}
	crashTwomods  = &crashModule{"dkmsd_twomods", "2.1", []string{"dkmsd_alpha", "dkmsd_beta_renamed"}}
	crashInitrdMo = &crashModule{"dkmsd_crashinitrd", "1.0", []string{"dkmsd_crashinitrd"}}
)

// crashCmd is one command of a run.
type crashCmd struct {
	kind   string // install, uninstall, remove, autoinstall, initrd
	mod    *crashModule
	kernel string // "" for remove --all
	args   []string
	// durKey names the command's duration estimate; prepare are the
	// commands that give it work to do, run whole before it.
	durKey  string
	prepare [][]string
}

// crashRun is one killed run, for reports.
type crashRun struct {
	n       int
	cmd     crashCmd
	at      string // where it was killed, or that it ended first
	killed  bool   // false: it ended before the kill
	out     string
	listing string // tree listing, taken once per run at its first violation
}

// crashViolation is one broken invariant.
type crashViolation struct {
	category string
	report   string
}

// crashOriginal names a fake original module: the first DEST of mod,
// placed in the kernel's updates/ before mod was ever installed there.
type crashOriginal struct {
	mod    *crashModule
	kernel string
}

type crashHarness struct {
	t    *testing.T
	b    *batchRoot
	arch string
	mods []*crashModule
	// initrdKernel is the kernel with an initrd (a copy of the machine's)
	// at initrdPath; crashInitrdMo (REMAKE_INITRD) goes into it.
	initrdKernel, initrdPath string
	originals                map[crashOriginal][]byte
	// goodInitrd is the last image a completed command left.
	goodInitrd []byte
	// wholeImages are the images already read back whole; imageHolds
	// says whether each holds the REMAKE_INITRD module.
	wholeImages map[[32]byte]bool
	imageHolds  map[[32]byte]bool
	violations  []crashViolation
	seen        map[string]bool // violations reported, by category and text
}

// newCrashHarness makes the harness for mods on b, adds them and copies
// the machine's initrd of the newest kernel that has one into the root.
func newCrashHarness(t *testing.T, b *batchRoot, mods ...*crashModule) *crashHarness {
	t.Helper()
	h := &crashHarness{t: t, b: b, arch: machineArch(), mods: mods, originals: map[crashOriginal][]byte{},
		wholeImages: map[[32]byte]bool{}, imageHolds: map[[32]byte]bool{}, seen: map[string]bool{}}
	h.initrdKernel = b.kernelWithInitrd(t)
	h.initrdPath = b.path("boot", "initrd.img-"+h.initrdKernel)
	copyBootFile(t, "/boot/initrd.img-"+h.initrdKernel, h.initrdPath)
	h.b.env = append(slices.Clone(b.env), "TMPDIR="+b.path("tmp"))
	if err := os.MkdirAll(b.path("tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The tracer follows every process by ptrace; a build inside bwrap's
	// namespaces ended the traced command by SIGKILL in a fresh Debian
	// root. The harness is about the tree and install steps, and the
	// sandbox has tests of its own: builds here run as dkms runs them.
	writeFramework(t, b, "build_sandbox=none")
	for _, m := range mods {
		switch m {
		case crashInitrdMo:
			b.cloneHello(t, m.name, m.version, []string{`REMAKE_INITRD="yes"`}, nil)
		default:
			testkit.CopyModule(t, b.root, m.name+"-"+m.version)
		}
		b.mustRun(t, "add", m.name+"/"+m.version)
	}
	return h
}

// placeOriginal puts a fake original of m into k's updates/: m's first
// module as built for k, relabelled version 0.9 so that m may replace it.
func (h *crashHarness) placeOriginal(m *crashModule, k string) {
	t := h.t
	t.Helper()
	built := h.builtFile(m, k, m.dests[0])
	data, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(data, []byte("version="+m.version+"\x00")) != 1 {
		t.Fatalf("%s: want one version=%s entry", built, m.version)
	}
	orig := bytes.Replace(data, []byte("version="+m.version+"\x00"), []byte("version=0.9\x00"), 1)
	o := crashOriginal{m, k}
	h.originals[o] = orig
	p := h.originalPath(o)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, orig, 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkProbeLocks verifies that the probe takes the tree lock: while the
// test holds it, the probe waits and says so.
func (h *crashHarness) checkProbeLocks() {
	t, b := h.t, h.b
	lock := b.path("var/lib/dkms", lifecycle.LockFile)
	f, err := os.OpenFile(lock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	cmd := b.command(t.Context(), b.env, append(slices.Clone(crashProbe), "-k", b.kernels[0])...)
	var stderr testkit.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "Waiting for "+lock) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	waited := strings.Contains(stderr.String(), "Waiting for "+lock)
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	err = cmd.Wait()
	if !waited {
		t.Fatalf("the probe dkms %s did not wait for the tree lock: it does not recover the tree\nstderr:\n%s", strings.Join(crashProbe, " "), stderr.String())
	}
	if code := exitCode(err); code != 3 {
		t.Fatalf("the probe dkms %s: %v, want exit 3\nstderr:\n%s", strings.Join(crashProbe, " "), err, stderr.String())
	}
}

// exitCode is a finished command's exit code (-1: it did not exit).
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

// checkSettled checks the untouched tree at setup: the harness's own
// checks must pass on it.
func (h *crashHarness) checkSettled() {
	base := &crashRun{cmd: crashCmd{kind: "setup"}, at: "setup"}
	h.checkImmediate(base)
	h.checkRecovered(base, false)
	h.checkEnd(base)
	if len(h.violations) > 0 {
		h.t.Fatalf("the invariants do not hold after setup: %q", h.violations)
	}
	h.goodInitrd = mustReadFile(h.t, h.initrdPath)
}

// afterKill checks a killed run: what holds at once, then after the
// probe's recovery, then after the killed command ran again whole.
// staleInitrd: the harness made the image stale on purpose (--no-initrd)
// and the killed command was the one to regenerate it.
func (h *crashHarness) afterKill(r *crashRun, pgid int, staleInitrd bool) {
	h.checkOrphans(r, pgid)
	h.checkImmediate(r)

	probe := h.b.run(h.t, append(slices.Clone(crashProbe), "-k", h.b.kernels[0])...)
	if probe.Code != 3 || !strings.Contains(probe.Stderr, "is not located in the DKMS tree") {
		h.violate(r, "probe", "the probe exited %d, want 3\nstdout:\n%s\nstderr:\n%s", probe.Code, probe.Stdout, probe.Stderr)
	}
	h.checkRecovered(r, staleInitrd)

	cmd := r.cmd
	again := h.b.run(h.t, cmd.args...)
	ok := again.Code == 0
	if cmd.kind == "remove" && again.Code == 3 && strings.Contains(again.Stderr, "is not located in the DKMS tree") {
		ok = true // the killed run had removed it already
	}
	if !ok {
		h.violate(r, "(d) rerun", "the rerun of dkms %s exited %d\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.args, " "), again.Code, again.Stdout, again.Stderr)
	}
	h.checkOutcome(r)
	h.checkEnd(r)
	if data, err := os.ReadFile(h.initrdPath); err == nil {
		h.goodInitrd = data
	}
}

// checkOrphans reports processes of the killed command that escaped the
// SIGKILL of its process group (a make in a group of its own, say) and
// those of the group still alive after 5 s, and kills them all so that the
// next run starts clean.
func (h *crashHarness) checkOrphans(r *crashRun, pgid int) {
	var escaped []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := processesUsing(h.b.root)
		escaped = escaped[:0]
		dying := 0
		for pid, p := range left {
			if p.pgid == pgid && time.Now().Before(deadline) {
				dying++ // signalled, maybe still in a system call
				continue
			}
			escaped = append(escaped, fmt.Sprintf("%d (process group %d): %.200s", pid, p.pgid, p.cmdline))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if dying == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(escaped) == 0 {
		return
	}
	sort.Strings(escaped)
	h.violate(r, "processes survive the kill", "%d processes of the killed dkms (process group %d) still run after SIGKILL of its process group:\n  %s", len(escaped), pgid, strings.Join(escaped, "\n  "))
	for end := time.Now().Add(10 * time.Second); len(processesUsing(h.b.root)) > 0 && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
}

// checkImmediate checks what must hold at any moment: the originals are
// never lost (b), the initrd is whole (c).
func (h *crashHarness) checkImmediate(r *crashRun) {
	for _, o := range h.originalsSorted() {
		if msg := h.originalKept(o); msg != "" {
			h.violate(r, "(b) original lost", "%s", msg)
		}
	}
	data, err := os.ReadFile(h.initrdPath)
	if err != nil {
		h.violate(r, "(c) initrd", "%v", err)
		return
	}
	if bytes.Equal(data, h.goodInitrd) {
		return
	}
	if err := h.readsWhole(data); err != nil {
		h.violate(r, "(c) initrd", "%s is neither the previous image (%d bytes) nor a whole new one (%d bytes): %v", h.initrdPath, len(h.goodInitrd), len(data), err)
	}
}

func (h *crashHarness) readsWhole(data []byte) error {
	sum := sha256.Sum256(data)
	if h.wholeImages[sum] {
		return nil
	}
	img, err := initrd.Parse(data)
	if err != nil {
		return err
	}
	if _, err := img.Resolve("lib/modules/" + h.initrdKernel); err != nil {
		return err
	}
	h.wholeImages[sum] = true
	return nil
}

// originalKept says how the fake original o was lost, or "".
func (h *crashHarness) originalKept(o crashOriginal) string {
	want := h.originals[o]
	p := h.originalPath(o)
	if got, err := os.ReadFile(p); err == nil && bytes.Equal(got, want) {
		return ""
	}
	saved := h.archivedPath(o)
	got, err := os.ReadFile(saved)
	if err != nil || !bytes.Equal(got, want) {
		return fmt.Sprintf("the original %s of %s is neither in place nor archived as %s (%v)", p, o.kernel, saved, err)
	}
	origin, err := os.ReadFile(saved + ".origin")
	if err != nil || strings.TrimSpace(string(origin)) != p {
		return fmt.Sprintf("the original of %s is archived as %s but %s.origin = %q (%v), want %s", o.kernel, saved, saved, origin, err, p)
	}
	return ""
}

// checkRecovered checks the invariants that hold once a command has taken
// the lock: every module fully installed or not at all (a), originals
// archived exactly while installed (b), the initrd holding the
// REMAKE_INITRD module exactly when it is installed (c; staleInitrd: or
// still the image from before the kill), no intent and no initrd marked
// pending left, status well-formed.
func (h *crashHarness) checkRecovered(r *crashRun, staleInitrd bool) {
	for _, m := range h.mods {
		for _, k := range h.b.kernels {
			for _, msg := range h.installState(m, k) {
				h.violate(r, "(a) half installed", "%s", msg)
			}
		}
	}
	for _, o := range h.originalsSorted() {
		p, saved := h.originalPath(o), h.archivedPath(o)
		if h.installed(o.mod, o.kernel) {
			if pathPresent(p) {
				h.violate(r, "(b) original not archived", "%s is installed on %s but the original %s is still in place", o.mod.name, o.kernel, p)
			}
		} else {
			if !pathPresent(p) {
				h.violate(r, "(b) original not restored", "%s is not installed on %s but the original %s is not back in place", o.mod.name, o.kernel, p)
			}
			if pathPresent(filepath.Dir(saved)) {
				h.violate(r, "(b) original not restored", "%s is not installed on %s but %s still exists: %q", o.mod.name, o.kernel, filepath.Dir(saved), testkit.Tree(h.t, filepath.Dir(saved)))
			}
		}
	}
	h.checkInitrdInStep(r, staleInitrd)
	if intents, _ := filepath.Glob(h.b.path("var/lib/dkms/.dkmsd/intent/*.json")); len(intents) > 0 {
		h.violate(r, "intent left", "intents left after a command took the lock: %q", intents)
	}
	if pending, _ := filepath.Glob(h.b.path("var/lib/dkms/.dkmsd/initrd/*.pending")); len(pending) > 0 {
		h.violate(r, "initrd left pending", "initrds still marked pending after a command took the lock: %q", pending)
	}
	h.checkStatus(r)
}

// checkInitrdInStep checks that the image holds the REMAKE_INITRD module
// exactly when it is installed on the initrd's kernel.
func (h *crashHarness) checkInitrdInStep(r *crashRun, staleInitrd bool) {
	data, err := os.ReadFile(h.initrdPath)
	if err != nil {
		h.violate(r, "(c) initrd", "%v", err)
		return
	}
	if staleInitrd && bytes.Equal(data, h.goodInitrd) {
		return
	}
	sum := sha256.Sum256(data)
	in, ok := h.imageHolds[sum]
	if !ok {
		img, err := initrd.Parse(data)
		if err != nil {
			h.violate(r, "(c) initrd", "%s does not read back: %v", h.initrdPath, err)
			return
		}
		in = imageHasModule(img, h.initrdKernel, crashInitrdMo.dests[0])
		h.imageHolds[sum], h.wholeImages[sum] = in, true
	}
	if want := h.installed(crashInitrdMo, h.initrdKernel); in != want {
		h.violate(r, "(c) initrd out of step", "%s holds %s: %v, but the module is installed: %v", h.initrdPath, crashInitrdMo.dests[0], in, want)
	}
}

// checkStatus checks that dkms status is well-formed and agrees with the
// kernel links.
func (h *crashHarness) checkStatus(r *crashRun) {
	st := h.b.run(h.t, "status")
	if st.Code != 0 {
		h.violate(r, "status", "dkms status exited %d: %s", st.Code, st.Stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(st.Stdout), "\n") {
		if l == "" {
			continue
		}
		known := false
		for _, m := range h.mods {
			known = known || strings.HasPrefix(l, m.name+"/"+m.version)
		}
		if !known || strings.Contains(l, "broken") || strings.Contains(l, "WARNING") {
			h.violate(r, "status", "dkms status line %q", l)
		}
		for _, m := range h.mods {
			for _, k := range h.b.kernels {
				if strings.HasPrefix(l, fmt.Sprintf("%s/%s, %s, %s: ", m.name, m.version, k, h.arch)) {
					if got, want := strings.Contains(l, ": installed"), h.installed(m, k); got != want {
						h.violate(r, "status", "dkms status says %q but the kernel link says installed=%v", l, want)
					}
				}
			}
		}
	}
}

// installState lists what makes module m on kernel k neither fully
// installed nor absent.
func (h *crashHarness) installState(m *crashModule, k string) []string {
	var bad []string
	link := h.b.path("var/lib/dkms", m.name, "kernel-"+k+"-"+h.arch)
	target, linkErr := os.Readlink(link)
	dep := string(readOrEmpty(h.b.path("lib/modules", k, "modules.dep")))
	listed := func(rel string) bool { return strings.HasPrefix(dep, rel+":") || strings.Contains(dep, "\n"+rel+":") }
	if linkErr == nil {
		if target != m.version+"/"+k+"/"+h.arch {
			bad = append(bad, fmt.Sprintf("%s -> %s, want %s/%s/%s", link, target, m.version, k, h.arch))
		}
		for _, d := range m.dests {
			built := h.builtFile(m, k, d)
			if built == "" {
				bad = append(bad, fmt.Sprintf("%s is installed on %s (%s) but %s is not built", m.name, k, link, d))
				continue
			}
			rel := "updates/dkms/" + filepath.Base(built)
			inst := h.b.path("lib/modules", k, rel)
			got, err := os.ReadFile(inst)
			if err != nil || !bytes.Equal(got, mustReadFile(h.t, built)) {
				bad = append(bad, fmt.Sprintf("%s is installed on %s but %s is missing or differs from %s (%v)", m.name, k, inst, built, err))
			}
			if !listed(rel) {
				bad = append(bad, fmt.Sprintf("%s is installed on %s but modules.dep does not list %s", m.name, k, rel))
			}
		}
		return bad
	}
	for _, d := range m.dests {
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
			rel := "updates/dkms/" + d + ext
			if inst := h.b.path("lib/modules", k, rel); pathPresent(inst) {
				bad = append(bad, fmt.Sprintf("%s is not installed on %s (no %s) but %s exists", m.name, k, link, inst))
			}
			if listed(rel) {
				bad = append(bad, fmt.Sprintf("%s is not installed on %s but modules.dep lists %s", m.name, k, rel))
			}
		}
	}
	return bad
}

// checkOutcome checks the end state of the command that was killed and
// run again (d).
func (h *crashHarness) checkOutcome(r *crashRun) {
	c := r.cmd
	fail := func(format string, args ...any) { h.violate(r, "(d) end state", format, args...) }
	switch c.kind {
	case "install":
		if !h.installed(c.mod, c.kernel) {
			fail("%s is not installed on %s after dkms %s", c.mod.name, c.kernel, strings.Join(c.args, " "))
		}
	case "uninstall":
		if h.installed(c.mod, c.kernel) || !h.built(c.mod, c.kernel) {
			fail("%s on %s after dkms %s: installed %v, built %v; want built only", c.mod.name, c.kernel, strings.Join(c.args, " "), h.installed(c.mod, c.kernel), h.built(c.mod, c.kernel))
		}
	case "autoinstall":
		for _, m := range h.mods {
			if !h.installed(m, c.kernel) {
				fail("%s is not installed on %s after dkms %s", m.name, c.kernel, strings.Join(c.args, " "))
			}
		}
	case "remove":
		ks := h.b.kernels
		if c.kernel != "" {
			ks = []string{c.kernel}
		}
		for _, k := range ks {
			if h.installed(c.mod, k) || h.built(c.mod, k) {
				fail("%s is still built or installed on %s after dkms %s", c.mod.name, k, strings.Join(c.args, " "))
			}
		}
		if c.kernel == "" {
			if p := h.b.path("var/lib/dkms", c.mod.name, c.mod.version); pathPresent(p) {
				fail("%s is still in the tree after dkms %s: %q", p, strings.Join(c.args, " "), testkit.Tree(h.t, p))
			}
		}
	}
}

// checkEnd checks what holds after a command completed: the invariants
// after recovery, the initrd in step with the REMAKE_INITRD module, and
// no temporary file of dkmsd's left in the trees.
func (h *crashHarness) checkEnd(r *crashRun) {
	h.checkImmediate(r)
	h.checkRecovered(r, false)
	for _, p := range dkmsdTempFiles(h.b.root) {
		h.violate(r, "temporary files left", "%s", p)
	}
}

func (h *crashHarness) violate(r *crashRun, category, format string, args ...any) {
	body := fmt.Sprintf(format, args...)
	// A state a kill left behind is reported once, at the run that made
	// it, not again at every later run.
	key := category + "\x00" + body
	if h.seen[key] {
		return
	}
	h.seen[key] = true
	msg := fmt.Sprintf("run %d: dkms %s (%s): %s", r.n, strings.Join(r.cmd.args, " "), r.at, body)
	if r.listing == "" {
		var l []string
		for _, tr := range []string{"var/lib/dkms", "lib/modules", "boot"} {
			for _, p := range testkit.Tree(h.t, h.b.path(tr)) {
				// The build dirs' contents, the logs and depmod's
				// indexes say nothing about the invariants.
				if strings.Contains(p, "/build/") || strings.Contains(p, "/log/") || strings.HasPrefix(path.Base(p), "modules.") {
					continue
				}
				l = append(l, tr+"/"+p)
			}
		}
		r.listing = strings.Join(l, "\n    ")
		msg += fmt.Sprintf("\n  output of the killed command:\n%s\n  tree:\n    %s", indent(r.out, "    "), r.listing)
	}
	h.violations = append(h.violations, crashViolation{category, msg})
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return prefix + "(nothing)"
	}
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// reportViolations fails the test once per category of violation, with
// the first few reports of each.
func (h *crashHarness) reportViolations() {
	t := h.t
	if left, _ := os.ReadDir(h.b.path("tmp")); len(left) > 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		t.Logf("left in TMPDIR by killed processes (not checked): %q", names)
	}
	by := map[string][]string{}
	var cats []string
	for _, v := range h.violations {
		if by[v.category] == nil {
			cats = append(cats, v.category)
		}
		by[v.category] = append(by[v.category], v.report)
	}
	for _, c := range cats {
		reports := by[c]
		shown := reports[:min(3, len(reports))]
		t.Errorf("%s: %d violations; the first:\n%s", c, len(reports), strings.Join(shown, "\n\n"))
	}
}

// originalsSorted lists the fake originals in a stable order.
func (h *crashHarness) originalsSorted() []crashOriginal {
	var out []crashOriginal
	for o := range h.originals {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].mod.name+" "+out[i].kernel < out[j].mod.name+" "+out[j].kernel
	})
	return out
}

func (h *crashHarness) originalPath(o crashOriginal) string {
	return h.b.path("lib/modules", o.kernel, "updates", o.mod.dests[0]+".ko")
}

func (h *crashHarness) archivedPath(o crashOriginal) string {
	return h.b.path("var/lib/dkms", o.mod.name, "original_module", o.kernel, h.arch, o.mod.dests[0]+".ko")
}

// builtFile is the built module file dest of m for k, or "".
func (h *crashHarness) builtFile(m *crashModule, k, dest string) string {
	return tree.FindModuleFile(h.b.path("var/lib/dkms", m.name, m.version, k, h.arch, "module"), dest)
}

func (h *crashHarness) built(m *crashModule, k string) bool {
	for _, d := range m.dests {
		if h.builtFile(m, k, d) == "" {
			return false
		}
	}
	return true
}

func (h *crashHarness) installed(m *crashModule, k string) bool {
	target, err := os.Readlink(h.b.path("var/lib/dkms", m.name, "kernel-"+k+"-"+h.arch))
	return err == nil && target == m.version+"/"+k+"/"+h.arch && h.built(m, k)
}

// traced runs dkms args under the tracer (killed at step killAt, 0:
// never) and returns its result and output.
func (h *crashHarness) traced(args []string, killAt int) (traceResult, string) {
	t := h.t
	t.Helper()
	outPath := filepath.Join(t.TempDir(), "out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	argv := append([]string{h.b.bin, "--root", h.b.root}, args...)
	res, err := traceRun(argv, h.b.env, h.b.root, out, h.crashStep, killAt)
	if err != nil {
		t.Fatalf("trace dkms %s: %v", strings.Join(args, " "), err)
	}
	return res, string(mustReadFile(t, outPath))
}

// crashStep says whether a change to p makes a step for the tracer: p is
// in the root's trees, and neither the lock file (its content only tells
// waiters who holds the lock) nor one of depmod's indexes other than
// modules.dep (kmod writes each one whole, and no check reads them).
func (h *crashHarness) crashStep(p string) bool {
	if p == h.b.path("var/lib/dkms", lifecycle.LockFile) {
		return false
	}
	if dir, base := filepath.Split(p); strings.HasPrefix(base, "modules.") && filepath.Dir(filepath.Dir(dir)) == h.b.path("lib/modules") {
		return base == "modules.dep" || depmodTemp.MatchString(base)
	}
	for _, tr := range []string{"var/lib/dkms", "lib/modules", "boot"} {
		if strings.HasPrefix(p, h.b.path(tr)+"/") {
			return true
		}
	}
	return false
}

// depmodTemp is the temporary file depmod writes modules.dep into.
var depmodTemp = regexp.MustCompile(`^modules\.dep\.[0-9]`)
