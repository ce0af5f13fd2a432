//go:build systemtest

package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCrashSafetyKillUninstallInitrdEveryStepRealHeaders kills `dkms
// uninstall dkmsd_crashinitrd/1.0 -k K` (a REMAKE_INITRD module installed
// over a fake original, K the kernel with an initrd) once at each of its
// steps, and after each kill checks what TestCrashSafetyKillRealHeaders
// checks: at once, after the probe's recovery (the initrd holding the
// module exactly when it is installed), after the uninstall ran again.
// Then it installs the module again for the next step.
//
// A step is a system call that changes something under the root's
// /var/lib/dkms, /lib/modules or /boot, made by dkms or by a program it
// runs (depmod): an open for writing, a write, rename, unlink, link,
// mkdir, chmod or truncate (stepCalls), leaving out the changes no check
// can see (crashStep), where a kill is, for the checks, a kill at the
// step before. The uninstall runs under ptrace(2) (traceRun), held at the
// entry of every such call; at step n the tracer SIGKILLs the process
// group while the call is held, so steps 1..n-1 happened and n did not.
// A sweep over kill delays could not promise that: a window such as
// "intent logged, module file not yet deleted" lasts microseconds between
// milliseconds of other work.
//
// A reference run, whole and traced, lists the steps. It must include the
// intent, the pending marker, the deletion, the original put back, the
// kernel link removed, depmod's modules.dep, the new initrd and the
// cleared marker, or the tracer is blind and the test fails. Each killed
// run must stop at the same step as the reference (numbers in names
// aside): a run that differs started from another state.
func TestCrashSafetyKillUninstallInitrdEveryStepRealHeaders(t *testing.T) {
	b := newBatchRoot(t)
	m := crashInitrdMo
	h := newCrashHarness(t, b, m)
	k, mv := h.initrdKernel, m.name+"/"+m.version
	b.mustRun(t, "build", mv, "-k", k)
	h.placeOriginal(m, k)
	h.checkProbeLocks()
	b.mustRun(t, "install", mv, "-k", k)
	h.checkSettled()
	cmd := crashCmd{kind: "uninstall", mod: m, kernel: k, args: []string{"uninstall", mv, "-k", k}}

	ref, refOut := h.traced(cmd.args, 0)
	if ref.killed || !ref.status.Exited() || ref.status.ExitStatus() != 0 {
		t.Fatalf("the traced reference run of dkms %s: %v\n%s", strings.Join(cmd.args, " "), ref.status, refOut)
	}
	var listed strings.Builder
	for i, s := range ref.steps {
		fmt.Fprintf(&listed, "\n  %d: %s", i+1, s)
	}
	o := crashOriginal{m, k}
	arch := h.arch
	for _, want := range []struct{ what, call, args string }{
		{"the intent logged", "rename", ", " + b.path("var/lib/dkms/.dkmsd/intent", fmt.Sprintf("%s--%s--%s--%s.json", m.name, m.version, k, arch))},
		{"the initrd marked pending", "rename", ", " + b.path("var/lib/dkms/.dkmsd/initrd", k+".pending")},
		{"the module deleted", "unlink", b.path("lib/modules", k, "updates/dkms", m.dests[0]+".ko")},
		{"the original put back", "rename", ", " + h.originalPath(o)},
		{"the kernel link removed", "unlink", b.path("var/lib/dkms", m.name, "kernel-"+k+"-"+arch)},
		{"depmod's modules.dep", "rename", ", " + b.path("lib/modules", k, "modules.dep")},
		{"the intent dropped", "unlink", b.path("var/lib/dkms/.dkmsd/intent", fmt.Sprintf("%s--%s--%s--%s.json", m.name, m.version, k, arch))},
		{"the new initrd", "rename", ", " + h.initrdPath},
		{"the pending marker cleared", "unlink", b.path("var/lib/dkms/.dkmsd/initrd", k+".pending")},
	} {
		found := false
		for _, s := range ref.steps {
			found = found || strings.HasPrefix(s.call, want.call) && strings.HasSuffix(s.args, want.args)
		}
		if !found {
			t.Errorf("the traced uninstall shows no step for %s (%s…%s); its steps:%s", want.what, want.call, want.args, listed.String())
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("dkms %s takes %d steps:%s", strings.Join(cmd.args, " "), len(ref.steps), listed.String())
	b.mustRun(t, "install", mv, "-k", k)
	h.goodInitrd = mustReadFile(t, h.initrdPath)

	start := time.Now()
	for n := 1; n <= len(ref.steps); n++ {
		// Each run starts from the same state: report what it breaks
		// even when an earlier run broke the same.
		clear(h.seen)
		res, out := h.traced(cmd.args, n)
		r := &crashRun{n: n, cmd: cmd, killed: res.killed, out: out,
			at: fmt.Sprintf("killed at step %d of %d, before %s", n, len(ref.steps), ref.steps[n-1])}
		switch {
		case !res.killed:
			h.violate(r, "sweep", "the run ended (%v) after %d steps, before step %d: the steps differ from the reference run", res.status, len(res.steps), n)
		case stepKey(res.steps[n-1]) != stepKey(ref.steps[n-1]):
			h.violate(r, "sweep", "step %d was %s, in the reference run %s: the steps differ from run to run", n, res.steps[n-1], ref.steps[n-1])
		}
		h.afterKill(r, res.pid, false)
		b.mustRun(t, "install", mv, "-k", k)
		h.checkEnd(r)
		h.goodInitrd = mustReadFile(t, h.initrdPath)
	}
	took := time.Since(start)
	t.Logf("%d kills, one at each step, in %v (%.1f s a step)", len(ref.steps), took.Round(time.Millisecond), took.Seconds()/float64(max(len(ref.steps), 1)))
	h.reportViolations()
}

// digits are the numbers in a step's names: process ids and random
// suffixes that differ from run to run.
var digits = regexp.MustCompile(`[0-9]+`)

// stepKey is what must be the same for the nth step of every run.
func stepKey(s traceStep) string {
	return digits.ReplaceAllString(s.comm+" "+s.call+" "+s.args, "#")
}
