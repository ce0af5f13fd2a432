package lifecycle

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/dkmsd/dkmsd/tree"
)

// Outcome is how one module×kernel job of autoinstall or match ended.
type Outcome string

const (
	OutcomeInstalled        Outcome = "installed"
	OutcomeAlreadyInstalled Outcome = "already installed"
	OutcomeSkipped          Outcome = "skipped"
	OutcomeFailed           Outcome = "failed"
	OutcomeNotBuilt         Outcome = "not built"
	// OutcomeDeferred: a BUILD_DEPENDS names a module the tree has never
	// heard of (its package may not be configured yet). Not a failure: the
	// next autoinstall builds it, after the dependency (dkms 3.4.1).
	OutcomeDeferred Outcome = "deferred"
)

// JobResult is the end of one job.
type JobResult struct {
	Target
	Outcome  Outcome
	Reason   string // why it was skipped, failed or not built
	Err      error
	Log      string
	Duration time.Duration
}

// Summary is what a batch of jobs did.
type Summary struct {
	Results []JobResult
}

// Failed reports whether any job failed or could not be built.
func (s *Summary) Failed() bool {
	for _, r := range s.Results {
		if r.Outcome == OutcomeFailed || r.Outcome == OutcomeNotBuilt {
			return true
		}
	}
	return false
}

// Lines are dkms's autoinstall summary lines, per kernel; code gives the
// exit status shown after a failed module, as in "foo(10)".
func (s *Summary) Lines(code func(error) int) []string {
	var kernels []string
	by := map[string]map[Outcome][]string{}
	for _, r := range s.Results {
		if by[r.Kernel] == nil {
			by[r.Kernel] = map[Outcome][]string{}
			kernels = append(kernels, r.Kernel)
		}
		name := r.Module
		if r.Outcome == OutcomeFailed && r.Err != nil {
			name = fmt.Sprintf("%s(%d)", r.Module, code(r.Err))
		}
		by[r.Kernel][r.Outcome] = append(by[r.Kernel][r.Outcome], name)
	}
	var lines []string
	for _, k := range kernels {
		o := by[k]
		if ok := append(append([]string{}, o[OutcomeInstalled]...), o[OutcomeAlreadyInstalled]...); len(ok) > 0 {
			lines = append(lines, fmt.Sprintf("Autoinstall on %s succeeded for module(s) %s.", k, strings.Join(ok, " ")))
		}
		if len(o[OutcomeSkipped]) > 0 {
			lines = append(lines, fmt.Sprintf("Autoinstall on %s was skipped for module(s) %s.", k, strings.Join(o[OutcomeSkipped], " ")))
		}
		if len(o[OutcomeFailed]) > 0 {
			lines = append(lines, fmt.Sprintf("Autoinstall on %s failed for module(s) %s.", k, strings.Join(o[OutcomeFailed], " ")))
		}
		var deferred []string
		for _, r := range s.Results {
			switch {
			case r.Kernel != k:
			case r.Outcome == OutcomeNotBuilt:
				lines = append(lines, fmt.Sprintf("%s/%s autoinstall failed: %s.", r.Module, r.Version, r.Reason))
			case r.Outcome == OutcomeDeferred:
				lines = append(lines, fmt.Sprintf("%s/%s autoinstall deferred: BUILD_DEPENDS not registered with DKMS: %s.", r.Module, r.Version, r.Reason))
				deferred = append(deferred, r.Module+"/"+r.Version)
			}
		}
		lines = append(lines, deferredLines(k, deferred)...)
	}
	return lines
}

// deferredLines end a kernel's summary when modules wait for a
// BUILD_DEPENDS no package has registered yet (dkms 3.4.1's text).
func deferredLines(kernel string, deferred []string) []string {
	if len(deferred) == 0 {
		return nil
	}
	return []string{
		fmt.Sprintf("Autoinstall on %s deferred module(s) %s due to BUILD_DEPENDS not yet registered with DKMS.", kernel, strings.Join(deferred, " ")),
		"These may be provided externally or by a package not yet configured; autoinstall will retry on the next trigger.",
	}
}

// job is one module version to install on one kernel.
type job struct {
	Target
	deps  []string // module names that must be installed first (same kernel)
	force bool     // rebuild: a dependency is being rebuilt (BUILD_DEPENDS_REBUILD)
	// result, set when the job is settled before it runs (cycle, missing
	// dependency, already installed).
	settled *JobResult
}

