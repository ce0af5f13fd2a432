package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dkmsd/dkmsd/tree"
)

// Build compiles t's module version for t's kernel with the kernel's own
// kbuild and stores the result in <dkms_tree>/<m>/<v>/<k>/<a>. An
// unregistered module is added first. A module already built is skipped
// unless Force is set; a forced rebuild keeps the old build until the new
// one is complete.
func Build(ctx context.Context, e *Env, t Target) error {
	if err := checkNames(t.Module, t.Version); err != nil {
		return err
	}
	mv, added := e.Layout.Lookup(t.Module, t.Version)
	if added && mv.Broken {
		return brokenError(t.Module, t.Version)
	}
	if !e.RememberFailures {
		e.forgetFailure(t) // asked for by hand: the hooks try again too
	}
	if added {
		built, err := e.isBuilt(ctx, t)
		if err != nil {
			return err
		}
		if built && !e.Force {
			e.info("Module %s/%s already built for kernel %s (%s), skip. You may override by specifying --force.", t.Module, t.Version, t.Kernel, t.Arch)
			return nil
		}
	}
	return e.build(ctx, t, !added)
}

// buildKernel is the kernel a build is for: its directories and its
// configuration (--config, else the build dir's), parsed once for the
// compiler, the make line, signing and the module suffix.
type buildKernel struct {
	tree.Kernel
	// ConfigFile is "" when the kernel has none.
	ConfigFile string
	Config     tree.KernelConfig
}

func (e *Env) buildKernel(kernel string) buildKernel {
	file := e.kernelConfig(kernel)
	return buildKernel{Kernel: e.Layout.Kernel(kernel), ConfigFile: file, Config: tree.ReadKernelConfig(file)}
}

// moduleSuffix is the suffix of module files for the kernel: its
// CONFIG_MODULE_COMPRESS_*, or what its modules.dep shows.
func (k buildKernel) moduleSuffix() string {
	if s := k.Config.ModuleSuffix(); s != ".ko" {
		return s
	}
	dep, err := os.ReadFile(filepath.Join(k.Dir, "modules.dep"))
	if err != nil {
		return ".ko"
	}
	for _, s := range []string{".ko.zst", ".ko.xz", ".ko.gz"} {
		if bytes.Contains(dep, []byte(s+":")) {
			return s
		}
	}
	return ".ko"
}

// build runs one build: signing, the add an unregistered module needs,
// checks, the build dir, patches, PRE_BUILD, make, then the finished
// modules into place — in the order dkms 3.0.10 shows them.
func (e *Env) build(ctx context.Context, t Target, add bool) error {
	start := time.Now()
	k := e.buildKernel(t.Kernel)
	sign, err := e.prepareSigning(ctx, k)
	if err != nil {
		return err
	}
	if add {
		if err := Add(ctx, e, t.Module, t.Version, t.Kernel, t.Arch); err != nil {
			return err
		}
	}
	// Add has shown the file's warnings already.
	conf, err := e.readConf(ctx, e.confFile(t.Module, t.Version), t, !add)
	if err != nil {
		return err
	}
	if err := e.checkBuildable(t, conf); err != nil {
		return err
	}
	sb, err := e.sandboxFor(ctx, t, false)
	if err != nil {
		return err
	}
	e.Sink.Emit(Event{Type: BuildStarted, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch})
	r, err := e.startBuild(t, start, sb)
	if err != nil {
		return err
	}
	r.budget = e.buildBudget(t.Module)
	defer r.log.Close()
	// build_timeout bounds build_environment, patches, PRE_BUILD, make
	// and POST_BUILD: a build that hangs never holds the tree lock (and a
	// package manager's transaction) for ever.
	bctx := ctx
	if e.BuildTimeout > 0 {
		var cancel context.CancelFunc
		bctx, cancel = context.WithTimeoutCause(ctx, e.BuildTimeout, errBuildTimedOut)
		defer cancel()
	}
	r.env = e.withBuildEnvironment(bctx, t, e.buildEnviron(k.cc()...))
	lookup := e.consultCache(bctx, r, conf, k)
	if lookup.hit {
		err = r.store(bctx, conf, k, lookup.signer(sign))
	} else if err = lookup.err; err == nil {
		err = r.compile(bctx, conf, k)
		if err == nil {
			err = r.store(bctx, conf, k, sign)
		}
		if err == nil {
			err = e.publish(ctx, r, lookup)
		}
	}
	if err != nil && buildTimedOut(bctx) && KindOf(err) != KindBuildTimeout {
		// A step that failed without r.failed (a MOK key being made).
		return r.failed(bctx, KindBuildTimeout, err)
	}
	return err
}

