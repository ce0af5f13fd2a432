package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestConcurrentHooksAndCLIRealHeaders starts, at the same moment, on one
// tree holding two added (unbuilt) modules whose PRE_BUILD appends
// "<module> <kernel>" to a counter file: the Debian header hook and the
// kernel-install plugin for both kernels, `dkms autoinstall -k K` for both,
// `dkms install` of each module, the boot unit's `dkms autoinstall
// --kernelver K` for both (DKMSD_ROOT relocating it), and `dkms status`
// (also run again and again until the others end).
// Each module is built once per kernel; every process exits 0; every
// process that takes the lock but the first printed "Waiting for <lock>";
// every status meanwhile exited 0 and printed only well-formed lines
// (added, built or installed, never a half state); afterwards status shows
// every module installed on both kernels, each installed file equal to its
// build and listed in modules.dep; no intent or temporary file is left.
func TestConcurrentHooksAndCLIRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	mods := []string{"dkmsd_conc_a", "dkmsd_conc_b"}
	for _, m := range mods {
		b.cloneHello(t, m, "1.0",
			[]string{`PRE_BUILD="count.sh ${dkms_tree}/dkmsd_conc.builds ` + m + ` ${kernelver}"`},
			map[string]string{"count.sh": "#!/bin/sh\necho \"$2 $3\" >> \"$1\"\n"})
		b.letOut(t, m)
		b.mustRun(t, "add", m+"/1.0")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	procs := concurrentProcs(t, ctx, b)
	statusRuns := runConcurrently(t, ctx, b, procs)
	checkConcurrentProcs(t, b, procs, statusRuns)
	checkBuiltOncePerKernel(t, b, mods)
	checkInstalledEverywhere(t, b, mods)
}

// concurrentProc is one of the processes started at the same moment.
type concurrentProc struct {
	name   string
	cmd    *exec.Cmd
	locks  bool // takes the tree lock
	status bool // is `dkms status`
	res    testkit.Result
	err    error
	took   time.Duration
}

// concurrentProcs are the hooks, the CLI and the boot unit on both
// kernels, and one `dkms status`, all killed when ctx ends.
func concurrentProcs(t *testing.T, ctx context.Context, b *batchRoot) []*concurrentProc {
	hooks := testkit.Binaries(t)
	k1, k2 := b.kernels[0], b.kernels[1]
	entry := t.TempDir()
	rootEnv := append(slices.Clone(b.env), "DKMSD_ROOT="+b.root)
	hook := func(bin string, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, filepath.Join(hooks, bin), args...)
		cmd.Env, cmd.Dir = rootEnv, b.root
		return cmd
	}
	unit := func(k string) *exec.Cmd {
		// dkmsd.service's ExecStart, relocated by the environment.
		cmd := exec.CommandContext(ctx, b.bin, "autoinstall", "--kernelver", k)
		cmd.Env, cmd.Dir = rootEnv, b.root
		return cmd
	}
	return []*concurrentProc{
		{name: "dkmsd-apt header_postinst " + k1, cmd: hook("dkmsd-apt", "header_postinst", k1), locks: true},
		{name: "dkmsd-apt header_postinst " + k2, cmd: hook("dkmsd-apt", "header_postinst", k2), locks: true},
		{name: "dkmsd-kernel-install add " + k1, cmd: hook("dkmsd-kernel-install", "add", k1, entry, "/boot/vmlinuz-"+k1), locks: true},
		{name: "dkmsd-kernel-install add " + k2, cmd: hook("dkmsd-kernel-install", "add", k2, entry, "/boot/vmlinuz-"+k2), locks: true},
		{name: "dkms autoinstall -k " + k1, cmd: b.command(ctx, b.env, "autoinstall", "-k", k1), locks: true},
		{name: "dkms autoinstall -k " + k2, cmd: b.command(ctx, b.env, "autoinstall", "-k", k2), locks: true},
		{name: "dkms install dkmsd_conc_a/1.0 -k " + k1, cmd: b.command(ctx, b.env, "install", "dkmsd_conc_a/1.0", "-k", k1), locks: true},
		{name: "dkms install dkmsd_conc_b/1.0 -k " + k2, cmd: b.command(ctx, b.env, "install", "dkmsd_conc_b/1.0", "-k", k2), locks: true},
		{name: "dkms autoinstall --kernelver " + k1 + " (boot unit)", cmd: unit(k1), locks: true},
		{name: "dkms autoinstall --kernelver " + k2 + " (boot unit)", cmd: unit(k2), locks: true},
		{name: "dkms status", cmd: b.command(ctx, b.env, "status"), status: true},
	}
}