// NoAutoinstall reads /etc/dkms/no-autoinstall: disabled reports the file
// exists and lists nothing (autoinstall is off, as in dkms); skip lists
// the module names it holds, which autoinstall leaves alone.
func NoAutoinstall(l tree.Layout) (disabled bool, skip map[string]bool) {
	f, err := os.Open(filepath.Join(l.ConfDir, "no-autoinstall"))
	if err != nil {
		return false, nil
	}
	defer f.Close()
	skip = map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, m := range strings.Fields(line) {
			skip[m] = true
		}
	}
	return len(skip) == 0, skip
}

// Autoinstall installs, for each kernel, the newest version of every added
// module whose dkms.conf says AUTOINSTALL="yes" and that is not installed
// there yet, building independent modules at the same time.
func Autoinstall(ctx context.Context, e *Env, kernels []string, arch string) (*Summary, error) {
	disabled, skip := NoAutoinstall(e.Layout)
	if disabled {
		e.info("Automatic installation of modules has been disabled.")
		return &Summary{}, nil
	}
	mvs, err := e.Layout.ModuleVersions("", "")
	if err != nil {
		return nil, err
	}
	var jobs []*job
	seen := map[string]bool{}
	for _, k := range kernels {
		if seen[k] {
			continue // -k K -k K is one kernel
		}
		seen[k] = true
		ks, err := e.autoinstallPlan(ctx, mvs, k, arch, skip)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, ks...)
	}
	return e.runPlanned(ctx, jobs)
}

// runPlanned runs the jobs of a match or autoinstall once their kernels'
// headers are known to be there; a hook's run skips and records the
// builds that keep failing.
func (e *Env) runPlanned(ctx context.Context, jobs []*job) (*Summary, error) {
	if e.RememberFailures {
		e.settleKnownFailures(jobs)
	}
	if err := e.checkHeadersFor(ctx, jobs); err != nil {
		return nil, err
	}
	sum := e.runJobs(ctx, jobs)
	if e.RememberFailures {
		e.recordFailures(jobs, sum)
	}
	return sum, nil
}

// checkHeadersFor fails before anything runs when a job needs a build and
// its kernel has no headers: the caller (a kernel hook, say) can then tell
// which package is missing and wait for it.
func (e *Env) checkHeadersFor(ctx context.Context, jobs []*job) error {
	for _, j := range jobs {
		if j.settled != nil {
			continue
		}
		built, err := e.isBuilt(ctx, j.Target)
		if err != nil {
			return err
		}
		if !built || j.force {
			if err := e.checkHeaders(j.Kernel); err != nil {
				return err
			}
		}
	}
	return nil
}

// autoinstallPlan chooses the jobs for one kernel.
func (e *Env) autoinstallPlan(ctx context.Context, mvs []tree.ModuleVersion, kernel, arch string, skip map[string]bool) ([]*job, error) {
	type candidate struct {
		version string
		conf    *tree.Conf
	}
	latest := map[string]candidate{}
	installed := map[string]string{}
	var names []string
	for _, mv := range mvs {
		if mv.Broken {
			e.warn("Error! %s/%s is broken! Missing the source directory or the symbolic link pointing to it.\nManual intervention is required!", mv.Name, mv.Version)
			continue
		}
		if skip[mv.Name] {
			continue
		}
		if v := e.Layout.InstalledVersion(mv.Name, kernel, arch); v != "" {
			installed[mv.Name] = v
		}
		t := Target{Module: mv.Name, Version: mv.Version, Kernel: kernel, Arch: arch}
		conf, err := e.readConf(ctx, e.confFile(mv.Name, mv.Version), t, false)
		if err != nil {
			return nil, err
		}
		if !conf.AutoInstall {
			continue
		}
		if c, ok := latest[mv.Name]; !ok || tree.CompareVersions(mv.Version, c.version) > 0 {
			if !ok {
				names = append(names, mv.Name)
			}
			latest[mv.Name] = candidate{mv.Version, conf}
		}
	}
	// A module is queued unless its newest version is installed; one that
	// is installed is queued again (forced) when BUILD_DEPENDS_REBUILD asks
	// for it and something it depends on is being rebuilt.
	queued := map[string]bool{}
	for _, n := range names {
		queued[n] = installed[n] != latest[n].version
	}
	for changed := true; changed; {
		changed = false
		for _, n := range names {
			c := latest[n]
			if queued[n] || !c.conf.BuildDependsRebuild {
				continue
			}
			for _, d := range c.conf.BuildDepends {
				if queued[d] {
					queued[n], changed = true, true
					break
				}
			}
		}
	}
	var jobs []*job
	for _, n := range names {
		c := latest[n]
		j := &job{Target: Target{Module: n, Version: c.version, Kernel: kernel, Arch: arch}, deps: c.conf.BuildDepends}
		if !queued[n] {
			j.settled = &JobResult{Target: j.Target, Outcome: OutcomeAlreadyInstalled}
		} else if installed[n] == c.version {
			j.force = true
		}
		jobs = append(jobs, j)
	}
	settleMissingDeps(jobs, mvs, func(d string) bool {
		_, ok := latest[d]
		return ok || installed[d] != ""
	})
	markCycles(jobs)
	return jobs, nil
}