// checkBuildable refuses what dkms refuses before building: a kernel
// BUILD_EXCLUSIVE rules out, an empty source dir, missing headers or
// BUILD_DEPENDS.
func (e *Env) checkBuildable(t Target, conf *tree.Conf) error {
	if conf.Excluded != "" {
		e.Sink.Emit(Event{Type: BuildSkipped, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
			Text: fmt.Sprintf("%s/%s is not built for %s (%s): %s rules it out", t.Module, t.Version, t.Kernel, t.Arch, conf.Excluded)})
		// dkms 3.0.10 names a dkms.conf in the build's own dir.
		return fail(KindExcluded,
			fmt.Sprintf("The %s/dkms.conf for module %s includes a BUILD_EXCLUSIVE directive which does not match this kernel/arch/config.", e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch), t.Module),
			"This indicates that it should not be built.")
	}
	sourceDir := filepath.Join(e.Layout.VersionDir(t.Module, t.Version), "source")
	if entries, _ := os.ReadDir(sourceDir); len(entries) < 2 {
		return fail(KindEmptySource, fmt.Sprintf("The directory %s does not appear to have module source located within it.", sourceDir), "Build halted.")
	}
	if err := e.checkHeaders(t.Kernel); err != nil {
		return err
	}
	return e.checkBuildDepends(t, conf)
}

// buildRun is one build under way in <m>/<v>/build, logging to its
// make.log.
type buildRun struct {
	e                  *Env
	t                  Target
	start              time.Time
	vdir, dir, logPath string
	log                *os.File
	// env is the environment of everything the build runs: the
	// kernel's compiler, then framework.conf's build_environment.
	env []string
	// budget is the job budget the build runs under.
	budget jobBudget
	// cached is the artifact a module-cache hit put in the build dir;
	// capture collects what a publishing build pushes (cachebuild.go).
	cached  *cachedBuild
	capture *cacheCapture
	// sb is the build sandbox its commands run in (nil: none).
	sb *buildSandbox
}

// startBuild makes a fresh build dir from the source. The build happens
// in <m>/<v>/build: dkms.conf MAKE lines name that path, so it cannot
// move. It is kept, with its make.log, on failure.
func (e *Env) startBuild(t Target, start time.Time, sb *buildSandbox) (*buildRun, error) {
	vdir := e.Layout.VersionDir(t.Module, t.Version)
	r := &buildRun{e: e, t: t, start: start, vdir: vdir, dir: filepath.Join(vdir, "build"), sb: sb}
	sourceDir := filepath.Join(vdir, "source")
	if err := os.RemoveAll(r.dir); err != nil {
		return nil, fmt.Errorf("clean %s: %w", r.dir, err)
	}
	if err := copyTree(sourceDir, r.dir); err != nil {
		return nil, fmt.Errorf("copy %s to %s: %w", sourceDir, r.dir, err)
	}
	if err := e.overlayPatches(t.Module, r.dir); err != nil {
		return nil, fmt.Errorf("copy the patches of %s into %s: %w", e.moduleConfDir(t.Module), r.dir, err)
	}
	if err := sb.own(r.dir); err != nil {
		return nil, err
	}
	r.logPath = filepath.Join(r.dir, "make.log")
	log, err := os.OpenFile(r.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, diskError(r.logPath, err)
	}
	r.log = log
	fmt.Fprintf(log, "DKMS (dkmsd) make.log for %s/%s for kernel %s (%s)\n%s\n\n", t.Module, t.Version, t.Kernel, t.Arch, time.Now().Format(time.UnixDate))
	return r, nil
}