// runConcurrently starts procs at the same moment and waits for them all,
// running `dkms status` again and again meanwhile (it takes no lock, and
// must only ever show whole states); it returns those status runs.
func runConcurrently(t *testing.T, ctx context.Context, b *batchRoot, procs []*concurrentProc) []testkit.Result {
	stopStatus := make(chan struct{})
	statusDone := make(chan struct{})
	var statusRuns []testkit.Result
	go func() {
		defer close(statusDone)
		for ctx.Err() == nil {
			r, err := testkit.Exec(b.command(ctx, b.env, "status"))
			if err != nil {
				r.Code = -1
			}
			statusRuns = append(statusRuns, r)
			select {
			case <-stopStatus:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	begin := time.Now()
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			p.res, p.err = testkit.Exec(p.cmd)
			p.took = time.Since(start)
		}()
	}
	wg.Wait()
	close(stopStatus)
	<-statusDone
	t.Logf("%d processes done in %v; dkms status ran %d times meanwhile", len(procs), time.Since(begin).Round(time.Millisecond), len(statusRuns))
	return statusRuns
}

// checkConcurrentProcs checks that every process exited 0 without a panic,
// that every process that takes the lock but the first waited for it, and
// that every status run (during the others, and the one started with
// them) printed only whole states.
func checkConcurrentProcs(t *testing.T, b *batchRoot, procs []*concurrentProc, statusRuns []testkit.Result) {
	t.Helper()
	lock := b.path("var/lib/dkms", lifecycle.LockFile)
	waited, lockers := 0, 0
	for _, p := range procs {
		if p.err != nil {
			t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", p.name, p.err, p.res.Stdout, p.res.Stderr)
		}
		r := p.res
		t.Logf("%s: exit %d in %v\nstdout:\n%s\nstderr:\n%s", p.name, r.Code, p.took.Round(time.Millisecond), r.Stdout, r.Stderr)
		if r.Code != 0 {
			t.Errorf("%s: exit %d, want 0", p.name, r.Code)
		}
		if strings.Contains(r.Stderr, "panic:") {
			t.Errorf("%s panicked", p.name)
		}
		if p.locks {
			lockers++
			if strings.Contains(r.Stderr, "Waiting for "+lock) {
				waited++
			}
		}
		if p.status {
			statusRuns = append(statusRuns, r)
		}
	}
	k1, k2 := b.kernels[0], b.kernels[1]
	statusLineRE := regexp.MustCompile(`^dkmsd_conc_[ab]/1\.0(: added|, (` + regexp.QuoteMeta(k1) + `|` + regexp.QuoteMeta(k2) + `), ` + machineArch() + `: (built|installed))$`)
	for i, r := range statusRuns {
		if r.Code != 0 || r.Stderr != "" {
			t.Errorf("dkms status #%d during the others: exit %d, stderr %q", i, r.Code, r.Stderr)
		}
		for _, l := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
			if l != "" && !statusLineRE.MatchString(l) {
				t.Errorf("dkms status #%d during the others printed %q", i, l)
			}
		}
	}
	// Nothing is built at the start, so whoever takes the lock first
	// builds for a second or more, while every other process (all started
	// within milliseconds) reaches the lock.
	if waited != lockers-1 {
		t.Errorf("%d of the %d processes that take the lock printed \"Waiting for %s\", want %d", waited, lockers, lock, lockers-1)
	}
}

// checkBuiltOncePerKernel reads the counter the modules' PRE_BUILD
// appends to: each module built once for each kernel.
func checkBuiltOncePerKernel(t *testing.T, b *batchRoot, mods []string) {
	t.Helper()
	builds := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(readOrEmpty(b.path("var/lib/dkms/dkmsd_conc.builds")))), "\n") {
		if l != "" {
			builds[l]++
		}
	}
	for _, m := range mods {
		for _, k := range b.kernels {
			if c := builds[m+" "+k]; c != 1 {
				t.Errorf("%s built %d times for %s, want once (counter: %v)", m, c, k, builds)
			}
		}
	}
}

// checkInstalledEverywhere checks the end state: every module installed on
// both kernels, each installed file equal to its build and in modules.dep,
// and no intent or temporary file left.
func checkInstalledEverywhere(t *testing.T, b *batchRoot, mods []string) {
	t.Helper()
	var want []string
	for _, m := range mods {
		for _, k := range sortedKernels(b.kernels) {
			want = append(want, statusLine(m, "1.0", k, "installed"))
		}
	}
	b.wantStatus(t, want...)
	for _, m := range mods {
		for _, k := range b.kernels {
			built := tree.FindModuleFile(b.path("var/lib/dkms", m, "1.0", k, machineArch(), "module"), m)
			inst := b.path("lib/modules", k, "updates/dkms", filepath.Base(built))
			if built == "" || !bytes.Equal(readOrEmpty(built), readOrEmpty(inst)) || len(readOrEmpty(inst)) == 0 {
				t.Errorf("%s on %s: installed %s differs from the build %q", m, k, inst, built)
			}
			if dep := string(readOrEmpty(b.path("lib/modules", k, "modules.dep"))); !strings.Contains(dep, "updates/dkms/"+filepath.Base(built)+":") {
				t.Errorf("modules.dep of %s does not list %s:\n%s", k, m, dep)
			}
		}
	}
	if intents, _ := filepath.Glob(b.path("var/lib/dkms/.dkmsd/intent/*")); len(intents) > 0 {
		t.Errorf("intents left: %q", intents)
	}
	if left := dkmsdTempFiles(b.root); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}
