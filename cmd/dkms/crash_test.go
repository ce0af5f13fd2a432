package main

// The crash harness: dkms commands killed with SIGKILL at random moments
// on a relocated root over the real headers of two kernels, and after each
// kill the invariants that make a kill harmless. It shares newBatchRoot and
// its helpers with autoinstall_real_test.go.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
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

// crashRunsEnv sets the number of killed runs (default 200);
// crashSeedEnv replays a run sequence (the test logs its seed).
const (
	crashRunsEnv = "DKMSD_CRASH_RUNS"
	crashSeedEnv = "DKMSD_CRASH_SEED"
)

// crashBudget bounds the killed runs (about 100 s on an idle 2-core
// machine); setup takes about 20 s more.
const crashBudget = 3 * time.Minute

// crashModule is one module of the harness and the DEST_MODULE_NAMEs of
// its .ko files.
type crashModule struct {
	name, version string
	dests         []string
}

var crashModules = []crashModule{
	{"dkmsd_hello", "1.0", []string{"dkmsd_hello"}},
	{"dkmsd_twomods", "2.1", []string{"dkmsd_alpha", "dkmsd_beta_renamed"}},
	// REMAKE_INITRD="yes": installing or removing it changes the initrd.
	{"dkmsd_crashinitrd", "1.0", []string{"dkmsd_crashinitrd"}},
}

// crashProbe is the cheapest command that takes the tree lock (and so runs
// the recovery of a killed install or uninstall) and changes nothing:
// uninstall of a module that is not in the tree locks first, then exits 3.
// The setup checks that it really waits for the lock.
var crashProbe = []string{"uninstall", "dkmsd_nonexistent/0"}

// crashCmd is one command of a run.
type crashCmd struct {
	kind   string // install, uninstall, remove, autoinstall, initrd
	mod    *crashModule
	kernel string // "" for remove --all
	args   []string
	durKey string
}

// crashRun is one killed run, for reports.
type crashRun struct {
	n       int
	cmd     crashCmd
	delay   time.Duration
	killed  bool // false: it ended before the kill
	out     string
	listing string // tree listing, taken once per run at its first violation
}

// crashViolation is one broken invariant.
type crashViolation struct {
	category string
	report   string
}

type crashHarness struct {
	t            *testing.T
	b            *batchRoot
	arch         string
	initrdKernel string
	initrdPath   string
	// originals are the fake original dkmsd_hello.ko of each kernel, in
	// updates/ before anything was installed.
	originals map[string][]byte
	// goodInitrd is the last image a completed command left.
	goodInitrd []byte
	// wholeImages are the images already read back whole; imageHolds
	// says whether each holds the REMAKE_INITRD module.
	wholeImages map[[32]byte]bool
	imageHolds  map[[32]byte]bool
	durations   map[string]time.Duration
	rng         *rand.Rand
	violations  []crashViolation
	seen        map[string]bool // violations reported, by category and text
	stats       map[string]int
	wantRuns    int
}