// failed reports the build's failure, keeping its log: build/make.log is
// where dkms users look, but the next kernel's build replaces it, so a
// copy per kernel is kept for the report.
// A build stopped at build_timeout fails as such, whatever step it was
// in.
func (r *buildRun) failed(ctx context.Context, kind Kind, err error, lines ...string) error {
	e, t := r.e, r.t
	if buildTimedOut(ctx) {
		kind, lines = KindBuildTimeout, r.timedOut()
	}
	lines = append(lines, r.sb.refusalHint(kind, r.logPath)...)
	kept := r.logPath
	if logFile, err := r.sb.builtFile(r.dir, r.logPath); err == nil && os.MkdirAll(filepath.Dir(e.failedLog(t)), 0o755) == nil && copyFileAtomic(logFile, e.failedLog(t)) == nil {
		kept = e.failedLog(t)
	}
	e.Sink.Emit(Event{Type: BuildFailed, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
		Log: kept, Duration: time.Since(r.start), Err: err, Text: strings.Join(lines, " ")})
	return &Error{Kind: kind, Lines: lines, Err: err, Code: exitCode(err)}
}

// timedOut writes in make.log that the build was stopped at
// build_timeout, and returns the error's lines.
func (r *buildRun) timedOut() []string {
	e, t := r.e, r.t
	secs := int64(e.BuildTimeout / time.Second)
	// Appended by path: the log may be closed already (after POST_BUILD).
	// Never through a symlink a sandboxed build put in its place.
	if f, err := os.OpenFile(r.logPath, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0); err == nil {
		fmt.Fprintf(f, "\n# dkmsd: the build reached build_timeout (%d seconds) and every process of it was killed.\n", secs)
		f.Close()
	}
	return []string{
		fmt.Sprintf("Build of %s/%s for %s (%s) timed out after %d seconds (build_timeout in framework.conf); the build's processes were killed.", t.Module, t.Version, t.Kernel, t.Arch, secs),
		fmt.Sprintf("Consult %s for more information.", r.logPath),
	}
}

