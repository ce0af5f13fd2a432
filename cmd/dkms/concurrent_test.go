package main

import (
	"bytes"
	"context"
	"errors"
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
	b := newBatchRoot(t)
	hooks := testkit.Binaries(t)
	k1, k2 := b.kernels[0], b.kernels[1]
	counter := b.path("var/lib/dkms/dkmsd_conc.builds")
	mods := []string{"dkmsd_conc_a", "dkmsd_conc_b"}
	for _, m := range mods {
		b.cloneHello(t, m, "1.0",
			[]string{`PRE_BUILD="count.sh ${dkms_tree}/dkmsd_conc.builds ` + m + ` ${kernelver}"`},
			map[string]string{"count.sh": "#!/bin/sh\necho \"$2 $3\" >> \"$1\"\n"})
		b.mustRun(t, "add", m+"/1.0")
	}
	entry := t.TempDir()
	rootEnv := append(slices.Clone(b.env), "DKMSD_ROOT="+b.root)

	type proc struct {
		name   string
		cmd    *exec.Cmd
		locks  bool // takes the tree lock
		out    bytes.Buffer
		errb   bytes.Buffer
		err    error
		took   time.Duration
		status bool
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	stopStatus := make(chan struct{})
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
	procs := []*proc{
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
	// dkms status again and again while they run: it takes no lock, and
	// must only ever show whole states.
	statusDone := make(chan struct{})
	var statusRuns []result
	go func() {
		defer close(statusDone)
		for ctx.Err() == nil {
			var out, errb bytes.Buffer
			cmd := b.command(ctx, b.env, "status")
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				code = -1
			}
			statusRuns = append(statusRuns, result{code, out.String(), errb.String()})
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
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errb
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			p.err = p.cmd.Wait()
			p.took = time.Since(start)
		}()
	}
	wg.Wait()
	close(stopStatus)
	<-statusDone
	t.Logf("%d processes done in %v; dkms status ran %d times meanwhile", len(procs), time.Since(begin).Round(time.Millisecond), len(statusRuns))

	lock := b.path("var/lib/dkms", lifecycle.LockFile)
	statusLineRE := regexp.MustCompile(`^dkmsd_conc_[ab]/1\.0(: added|, (` + regexp.QuoteMeta(k1) + `|` + regexp.QuoteMeta(k2) + `), ` + machineArch() + `: (built|installed))$`)
	waited, lockers := 0, 0
	for _, p := range procs {
		r := processResult(t, p.name, p.err, &p.out, &p.errb)
		t.Logf("%s: exit %d in %v\nstdout:\n%s\nstderr:\n%s", p.name, r.code, p.took.Round(time.Millisecond), r.stdout, r.stderr)
		if r.code != 0 {
			t.Errorf("%s: exit %d, want 0", p.name, r.code)
		}
		if strings.Contains(r.stderr, "panic:") {
			t.Errorf("%s panicked", p.name)
		}
		if p.locks {
			lockers++
			if strings.Contains(r.stderr, "Waiting for "+lock) {
				waited++
			}
		}
		if p.status {
			statusRuns = append(statusRuns, r)
		}
	}
	for i, r := range statusRuns {
		if r.code != 0 || r.stderr != "" {
			t.Errorf("dkms status #%d during the others: exit %d, stderr %q", i, r.code, r.stderr)
		}
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
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

	builds := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(readOrEmpty(counter))), "\n") {
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