// TestCrashSafetyKillRealHeaders kills dkms install, uninstall, remove,
// autoinstall and initrd with SIGKILL (the whole process group) after a
// random delay between 0 and the command's measured duration, at least 200
// times (DKMSD_CRASH_RUNS; DKMSD_CRASH_SEED replays a sequence), on a root
// whose modules were built once at setup, whose kernels have a fake
// original dkmsd_hello.ko in updates/, and whose cloud kernel has a copy
// of the machine's initrd and a REMAKE_INITRD module.
//
// After each kill, before any other command:
//   - the fake original's bytes are at their place or archived in
//     original_module/<k>/<a>/ with a .origin file naming the place (b);
//   - the initrd is the last good image or a new one that reads back
//     whole (c);
//   - no process of the killed command is still running (a SIGKILL of dkms
//     must not leave make or gcc writing into the tree).
//
// Then the probe (uninstall of a module not in the tree: it takes the lock,
// which recovers the killed install or uninstall, and changes nothing
// else), and after it:
//   - every module is either fully installed on each kernel (link, every
//     DEST file equal to the build, listed in modules.dep) or not at all
//     (no link, no file in updates/dkms, not in modules.dep) (a); this one
//     holds only after recovery: a killed install is half-done until the
//     next command takes the lock;
//   - (b) strictly: installed means archived, not installed means back in
//     place; no intent left; dkms status well-formed.
//
// Then the killed command again, uninterrupted: exit 0 (remove: or 3 when
// the killed run had finished removing) and its end state (d), the initrd
// holding the REMAKE_INITRD module exactly when it is installed, and no
// temporary file of dkmsd's left in the trees.
func TestCrashSafetyKillRealHeaders(t *testing.T) {
	b := newBatchRoot(t)
	h := &crashHarness{t: t, b: b, arch: machineArch(), originals: map[string][]byte{},
		wholeImages: map[[32]byte]bool{}, imageHolds: map[[32]byte]bool{}, durations: map[string]time.Duration{},
		seen: map[string]bool{}, stats: map[string]int{}}
	for _, k := range b.kernels {
		if _, err := os.Stat("/boot/initrd.img-" + k); err == nil {
			h.initrdKernel = k
		}
	}
	if h.initrdKernel == "" {
		testkit.Missing(t, "an initrd for "+strings.Join(b.kernels, " or ")+" in /boot (apt-get install -y linux-image-cloud-amd64)")
	}
	runs := 200
	if s := os.Getenv(crashRunsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			t.Fatalf("%s=%q: want a number of runs", crashRunsEnv, s)
		}
		runs = n
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashSeedEnv); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want a number", crashSeedEnv, s)
		}
		seed = n
	}
	t.Logf("seed %d (replay with %s=%d)", seed, crashSeedEnv, seed)
	h.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	setupStart := time.Now()
	h.setup()
	t.Logf("setup in %v; typical durations: %v", time.Since(setupStart).Round(time.Millisecond), h.durations)

	start := time.Now()
	done := 0
	for n := 1; n <= runs; n++ {
		if time.Since(start) > crashBudget {
			t.Logf("time budget of %v spent after %d runs", crashBudget, done)
			break
		}
		h.run(n)
		done++
	}
	h.wantRuns = runs
	h.report(done, time.Since(start))
}