// compile applies the patches, runs PRE_BUILD and make, and checks that
// every module the dkms.conf names was built.
func (r *buildRun) compile(ctx context.Context, conf *tree.Conf, k buildKernel) error {
	e, t, buildDir, log, logPath := r.e, r.t, r.dir, r.log, r.logPath
	for _, p := range conf.Patches {
		patch := filepath.Join(buildDir, "patches", p)
		if !exists(patch) {
			return r.failed(ctx, KindPatchMissing, nil, fmt.Sprintf(" Patch %s as specified in dkms.conf cannot be", p), fmt.Sprintf("found in %s/patches/.", buildDir))
		}
		cmd := "patch -p1 < ./patches/" + p
		err := e.invoke(step{Desc: "applying patch " + p, Command: cmd}, func(out io.Writer) error {
			blk := startLogBlock(log, "Applying patch "+p, cmd)
			err := runArgvIn(ctx, r.sb, buildDir, r.env, io.MultiWriter(log, out), "patch", "-p1", "-i", patch)
			blk.end(err)
			return err
		})
		if err != nil {
			return r.failed(ctx, KindPatchFailed, err, fmt.Sprintf("Application of patch %s failed.", p), fmt.Sprintf("Check %s for more information.", buildDir))
		}
	}
	if conf.PreBuild != "" {
		if err := e.buildScript(ctx, r.sb, "pre_build", e.scriptDir(t.Module, buildDir, conf.PreBuild), conf.PreBuild, log, r.env); err != nil {
			return r.failed(ctx, KindScriptFailed, err, fmt.Sprintf("The pre_build script failed (exit status %d).", exitCode(err)), fmt.Sprintf("Consult %s for more information.", logPath))
		}
	}
	e.info("")
	e.info("Building module:")
	e.cleanBuildArea(ctx, r.sb, t, buildDir, r.env)
	makeCmd, shown := e.makeCommand(conf, t, k, r.budget.Jobs)
	fmt.Fprintf(log, "%s\n\n", r.budget)
	if e.Verbose && e.budget == nil {
		e.info("%s", r.budget) // a batch shows its budget once, at its start
	}
	oomBefore := e.Host.OOMKills()
	var run makeRun
	err := e.invoke(step{Desc: shown, Command: fmt.Sprintf("{ %s; } >> %s 2>&1", makeCmd, logPath), Background: true}, func(io.Writer) error {
		blk := startLogBlock(log, "Building module(s)", makeCmd)
		run = e.runMake(ctx, r.sb, buildDir, makeCmd, r.env, log)
		blk.end(run.err)
		return run.err
	})
	e.recordJobMemory(t.Module, run.peakKiB, err == nil)
	if err != nil {
		if e.oomKilled(run, oomBefore, logPath) {
			return r.failed(ctx, KindOOMKilled, err, r.oomLines()...)
		}
		return r.failed(ctx, KindBuildFailed, err, fmt.Sprintf("Bad return status for module build on kernel: %s (%s)", t.Kernel, t.Arch), fmt.Sprintf("Consult %s for more information.", logPath))
	}
	for _, m := range conf.Buildable() {
		ko := filepath.Join(buildDir, m.BuiltLocation, m.BuiltName+".ko")
		if !exists(ko) {
			return r.failed(ctx, KindNoModuleBuilt, nil, fmt.Sprintf(" Build of %s.ko failed for: %s (%s)", m.BuiltName, t.Kernel, t.Arch),
				"Make sure the name of the generated module is correct and at the root of the",
				"build directory, or consult make.log in the build directory", buildDir+" for more information.")
		}
	}
	return nil
}

// cleanBuildArea runs kbuild's clean in the build dir before make, as
// dkms 3.0.10 does by default (a package's own CLEAN is not run: see
// docs/compatibility.md). Its failure is shown and does not stop the
// build.
func (e *Env) cleanBuildArea(ctx context.Context, sb *buildSandbox, t Target, buildDir string, env []string) {
	cmd := fmt.Sprintf("make -C %s M=%s clean", e.Layout.KernelBuildDir(t.Kernel), buildDir)
	_ = e.invoke(step{Desc: "Cleaning build area", Command: cmd, Background: true}, func(out io.Writer) error {
		return shellCommand(ctx, sb, buildDir, cmd, env, out).Run()
	})
}

