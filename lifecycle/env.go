package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle/memory"
	"github.com/dkmsd/dkmsd/tree"
)

// Env is everything an operation needs to know about the machine and the
// command line: where the trees are, the framework settings, where events
// go, and the dkms flags that change behaviour.
type Env struct {
	Layout    tree.Layout
	Framework tree.Framework
	Distro    tree.Distro
	Sink      Sink

	// Jobs is make's -j (dkms's parallel_jobs); 0 means a bare -j.
	Jobs                 int
	Force                bool
	ForceVersionOverride bool
	NoDepmod             bool
	Verbose              bool
	SymlinkModules       bool
	// ModprobeOnInstall is modprobe_on_install (--modprobe-on-install):
	// see loadNewModules.
	ModprobeOnInstall bool
	// ConfFile is -c: a dkms.conf to use instead of the module's own.
	ConfFile string
	// Directives are --directive NAME=VALUE.
	Directives []string
	// KernelConfig is --config: the kernel .config to consult.
	KernelConfig string
	// ConfTimeout bounds each dkms.conf evaluation.
	ConfTimeout time.Duration
	// Environ is the environment handed to dkms.conf, scripts and make.
	Environ []string
	// Jobserver, when set, is the one job budget every make shares; make
	// then gets no -j of its own.
	Jobserver *Jobserver
	// Host is the machine whose memory the job budget counts (its zero
	// value: this one).
	Host memory.Host
	// DeferDepmod leaves depmod to the caller, which runs it once per
	// kernel after a batch of installs.
	DeferDepmod bool
	// NoInitrd: the command will not regenerate initrds (--no-initrd).
	NoInitrd bool
	// LockWait bounds the wait for the tree lock (0: no bound), for
	// package-manager hooks that must not hang a transaction; LockReport
	// is how often a waiter says who holds it (0: DefaultLockReport).
	LockWait, LockReport time.Duration
	// RememberFailures is set by package-manager hooks: their autoinstall
	// settles a job whose failure record still holds without building it
	// and records the failures of the builds it runs (failmemory.go).
	// dkms's own commands always build, as dkms 3.0.10 does, and a build
	// they start forgets the record.
	RememberFailures bool
	// BuildTimeout bounds one module's build for one kernel (0: no
	// bound): framework.conf's build_timeout.
	BuildTimeout time.Duration
	// CacheMode is how builds use the fleet module cache (cachebuild.go).
	CacheMode CacheMode

	// budget, set by a scheduler on the copies it hands its jobs, is the
	// job budget of their batch.
	budget *jobBudget

	// Shared by the copies of an Env a scheduler hands its jobs.
	confs  *tree.ConfCache
	mokMu  *sync.Mutex // one MOK key generation at a time
	warned *warnOnce
	cache  *cacheState
	// sandbox is the build runner, chosen once (sandboxed.go).
	sandbox *sandboxChoice
}

// NewEnv reads framework.conf under the layout's configuration dir and
// returns an Env with dkms's defaults.
func NewEnv(ctx context.Context, layout tree.Layout, sink Sink) (*Env, error) {
	if sink == nil {
		sink = Discard
	}
	e := &Env{Layout: layout, Sink: sink, Distro: tree.ReadDistro(layout.Root), Environ: os.Environ(),
		confs: &tree.ConfCache{}, mokMu: &sync.Mutex{}, warned: &warnOnce{}, cache: &cacheState{}, sandbox: &sandboxChoice{}}
	fw, err := tree.ReadFramework(ctx, layout.ConfDir, "", e.Environ, &lineWriter{sink: sink, typ: Warning})
	if err != nil {
		return nil, fmt.Errorf("read framework.conf: %w", err)
	}
	e.Framework = fw
	if fw.Distribution != "" {
		e.Distro = tree.Distro(fw.Distribution)
	}
	for _, u := range fw.Unused {
		e.warn("Warning: %s: %s is not a setting dkmsd acts on; it is ignored.", u.Where, u.Name)
	}
	e.Layout = fw.Apply(layout)
	// The CPU budget: parallel_jobs, else a -jN in the caller's MAKEFLAGS
	// (dkms ignored it), else the number of CPUs. -j on the command line
	// overrides all of them.
	e.Jobs = fw.ParallelJobs
	if e.Jobs == 0 {
		e.Jobs = JobsFromMakeflags(os.Getenv("MAKEFLAGS"))
	}
	if e.Jobs == 0 {
		e.Jobs = runtime.NumCPU()
	}
	e.Verbose = fw.Verbose
	e.SymlinkModules = fw.SymlinkModules
	e.ModprobeOnInstall = fw.ModprobeOnInstall
	e.BuildTimeout = fw.BuildTimeout
	return e, nil
}

// Target is one module version on one kernel and arch.
type Target struct {
	Module, Version, Kernel, Arch string
}

func (t Target) String() string {
	return fmt.Sprintf("%s/%s for %s (%s)", t.Module, t.Version, t.Kernel, t.Arch)
}

// confFile is the dkms.conf an operation reads: -c, else the tree's copy.
func (e *Env) confFile(module, version string) string {
	if e.ConfFile != "" {
		return e.ConfFile
	}
	return e.Layout.ConfFile(module, version)
}

// kernelConfig is the kernel configuration file for BUILD_EXCLUSIVE_CONFIG
// and signing: --config, else the kernel's build dir.
func (e *Env) kernelConfig(kernel string) string {
	if e.KernelConfig != "" {
		return e.KernelConfig
	}
	return e.Layout.Kernel(kernel).ConfigFile()
}