// setup adds and builds the modules once, places the fake originals and
// the initrd, measures each command's typical duration, and checks that
// the invariants hold before the first kill.
func (h *crashHarness) setup() {
	t, b := h.t, h.b
	t.Helper()
	h.b.env = append(slices.Clone(b.env), "TMPDIR="+b.path("tmp"))
	if err := os.MkdirAll(b.path("tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	testkit.CopyModule(t, b.root, "dkmsd_hello-1.0")
	testkit.CopyModule(t, b.root, "dkmsd_twomods-2.1")
	b.cloneHello(t, "dkmsd_crashinitrd", "1.0", []string{`REMAKE_INITRD="yes"`}, nil)
	copyBootFile(t, "/boot/initrd.img-"+h.initrdKernel, b.path("boot", "initrd.img-"+h.initrdKernel))
	h.initrdPath = b.path("boot", "initrd.img-"+h.initrdKernel)
	kargs := []string{}
	for _, k := range b.kernels {
		kargs = append(kargs, "-k", k)
	}
	for _, m := range crashModules {
		b.mustRun(t, "add", m.name+"/"+m.version)
		b.mustRun(t, append([]string{"build", m.name + "/" + m.version}, kargs...)...)
	}
	// The fake originals: dkmsd_hello as built for the kernel, relabelled
	// version 0.9 so that 1.0 may replace it.
	for _, k := range b.kernels {
		built := h.builtFile(&crashModules[0], k, "dkmsd_hello")
		data, err := os.ReadFile(built)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Count(data, []byte("version=1.0\x00")) != 1 {
			t.Fatalf("%s: want one version=1.0 entry", built)
		}
		orig := bytes.Replace(data, []byte("version=1.0\x00"), []byte("version=0.9\x00"), 1)
		h.originals[k] = orig
		p := h.originalPath(k)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, orig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.checkProbeLocks()

	measure := func(key string, args ...string) {
		t.Helper()
		start := time.Now()
		b.mustRun(t, args...)
		if d := time.Since(start); d > h.durations[key] {
			h.durations[key] = d
		}
	}
	for _, k := range b.kernels {
		for _, m := range crashModules {
			measure("install "+k, "install", m.name+"/"+m.version, "-k", k)
		}
		for _, m := range crashModules {
			measure("uninstall "+k, "uninstall", m.name+"/"+m.version, "-k", k)
		}
		measure("autoinstall "+k, "autoinstall", "-k", k)
	}
	measure("remove", append([]string{"remove", "dkmsd_twomods/2.1"}, "--all")...)
	b.mustRun(t, "add", "dkmsd_twomods/2.1")
	for _, k := range b.kernels {
		measure("install "+k+" build", "install", "dkmsd_twomods/2.1", "-k", k)
	}
	b.mustRun(t, "remove", "dkmsd_crashinitrd/1.0", "--all")
	b.mustRun(t, "add", "dkmsd_crashinitrd/1.0")
	for _, k := range b.kernels {
		measure("autoinstall "+k+" build", "autoinstall", "-k", k)
	}
	b.mustRun(t, "uninstall", "dkmsd_crashinitrd/1.0", "-k", h.initrdKernel, "--no-initrd")
	measure("initrd", "initrd", "-k", h.initrdKernel)

	// The harness's own checks must pass on the untouched tree.
	base := &crashRun{n: 0, cmd: crashCmd{kind: "setup"}}
	h.checkImmediate(base)
	h.checkRecovered(base)
	h.checkEnd(base)
	if len(h.violations) > 0 {
		t.Fatalf("the invariants do not hold after setup: %q", h.violations)
	}
	h.goodInitrd = mustReadFile(t, h.initrdPath)
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
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("the probe dkms %s: %v, want exit 3\nstderr:\n%s", strings.Join(crashProbe, " "), err, stderr.String())
	}
}

// pick chooses the next command: mostly installs and uninstalls (each
// one that has work to do), sometimes initrd (after making the image stale
// with --no-initrd), remove (re-added after) and autoinstall.
func (h *crashHarness) pick() crashCmd {
	ks := h.b.kernels
	k := ks[h.rng.IntN(len(ks))]
	m := &crashModules[h.rng.IntN(len(crashModules))]
	mv := m.name + "/" + m.version
	switch r := h.rng.Float64(); {
	case r < 0.10:
		key := "autoinstall " + k
		for i := range crashModules {
			if !h.built(&crashModules[i], k) {
				key += " build"
				break
			}
		}
		return crashCmd{kind: "autoinstall", kernel: k, args: []string{"autoinstall", "-k", k}, durKey: key}
	case r < 0.22:
		ci := &crashModules[2]
		k = h.initrdKernel
		// Make the image stale first: the killed initrd has work to do.
		toggle := "install"
		if h.installed(ci, k) {
			toggle = "uninstall"
		}
		h.b.mustRun(h.t, toggle, ci.name+"/"+ci.version, "-k", k, "--no-initrd")
		return crashCmd{kind: "initrd", kernel: k, args: []string{"initrd", "-k", k}, durKey: "initrd"}
	case r < 0.30:
		if h.rng.IntN(2) == 0 {
			return crashCmd{kind: "remove", mod: m, args: []string{"remove", mv, "--all"}, durKey: "remove"}
		}
		return crashCmd{kind: "remove", mod: m, kernel: k, args: []string{"remove", mv, "-k", k}, durKey: "remove"}
	}
	if h.installed(m, k) {
		return crashCmd{kind: "uninstall", mod: m, kernel: k, args: []string{"uninstall", mv, "-k", k}, durKey: "uninstall " + k}
	}
	key := "install " + k
	if !h.built(m, k) {
		key += " build"
	}
	return crashCmd{kind: "install", mod: m, kernel: k, args: []string{"install", mv, "-k", k}, durKey: key}
}

// run is one killed run and its checks.
func (h *crashHarness) run(n int) {
	cmd := h.pick()
	dur := h.durations[cmd.durKey]
	if dur == 0 {
		dur = time.Second
	}
	r := &crashRun{n: n, cmd: cmd, delay: time.Duration(h.rng.Int64N(int64(dur) + 1))}
	var pgid int
	r.killed, pgid, r.out = h.kill(cmd.args, r.delay)
	h.stats[cmd.kind]++
	if r.killed {
		h.stats["killed"]++
	}

	h.checkOrphans(r, pgid)
	h.checkImmediate(r)

	probe := h.b.run(h.t, append(slices.Clone(crashProbe), "-k", h.b.kernels[0])...)
	if probe.Code != 3 || !strings.Contains(probe.Stderr, "is not located in the DKMS tree") {
		h.violate(r, "probe", "the probe exited %d, want 3\nstdout:\n%s\nstderr:\n%s", probe.Code, probe.Stdout, probe.Stderr)
	}
	h.checkRecovered(r)

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
	if cmd.kind == "remove" {
		if _, err := os.Stat(h.b.path("var/lib/dkms", cmd.mod.name, cmd.mod.version, "source")); err != nil {
			h.b.mustRun(h.t, "add", cmd.mod.name+"/"+cmd.mod.version)
		}
	}
	if data, err := os.ReadFile(h.initrdPath); err == nil {
		h.goodInitrd = data
	}
}

// kill runs dkms args in a process group of its own and kills the group
// with SIGKILL after delay; killed is false when it ended first.
func (h *crashHarness) kill(args []string, delay time.Duration) (killed bool, pgid int, out string) {
	cmd := h.b.command(h.t.Context(), h.b.env, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	done := make(chan error, 1)
	pgid = cmd.Process.Pid
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		return false, pgid, buf.String()
	case <-time.After(delay):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err := <-done
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return true, pgid, buf.String()
			}
		}
		return false, pgid, buf.String()
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

// liveProcess is a process found by processesUsing.
type liveProcess struct {
	cmdline string
	pgid    int
}

// processesUsing lists the live processes (not this one) whose command
// line names dir or whose working directory is under it.
func processesUsing(dir string) map[int]liveProcess {
	out := map[int]liveProcess{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cmdline := strings.TrimSpace(string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if !strings.Contains(cmdline, dir) && cwd != dir && !strings.HasPrefix(cwd, dir+"/") {
			continue
		}
		// /proc/<pid>/stat: pid (comm) state ppid pgrp …
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		pgid, _ := strconv.Atoi(f[2])
		out[pid] = liveProcess{cmdline, pgid}
	}
	return out
}

// checkImmediate checks what must hold at any moment: the originals are
// never lost (b), the initrd is whole (c).
func (h *crashHarness) checkImmediate(r *crashRun) {
	for _, k := range h.b.kernels {
		if msg := h.originalKept(k); msg != "" {
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

// originalKept says how the fake original of kernel k was lost, or "".
func (h *crashHarness) originalKept(k string) string {
	want := h.originals[k]
	p := h.originalPath(k)
	if got, err := os.ReadFile(p); err == nil && bytes.Equal(got, want) {
		return ""
	}
	saved := h.archivedPath(k)
	got, err := os.ReadFile(saved)
	if err != nil || !bytes.Equal(got, want) {
		return fmt.Sprintf("the original %s of %s is neither in place nor archived as %s (%v)", p, k, saved, err)
	}
	origin, err := os.ReadFile(saved + ".origin")
	if err != nil || strings.TrimSpace(string(origin)) != p {
		return fmt.Sprintf("the original of %s is archived as %s but %s.origin = %q (%v), want %s", k, saved, saved, origin, err, p)
	}
	return ""
}

// checkRecovered checks the invariants that hold once a command has taken
// the lock: every module fully installed or not at all (a), originals
// archived exactly while installed (b), no intent left, status
// well-formed.
func (h *crashHarness) checkRecovered(r *crashRun) {
	for i := range crashModules {
		m := &crashModules[i]
		for _, k := range h.b.kernels {
			for _, msg := range h.installState(m, k) {
				h.violate(r, "(a) half installed", "%s", msg)
			}
		}
	}
	for _, k := range h.b.kernels {
		p, saved := h.originalPath(k), h.archivedPath(k)
		if h.installed(&crashModules[0], k) {
			if pathPresent(p) {
				h.violate(r, "(b) original not archived", "dkmsd_hello is installed on %s but the original %s is still in place", k, p)
			}
		} else {
			if !pathPresent(p) {
				h.violate(r, "(b) original not restored", "dkmsd_hello is not installed on %s but the original %s is not back in place", k, p)
			}
			if pathPresent(filepath.Dir(saved)) {
				h.violate(r, "(b) original not restored", "dkmsd_hello is not installed on %s but %s still exists: %q", k, filepath.Dir(saved), testkit.Tree(h.t, filepath.Dir(saved)))
			}
		}
	}
	if intents, _ := filepath.Glob(h.b.path("var/lib/dkms/.dkmsd/intent/*.json")); len(intents) > 0 {
		h.violate(r, "intent left", "intents left after a command took the lock: %q", intents)
	}
	st := h.b.run(h.t, "status")
	if st.Code != 0 {
		h.violate(r, "status", "dkms status exited %d: %s", st.Code, st.Stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(st.Stdout), "\n") {
		if l == "" {
			continue
		}
		known := false
		for _, m := range crashModules {
			known = known || strings.HasPrefix(l, m.name+"/"+m.version)
		}
		if !known || strings.Contains(l, "broken") || strings.Contains(l, "WARNING") {
			h.violate(r, "status", "dkms status line %q", l)
		}
		for i := range crashModules {
			m := &crashModules[i]
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
		for i := range crashModules {
			if !h.installed(&crashModules[i], c.kernel) {
				fail("%s is not installed on %s after dkms %s", crashModules[i].name, c.kernel, strings.Join(c.args, " "))
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
	h.checkRecovered(r)
	data, err := os.ReadFile(h.initrdPath)
	if err != nil {
		h.violate(r, "(c) initrd", "%v", err)
		return
	}
	ci := &crashModules[2]
	sum := sha256.Sum256(data)
	in, ok := h.imageHolds[sum]
	if !ok {
		img, err := initrd.Parse(data)
		if err != nil {
			h.violate(r, "(c) initrd", "%s does not read back: %v", h.initrdPath, err)
			return
		}
		in = imageHasModule(img, h.initrdKernel, ci.dests[0])
		h.imageHolds[sum], h.wholeImages[sum] = in, true
	}
	if want := h.installed(ci, h.initrdKernel); in != want {
		h.violate(r, "(c) initrd out of step", "%s holds %s: %v, but the module is installed: %v", h.initrdPath, ci.dests[0], in, want)
	}
	for _, p := range dkmsdTempFiles(h.b.root) {
		h.violate(r, "temporary files left", "%s", p)
	}
}

// imageHasModule reports whether the image's view of the kernel's module
// dir holds a module named name.
func imageHasModule(img *initrd.Image, kernel, name string) bool {
	modDir, err := img.Resolve("lib/modules/" + kernel)
	if err != nil {
		return false
	}
	for _, n := range img.Names(modDir) {
		b := path.Base(n)
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
			if b == name+ext {
				return true
			}
		}
	}
	return false
}

// dkmsdTempFiles lists the temporary files and dirs dkmsd makes beside
// what it writes (write-beside files, build stages, dirs being deleted,
// initrd images being written) under the root's trees. The root's tmp/
// (TMPDIR) and source tree are not looked at.
func dkmsdTempFiles(root string) []string {
	var out []string
	for _, tr := range []string{"var/lib/dkms", "lib/modules", "boot"} {
		base := filepath.Join(root, tr)
		_ = filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
			if err != nil || p == base {
				return nil
			}
			n := fi.Name()
			if strings.HasPrefix(n, ".dkmsd-") || strings.HasPrefix(n, ".tmp_") || strings.Contains(n, ".dkmsd-old-") ||
				(tr == "boot" && strings.Contains(n, ".dkmsd-")) || (strings.HasSuffix(n, ".tmp") && strings.Contains(p, "/.dkmsd/")) {
				rel, _ := filepath.Rel(root, p)
				out = append(out, rel)
				if fi.IsDir() {
					return filepath.SkipDir
				}
			}
			return nil
		})
	}
	return out
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
	what := "finished before the kill at " + r.delay.String()
	if r.killed {
		what = "killed after " + r.delay.Round(time.Microsecond).String()
	}
	msg := fmt.Sprintf("run %d: dkms %s (%s): %s", r.n, strings.Join(r.cmd.args, " "), what, body)
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

// report fails the test once per category of violation, with the first
// few reports of each.
func (h *crashHarness) report(runs int, took time.Duration) {
	t := h.t
	t.Logf("%d runs in %v: %v", runs, took.Round(time.Millisecond), h.stats)
	if want := h.wantRuns; runs < want {
		// A loaded machine cuts the sequence short; far too short means
		// the harness proves little.
		if runs < want/2 {
			t.Errorf("only %d of %d runs in the time budget of %v", runs, want, crashBudget)
		} else {
			t.Logf("only %d of %d runs in the time budget of %v (a loaded machine?)", runs, want, crashBudget)
		}
	}
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

func (h *crashHarness) originalPath(k string) string {
	return h.b.path("lib/modules", k, "updates", "dkmsd_hello.ko")
}

func (h *crashHarness) archivedPath(k string) string {
	return h.b.path("var/lib/dkms/dkmsd_hello/original_module", k, h.arch, "dkmsd_hello.ko")
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

// readOrEmpty is the file p holds, or nothing when it cannot be read.
func readOrEmpty(p string) []byte {
	data, _ := os.ReadFile(p)
	return data
}

// TestCrashSafetyKillBeforeInitrdRealHeaders puts the tree in the state a
// kill leaves between a command's work and its initrd step (the same
// command with --no-initrd), for install, uninstall and remove of a
// REMAKE_INITRD module, then runs the command again: the rerun must finish
// the job, initrd included — the image holds the module exactly when it
// is installed. The random kills of TestCrashSafetyKillRealHeaders hit
// this window only now and then.
func TestCrashSafetyKillBeforeInitrdRealHeaders(t *testing.T) {
	b := newBatchRoot(t)
	k := b.kernelWithInitrd(t)
	img := b.path("boot", "initrd.img-"+k)
	copyBootFile(t, "/boot/initrd.img-"+k, img)
	b.cloneHello(t, "dkmsd_crashinitrd", "1.0", []string{`REMAKE_INITRD="yes"`}, nil)
	b.mustRun(t, "add", "dkmsd_crashinitrd/1.0")
	b.mustRun(t, "build", "dkmsd_crashinitrd/1.0", "-k", k)
	holds := func() bool {
		t.Helper()
		image, err := initrd.Read(img)
		if err != nil {
			t.Fatalf("%s: %v", img, err)
		}
		return imageHasModule(image, k, "dkmsd_crashinitrd")
	}
	for _, c := range []struct {
		args    []string
		holds   bool
		mayBe3  bool // remove: the killed run removed it already
		restore []string
	}{
		{[]string{"install", "dkmsd_crashinitrd/1.0", "-k", k}, true, false, nil},
		{[]string{"uninstall", "dkmsd_crashinitrd/1.0", "-k", k}, false, false, []string{"install", "dkmsd_crashinitrd/1.0", "-k", k}},
		{[]string{"remove", "dkmsd_crashinitrd/1.0", "--all"}, false, true, nil},
	} {
		what := "dkms " + strings.Join(c.args, " ")
		b.mustRun(t, append(slices.Clone(c.args), "--no-initrd")...)
		// A command killed before its initrd step leaves the marker its
		// first change wrote (--no-initrd writes none, by design): put it
		// back as such a kill would have left it.
		markInitrdPending(t, b.root, k)
		r := b.run(t, c.args...)
		if r.Code != 0 && !(c.mayBe3 && r.Code == 3) {
			t.Errorf("%s again: exit %d\nstderr:\n%s", what, r.Code, r.Stderr)
		}
		if got := holds(); got != c.holds {
			t.Errorf("after %s was cut before its initrd step and run again (exit %d), %s holds dkmsd_crashinitrd: %v, want %v\nstdout:\n%s\nstderr:\n%s",
				what, r.Code, img, got, c.holds, r.Stdout, r.Stderr)
		}
		if c.restore != nil {
			b.mustRun(t, c.restore...)
		}
	}
}

// markInitrdPending leaves <dkms_tree>/.dkmsd/initrd/<k>.pending, what a
// command killed between its change and its initrd step leaves behind.
func markInitrdPending(t *testing.T, root, k string) {
	t.Helper()
	dir := filepath.Join(root, "var/lib/dkms/.dkmsd/initrd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, k+".pending"), []byte(machineArch()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
