package tree

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// confNames are the directives dkms harvests from a dkms.conf; nothing else
// a file defines (functions, other variables) leaks out of it.
var confNames = []string{
	"PACKAGE_NAME", "PACKAGE_VERSION", "CLEAN",
	"POST_ADD", "POST_BUILD", "POST_INSTALL", "POST_REMOVE", "PRE_BUILD", "PRE_INSTALL",
	"BUILD_DEPENDS", "BUILD_DEPENDS_REBUILD",
	"BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_KERNEL_MIN", "BUILD_EXCLUSIVE_KERNEL_MAX",
	"BUILD_EXCLUSIVE_ARCH", "BUILD_EXCLUSIVE_CONFIG",
	"OBSOLETE_BY", "MAKE", "MAKE_MATCH", "PATCH", "PATCH_MATCH",
	"BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION",
	"STRIP", "AUTOINSTALL", "NO_WEAK_MODULES",
	"REMAKE_INITRD", "MODULES_CONF", "MODULES_CONF_OBSOLETES",
	"MODULES_CONF_ALIAS_TYPE", "MODULES_CONF_OBSOLETE_ONLY",
	"SIGN_FILE", "MOK_SIGNING_KEY", "MOK_CERTIFICATE",
}

// unusedConfNames are directives dkms 3.0.10 reads from a dkms.conf and
// never uses (signing is framework.conf's sign_file, mok_signing_key and
// mok_certificate): dkmsd says so rather than ignore them in silence.
var unusedConfNames = []string{"SIGN_FILE", "MOK_SIGNING_KEY", "MOK_CERTIFICATE"}

// deprecatedNames are accepted and ignored, with the warning dkms 3.x
// prints. REMAKE_INITRD is not among them: dkmsd acts on it (initrd).
var deprecatedNames = []string{
	"MODULES_CONF", "MODULES_CONF_OBSOLETES", "MODULES_CONF_ALIAS_TYPE", "MODULES_CONF_OBSOLETE_ONLY",
}

// ConfContext is what a dkms.conf is evaluated against: the variables dkms
// exposes to it and where its override files live.
type ConfContext struct {
	Module, Version string
	Kernel, Arch    string
	Layout          Layout
	// KernelSourceDir is $kernel_source_dir; KernelConfig is the kernel
	// .config used for BUILD_EXCLUSIVE_CONFIG.
	KernelSourceDir string
	KernelConfig    string
	ParallelJobs    int
	Distro          Distro
	// Directives are --directive NAME=VALUE, applied after every file.
	Directives []string
	Env        []string
	Stderr     io.Writer
	Timeout    time.Duration
	// Cache, when set, reuses evaluations that cannot differ.
	Cache *ConfCache
	// Wrap, when set, rewrites each command the file runs ($(…)) before
	// it runs: the build sandbox.
	Wrap func(*exec.Cmd) error
}

// ModuleSpec is one record of the BUILT_/DEST_MODULE_* arrays.
type ModuleSpec struct {
	BuiltName     string
	BuiltLocation string // relative to the build dir, "" or ending in "/"
	DestName      string
	// DestLocation is where the module is installed under the kernel's
	// module dir, after the distribution's override (/updates/dkms on
	// Debian); RawDestLocation is the value the file gave.
	DestLocation    string
	RawDestLocation string
	Strip           bool
	// Excluded names the BUILD_EXCLUSIVE_*[#] directive that leaves this
	// module out for the kernel and arch, or is "".
	Excluded string
}

// Conf is a dkms.conf evaluated for one kernel and architecture.
type Conf struct {
	File           string
	PackageName    string
	PackageVersion string
	Modules        []ModuleSpec
	// MakeCommand is the make line chosen for the kernel (MAKE/MAKE_MATCH),
	// or "" for the default `make -C <kernel build dir> M=<build dir>`.
	MakeCommand string
	// Patches are the PATCH entries that apply to the kernel, in order.
	Patches []string
	Clean   string

	PreBuild, PostBuild, PostAdd, PreInstall, PostInstall, PostRemove string

	BuildDepends        []string
	BuildDependsRebuild bool
	ObsoleteBy          string
	AutoInstall         bool
	NoWeakModules       bool
	RemakeInitrd        bool
	// Excluded names the BUILD_EXCLUSIVE_* directive that rules this
	// kernel/arch out for the whole package (element 0, or each module's
	// own element), or is "".
	Excluded string

	// Warnings are what a strict read prints (deprecated directives, zero
	// modules); Lines maps each directive to the line that first set it.
	Warnings []string
	Lines    map[string]int
	// Unused are the directives set that have no effect (unusedConfNames).
	Unused []string
}