// store stages module/ and log/ in a temporary dir beside the final one,
// runs POST_BUILD, and renames the stage into place: the build is then
// either complete or absent.
func (r *buildRun) store(ctx context.Context, conf *tree.Conf, k buildKernel, sign *signer) error {
	e, t, buildDir, log, logPath := r.e, r.t, r.dir, r.log, r.logPath
	kdir := filepath.Join(r.vdir, t.Kernel)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return diskError(kdir, err)
	}
	defer os.Remove(kdir) // only if the build left it empty
	stage, err := os.MkdirTemp(kdir, ".tmp_"+t.Arch+"_")
	if err != nil {
		return diskError(kdir, err)
	}
	defer os.RemoveAll(stage)
	if sign != nil {
		ok, err := sign.ready(ctx, e)
		if err != nil {
			return err
		}
		if !ok {
			sign = nil
		}
	}
	if err := e.stageModules(ctx, r.sb, conf, k, buildDir, stage, sign, r.env, r.hooks()); err != nil {
		var sf *signFailure
		if errors.As(err, &sf) {
			// dkms 3.0.10 warns and installs the module unsigned, which
			// Secure Boot then refuses to load: fail the build instead.
			return r.failed(ctx, KindSignFailed, sf.err, fmt.Sprintf("Failed to sign module '%s'!", sf.ko), sf.err.Error(),
				fmt.Sprintf("The module is not installed unsigned; check that %s and %s are a key and its certificate.", sf.key, sf.cert))
		}
		return r.failed(ctx, KindInternal, err, err.Error())
	}
	if sign != nil {
		e.checkEnrollment(ctx, sign.cert)
	}
	if conf.PostBuild != "" && r.cached == nil { // the build host ran it
		if err := e.buildScript(ctx, r.sb, "post_build", e.scriptDir(t.Module, buildDir, conf.PostBuild), conf.PostBuild, log, r.env); err != nil {
			return r.failed(ctx, KindScriptFailed, err, fmt.Sprintf("The post_build script failed (exit status %d).", exitCode(err)), fmt.Sprintf("Consult %s for more information.", logPath))
		}
	}
	log.Close()
	if err := os.MkdirAll(filepath.Join(stage, "log"), 0o755); err != nil {
		return diskError(stage, err)
	}
	logFile, err := r.sb.builtFile(buildDir, logPath)
	if err != nil {
		return err
	}
	if err := copyFileAtomic(logFile, filepath.Join(stage, "log", "make.log")); err != nil {
		return err
	}
	if cfg := k.ConfigFile; cfg != "" {
		_ = copyFileAtomic(cfg, filepath.Join(stage, "log", filepath.Base(cfg)))
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	final := filepath.Join(kdir, t.Arch)
	if err := replaceDir(stage, final); err != nil {
		return err
	}
	// dkms runs make clean here and then deletes the build dir; deleting
	// it leaves the same.
	_ = e.invoke(step{Desc: "Cleaning build area", Command: "rm -rf " + buildDir, Background: true}, func(io.Writer) error {
		return os.RemoveAll(buildDir)
	})
	os.Remove(e.failedLog(t))
	e.forgetFailure(t)
	e.Sink.Emit(Event{Type: BuildFinished, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
		Log: filepath.Join(final, "log", "make.log"), Duration: time.Since(r.start)})
	return nil
}

// failedLog is where the log of a failed build of t is kept. A later
// successful build or remove deletes it.
func (e *Env) failedLog(t Target) string {
	return e.Layout.FailedLog(t.Module, t.Version, t.Kernel, t.Arch)
}

// makeCommand is the make line for t: the dkms.conf's (MAKE/MAKE_MATCH) or
// the default kbuild call, with a leading "make" given -j jobs (the job
// budget: dkms's -j, lowered to what memory allows; 0 for a bare -j) and
// KERNELRELEASE. shown is the line as dkms shows it: under a jobserver
// make runs without -j (it takes the shared -jN from MAKEFLAGS), and shown
// names that -jN.
func (e *Env) makeCommand(conf *tree.Conf, t Target, k buildKernel, jobs int) (run, shown string) {
	cmd := conf.MakeCommand
	if cmd == "" {
		cmd = fmt.Sprintf("make -C %s M=%s", e.Layout.KernelBuildDir(t.Kernel), filepath.Join(e.Layout.VersionDir(t.Module, t.Version), "build"))
	}
	run, shown = cmd, cmd
	if rest, ok := strings.CutPrefix(cmd, "make"); ok {
		// Under a jobserver make takes its -j from MAKEFLAGS: a -j on the
		// command line would make it start a jobserver of its own.
		j := "-j "
		if jobs > 0 {
			j = fmt.Sprintf("-j%d ", jobs)
		}
		shown = fmt.Sprintf("make %sKERNELRELEASE=%s%s", j, t.Kernel, rest)
		if e.Jobserver != nil {
			shown = fmt.Sprintf("make -j%d KERNELRELEASE=%s%s", e.Jobserver.Slots, t.Kernel, rest)
			j = ""
		}
		run = fmt.Sprintf("make %sKERNELRELEASE=%s%s", j, t.Kernel, rest)
	}
	cfg := k.Config
	for _, opt := range []struct{ option, arg string }{{"CONFIG_CC_IS_CLANG", " CC=clang"}, {"CONFIG_LD_IS_LLD", " LD=ld.lld"}} {
		if cfg[opt.option] == "y" {
			run += opt.arg
			shown += opt.arg
		}
	}
	return run, shown
}