// settleMissingDeps settles the jobs whose BUILD_DEPENDS are neither
// installed nor being installed: a failure when such a dependency is a
// module the tree knows, deferred when every one of them is unknown to it
// (dkms 3.4.1: its package may not be configured yet).
func settleMissingDeps(jobs []*job, mvs []tree.ModuleVersion, present func(string) bool) {
	known := map[string]bool{}
	for _, mv := range mvs {
		if !mv.Broken {
			known[mv.Name] = true
		}
	}
	for _, j := range jobs {
		if j.settled != nil {
			continue
		}
		var real, unknown []string
		for _, d := range j.deps {
			switch {
			case present(d):
			case known[d]:
				real = append(real, d)
			default:
				unknown = append(unknown, d)
			}
		}
		switch {
		case len(real) > 0:
			j.settled = &JobResult{Target: j.Target, Outcome: OutcomeNotBuilt, Reason: "missing dependencies: " + strings.Join(real, " ")}
		case len(unknown) > 0:
			j.settled = &JobResult{Target: j.Target, Outcome: OutcomeDeferred, Reason: strings.Join(unknown, " ")}
		}
	}
}

// markCycles settles every job on a BUILD_DEPENDS cycle with an error that
// names the cycle.
func markCycles(jobs []*job) {
	byName := map[string]*job{}
	for _, j := range jobs {
		byName[j.Module] = j
	}
	const (
		unseen = iota
		onPath
		done
	)
	state := map[string]int{}
	var path []string
	var visit func(n string)
	visit = func(n string) {
		state[n] = onPath
		path = append(path, n)
		for _, d := range byName[n].deps {
			if byName[d] == nil {
				continue
			}
			switch state[d] {
			case unseen:
				visit(d)
			case onPath:
				i := len(path) - 1
				for path[i] != d {
					i--
				}
				cycle := append(append([]string{}, path[i:]...), d)
				reason := "BUILD_DEPENDS cycle " + strings.Join(cycle, " -> ")
				for _, m := range path[i:] {
					if byName[m].settled == nil || byName[m].settled.Outcome != OutcomeNotBuilt {
						byName[m].settled = &JobResult{Target: byName[m].Target, Outcome: OutcomeNotBuilt, Reason: reason}
					}
				}
			}
		}
		path = path[:len(path)-1]
		state[n] = done
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if state[n] == unseen {
			visit(n)
		}
	}
}

// depmodAfter runs depmod once for each kernel a module was installed on;
// if it fails, those installs are rolled back.
func (e *Env) depmodAfter(ctx context.Context, jobs []*job, results []*JobResult) {
	byKernel := map[string][]int{}
	var kernels []string
	for i, r := range results {
		if r.Outcome == OutcomeInstalled {
			if byKernel[r.Kernel] == nil {
				kernels = append(kernels, r.Kernel)
			}
			byKernel[r.Kernel] = append(byKernel[r.Kernel], i)
		}
	}
	for _, k := range kernels {
		// Once per kernel, where dkms runs it after each module.
		err := e.showDepmod(ctx, k)
		if err == nil {
			e.commitKernel(k)
			e.loadNewModules(ctx, k)
		}
		if err != nil {
			e.warn("Error! depmod for %s failed: %v\nThe modules installed for it in this run are rolled back.", k, err)
			je := *e
			je.DeferDepmod = true
			je.Sink = SinkFunc(func(ev Event) {
				if ev.Type != Info {
					e.Sink.Emit(ev)
				}
			})
			for _, i := range byKernel[k] {
				_ = je.uninstall(ctx, jobs[i].Target)
				results[i].Outcome, results[i].Err, results[i].Reason = OutcomeFailed, err, "depmod failed"
			}
			_ = e.depmod(ctx, k)
			e.commitKernel(k)
		}
	}
}