// ConfError is an invalid dkms.conf: every problem found, each naming the
// directive (and the line, where known).
type ConfError struct {
	File     string
	Problems []string
}

func (e *ConfError) Error() string {
	return fmt.Sprintf("bad conf file %s: %s", e.File, strings.Join(e.Problems, "; "))
}

// ReadConf evaluates the dkms.conf at file and the administrator's
// overrides in /etc/dkms for the kernel and arch in c.
func ReadConf(ctx context.Context, file string, c ConfContext) (*Conf, error) {
	vals, lines, warnings, err := c.Cache.values(ctx, file, c)
	if err != nil {
		return nil, err
	}
	if len(c.Directives) > 0 {
		vals = maps.Clone(vals)
		for _, d := range c.Directives {
			name, value, _ := strings.Cut(d, "=")
			vals[name] = Value{Elems: map[int]string{0: value}}
		}
	}
	conf := &Conf{File: file, Lines: lines, Warnings: append([]string(nil), warnings...)}
	problems := conf.fill(vals, c)
	if len(problems) > 0 {
		return nil, &ConfError{File: file, Problems: problems}
	}
	return conf, nil
}

// ConfCache keeps evaluated dkms.conf files for one process: a file that
// runs no command and reads nothing kernel-specific is evaluated once per
// module version, not once per kernel (status reads one per built
// kernel). A nil *ConfCache caches nothing.
type ConfCache struct {
	mu      sync.Mutex
	entries map[confKey]*confEntry
	// dirs lists the names in each override dir, read once: most
	// machines have no override files, and status would otherwise stat six
	// per module and kernel.
	dirs map[string]map[string]bool
}

// mayExist reports whether path's name was in its directory when first
// looked at (always true without a cache).
func (cc *ConfCache) mayExist(path string) bool {
	if cc == nil {
		return true
	}
	dir, name := filepath.Split(path)
	cc.mu.Lock()
	defer cc.mu.Unlock()
	names, ok := cc.dirs[dir]
	if !ok {
		names = map[string]bool{}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			names[e.Name()] = true
		}
		if cc.dirs == nil {
			cc.dirs = map[string]map[string]bool{}
		}
		cc.dirs[dir] = names
	}
	return names[name]
}

type confKey struct{ file, module, version string }

type confEntry struct {
	size     int64
	mtime    time.Time
	vals     map[string]Value
	lines    map[string]int
	warnings []string
}

// values evaluates file (and its overrides) for c, from the cache when it
// can.
func (cc *ConfCache) values(ctx context.Context, file string, c ConfContext) (map[string]Value, map[string]int, []string, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read dkms.conf: %w", err)
	}
	var overrides []string
	for _, o := range overrideFiles(c) {
		if cc.mayExist(o) {
			if _, err := os.Stat(o); err == nil {
				overrides = append(overrides, o)
			}
		}
	}
	key := confKey{file, c.Module, c.Version}
	if cc != nil && len(overrides) == 0 {
		cc.mu.Lock()
		e := cc.entries[key]
		cc.mu.Unlock()
		if e != nil && e.size == fi.Size() && e.mtime.Equal(fi.ModTime()) {
			return e.vals, e.lines, e.warnings, nil
		}
	}
	src, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read dkms.conf: %w", err)
	}
	parsed, err := parseShell(file, src, confNames)
	if err != nil {
		return nil, nil, nil, err
	}
	ev := shellEval{Vars: confVars(c), Env: c.Env, Stderr: c.Stderr, Timeout: c.Timeout, Wrap: c.Wrap}
	res, err := ev.exec(ctx, file, parsed, confNames)
	if err != nil {
		return nil, nil, nil, err
	}
	vals, lines := res.Values, res.Lines
	warnings := deprecations(vals, file)
	for _, o := range overrides {
		osrc, err := os.ReadFile(o)
		if err != nil {
			continue
		}
		ev.Prelude = vals
		ores, err := ev.run(ctx, o, osrc, confNames)
		if err != nil {
			return nil, nil, nil, err
		}
		warnings = append(warnings, deprecations(ores.Values, o)...)
		vals = ores.Values
	}
	if cc != nil && len(overrides) == 0 && parsed.targetFree {
		cc.mu.Lock()
		if cc.entries == nil {
			cc.entries = map[confKey]*confEntry{}
		}
		cc.entries[key] = &confEntry{size: fi.Size(), mtime: fi.ModTime(), vals: vals, lines: lines, warnings: warnings}
		cc.mu.Unlock()
	}
	return vals, lines, warnings, nil
}