// makeRun is how a build's make ended: its error, the peak resident
// memory of the largest process of its tree in KiB (wait4's maxrss: the
// kernel folds each waited-for child's peak into its parent's, so this
// is what one compiler took), and whether a SIGKILL ended it.
type makeRun struct {
	err     error
	peakKiB uint64
	killed  bool
}

// runMake runs the make line in the build dir with env. Under a jobserver
// it first takes the slot make's first job runs on, and hands make the
// pipe.
func (e *Env) runMake(ctx context.Context, sb *buildSandbox, buildDir, makeCmd string, env []string, log *os.File) makeRun {
	var extra []*os.File
	if e.Jobserver != nil {
		if err := e.Jobserver.Acquire(ctx); err != nil {
			return makeRun{err: err}
		}
		defer e.Jobserver.Release()
		env = slices.Clone(env)
		caller := ""
		for i, kv := range env {
			if v, ok := strings.CutPrefix(kv, "MAKEFLAGS="); ok {
				caller = v
				env = append(env[:i:i], env[i+1:]...)
				break
			}
		}
		env = append(env, "MAKEFLAGS="+e.Jobserver.MakeFlags(caller))
		extra = e.Jobserver.Files()
	}
	cmd := shellCommand(ctx, sb, buildDir, makeCmd, env, log, extra...)
	r := makeRun{err: cmd.Run()}
	if ps := cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok && ru.Maxrss > 0 {
			r.peakKiB = uint64(ru.Maxrss)
		}
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.killed = true
		}
	}
	return r
}

// cc is the compiler the kernel was built with (CONFIG_CC_VERSION_TEXT,
// e.g. gcc-12) when it is installed, as CC=… for the build.
func (k buildKernel) cc() []string {
	text := k.Config["CONFIG_CC_VERSION_TEXT"]
	cc, _, _ := strings.Cut(text, " ")
	if cc == "" {
		return nil
	}
	if _, err := exec.LookPath(cc); err != nil {
		return nil
	}
	return []string{"CC=" + cc}
}

// buildScript runs PRE_BUILD/POST_BUILD in dir (the build dir, or the
// module's override dir) with env, shown as dkms shows it and logged to
// make.log.
func (e *Env) buildScript(ctx context.Context, sb *buildSandbox, kind, dir, script string, log *os.File, env []string) error {
	blk := startLogBlock(log, "Running the "+kind+" script", "cd "+dir+"/ && "+filepath.Join(dir, script))
	ran, err := e.runShownScriptIn(ctx, sb, kind, dir, script, env, log)
	if !ran {
		blk.end(nil)
		return nil
	}
	blk.end(err)
	return err
}

// checkBuildDepends refuses to build before the modules named in
// BUILD_DEPENDS are installed for the kernel (unless forced).
func (e *Env) checkBuildDepends(t Target, conf *tree.Conf) error {
	var missing []string
	for _, dep := range conf.BuildDepends {
		if e.Layout.InstalledVersion(dep, t.Kernel, t.Arch) == "" {
			missing = append(missing, dep)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if e.Force {
		e.warn("Warning: Trying to build module %s/%s for kernel %s (%s) despite of missing BUILD_DEPENDS: %s.", t.Module, t.Version, t.Kernel, t.Arch, strings.Join(missing, " "))
		return nil
	}
	return fail(KindBuildDepends, fmt.Sprintf("Aborting build of module %s/%s for kernel %s (%s) due to missing BUILD_DEPENDS: %s.", t.Module, t.Version, t.Kernel, t.Arch, strings.Join(missing, " ")),
		"You may override by specifying --force.")
}