// readConf evaluates a dkms.conf for a target. strict reads (add, build,
// install) pass the file's deprecation warnings on.
func (e *Env) readConf(ctx context.Context, file string, t Target, strict bool) (*tree.Conf, error) {
	if _, err := os.Stat(file); err != nil {
		return nil, fail(KindNoConf, "Could not locate dkms.conf file.", "File: "+file+" does not exist.")
	}
	stderr := &lineWriter{sink: e.Sink, typ: Warning}
	defer stderr.Flush()
	conf, err := tree.ReadConf(ctx, file, tree.ConfContext{
		Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
		Layout:          e.Layout,
		KernelSourceDir: e.Layout.KernelBuildDir(t.Kernel),
		KernelConfig:    e.kernelConfig(t.Kernel),
		ParallelJobs:    e.Jobs,
		Distro:          e.Distro,
		Directives:      e.Directives,
		Env:             e.Environ,
		Stderr:          stderr,
		Timeout:         e.ConfTimeout,
		Cache:           e.confs,
		Wrap:            e.confWrap(ctx, t),
	})
	if err != nil {
		return nil, e.reportConfFailure(file, err)
	}
	if strict {
		for _, w := range conf.Warnings {
			e.warn("%s", w)
		}
		e.warnUnusedDirectives(file, conf.Unused)
		for _, d := range e.Directives {
			name, value, _ := strings.Cut(d, "=")
			e.info("DIRECTIVE: %s=\"%s\"", name, value)
		}
	}
	return conf, nil
}

// confFailure turns a tree error into dkms's "Bad conf file" error, with
// every problem line.
func confFailure(file string, err error) error {
	problems, ok := confProblems(err)
	if !ok {
		return err
	}
	return &Error{Kind: KindBadConf, Lines: append(problems, badConfLines(file)...), Err: err}
}

// reportConfFailure is confFailure as dkms shows it: each problem on a
// line of its own on stderr as it is found, then the "Error! Bad conf
// file." error.
func (e *Env) reportConfFailure(file string, err error) error {
	problems, ok := confProblems(err)
	if !ok {
		return err
	}
	for _, p := range problems {
		e.warn("%s", p)
	}
	return &Error{Kind: KindBadConf, Lines: append(problems, badConfLines(file)...), Err: err, Shown: len(problems)}
}

func badConfLines(file string) []string {
	return []string{"Bad conf file.", "File: " + file + " does not represent a valid dkms.conf file."}
}

// confProblems are the lines that say what is wrong with a dkms.conf; ok
// is false for an error that is not about the file.
func confProblems(err error) (problems []string, ok bool) {
	var ce *tree.ConfError
	var se *tree.SyntaxError
	var ee *tree.EvalError
	switch {
	case errors.As(err, &ce):
		for _, p := range ce.Problems {
			problems = append(problems, strings.Split(p, "\n")...)
		}
	case errors.As(err, &se):
		problems = append(problems, se.Error())
	case errors.As(err, &ee):
		problems = append(problems, ee.Error())
	default:
		return nil, false
	}
	return problems, true
}

// RequireAdded checks that module/version is in the tree and not broken.
func (e *Env) RequireAdded(module, version string) error {
	mv, ok := e.Layout.Lookup(module, version)
	if !ok {
		return fail(KindNotAdded, fmt.Sprintf("The module/version combo: %s-%s is not located in the DKMS tree.", module, version))
	}
	if mv.Broken {
		return brokenError(module, version)
	}
	return nil
}

func brokenError(module, version string) error {
	return fail(KindBroken, fmt.Sprintf("%s/%s is broken!", module, version),
		"Missing the source directory or the symbolic link pointing to it.",
		"Manual intervention is required!")
}

// isBuilt reports whether t's module dir exists and holds every module
// the dkms.conf names (dkms 3.0.10's test).
func (e *Env) isBuilt(ctx context.Context, t Target) (bool, error) {
	dir := filepath.Join(e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch), "module")
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return false, nil
	}
	conf, err := e.readConf(ctx, e.confFile(t.Module, t.Version), t, false)
	if err != nil {
		return false, err
	}
	for _, m := range conf.Buildable() {
		if tree.FindModuleFile(dir, m.DestName) == "" {
			return false, nil
		}
	}
	return true, nil
}

// isInstalled reports whether t is built and its kernel link points at it.
func (e *Env) isInstalled(ctx context.Context, t Target) (bool, error) {
	built, err := e.isBuilt(ctx, t)
	if err != nil || !built {
		return false, err
	}
	return e.Layout.InstalledVersion(t.Module, t.Kernel, t.Arch) == t.Version, nil
}

// headersPlaces is where dkms says it looked for a kernel's headers:
// the build dir (--kernelsourcedir), or the kernel's build and source
// links.
func headersPlaces(k tree.Kernel) string {
	if filepath.Dir(k.BuildDir) != k.Dir {
		return k.BuildDir
	}
	return k.BuildDir + " or " + filepath.Join(k.Dir, "source")
}

func (e *Env) checkHeaders(kernel string) error {
	k := e.Layout.Kernel(kernel)
	if k.HasHeaders() {
		return nil
	}
	// dkms 3.0.10's text on Debian; elsewhere the distribution's package,
	// or dkms 3.4's generic advice when its naming is unknown.
	advice := fmt.Sprintf("Please install your distribution's kernel headers package matching %s, or use the --kernelsourcedir option to tell DKMS where it's located.", kernel)
	if pkg := e.Distro.HeadersPackage(kernel); pkg != "" {
		advice = fmt.Sprintf("Please install the %s package or use the --kernelsourcedir option to tell DKMS where it's located.", pkg)
	}
	return fail(KindNoHeaders, fmt.Sprintf("Your kernel headers for kernel %s cannot be found at %s.", kernel, headersPlaces(k)), advice)
}