// ReadPackageIdentity reads only PACKAGE_NAME and PACKAGE_VERSION, for
// `dkms add <dir>` before the module's name is known.
func ReadPackageIdentity(ctx context.Context, file string, c ConfContext) (name, version string, err error) {
	src, err := os.ReadFile(file)
	if err != nil {
		return "", "", fmt.Errorf("read dkms.conf: %w", err)
	}
	ev := shellEval{Vars: confVars(c), Env: c.Env, Stderr: c.Stderr, Timeout: c.Timeout, Wrap: c.Wrap}
	res, err := ev.run(ctx, file, src, confNames)
	if err != nil {
		return "", "", err
	}
	name, version = res.Values["PACKAGE_NAME"].Scalar(), res.Values["PACKAGE_VERSION"].Scalar()
	var problems []string
	if name == "" {
		problems = append(problems, "dkms.conf: Error! No 'PACKAGE_NAME' directive specified.")
	} else if msg := badComponent(name); msg != "" {
		problems = append(problems, fmt.Sprintf("dkms.conf: Error! 'PACKAGE_NAME' %s.", msg))
	}
	if version == "" {
		problems = append(problems, "dkms.conf: Error! No 'PACKAGE_VERSION' directive specified.")
	} else if msg := badComponent(version); msg != "" {
		problems = append(problems, fmt.Sprintf("dkms.conf: Error! 'PACKAGE_VERSION' %s.", msg))
	}
	if len(problems) > 0 {
		return "", "", &ConfError{File: file, Problems: problems}
	}
	return name, version, nil
}

// confVars are the variables dkms has set when it sources a dkms.conf.
func confVars(c ConfContext) map[string]string {
	jobs := ""
	if c.ParallelJobs > 0 {
		jobs = fmt.Sprint(c.ParallelJobs)
	}
	return map[string]string{
		"kernelver":         c.Kernel,
		"arch":              c.Arch,
		"dkms_tree":         c.Layout.DKMSTree,
		"source_tree":       c.Layout.SourceTree,
		"install_tree":      c.Layout.InstallTree,
		"tmp_location":      c.Layout.TmpDir,
		"kernel_source_dir": c.KernelSourceDir,
		"kernel_config":     c.KernelConfig,
		"module":            c.Module,
		"module_version":    c.Version,
		"parallel_jobs":     jobs,
	}
}

// overrideFiles are the administrator's per-module files, in dkms's order
// of increasing specificity.
func overrideFiles(c ConfContext) []string {
	if c.Module == "" {
		return nil
	}
	d, m, v, k, a := c.Layout.ConfDir, c.Module, c.Version, c.Kernel, c.Arch
	return []string{
		path.Join(d, m+".conf"),
		path.Join(d, m+"-"+v+".conf"),
		path.Join(d, m+"-"+v+"-"+k+".conf"),
		path.Join(d, m+"-"+v+"-"+k+"-"+a+".conf"),
		path.Join(d, m+"--"+k+".conf"),
		path.Join(d, m+"--"+k+"-"+a+".conf"),
	}
}
