package tree

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
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
}

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
	// kernel/arch out, or is "".
	Excluded string

	// Warnings are what a strict read prints (deprecated directives, zero
	// modules); Lines maps each directive to the line that first set it.
	Warnings []string
	Lines    map[string]int
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
	ev := shellEval{Vars: confVars(c), Env: c.Env, Stderr: c.Stderr, Timeout: c.Timeout}
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
	ev := shellEval{Vars: confVars(c), Env: c.Env, Stderr: c.Stderr, Timeout: c.Timeout}
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

func deprecations(vals map[string]Value, file string) []string {
	var w []string
	for _, n := range deprecatedNames {
		if vals[n].Set() {
			w = append(w, fmt.Sprintf("Deprecated feature: %s (%s)", n, file))
		}
	}
	if clean := vals["CLEAN"].Scalar(); vals["CLEAN"].Set() {
		switch clean {
		case "true", "/bin/true", "/usr/bin/true":
		default:
			w = append(w, fmt.Sprintf("Deprecated feature: CLEAN (%s)", file))
		}
	}
	return w
}

// fill validates vals and sets the fields of c; it returns every problem,
// worded as dkms words them.
func (c *Conf) fill(vals map[string]Value, ctx ConfContext) []string {
	var problems []string
	at := func(name string) string {
		if l, ok := c.Lines[name]; ok {
			return fmt.Sprintf(" (%s line %d)", c.File, l)
		}
		return ""
	}
	bad := func(format string, args ...any) {
		problems = append(problems, "dkms.conf: Error! "+fmt.Sprintf(format, args...))
	}

	c.PackageName = vals["PACKAGE_NAME"].Scalar()
	c.PackageVersion = vals["PACKAGE_VERSION"].Scalar()
	c.Clean = vals["CLEAN"].Scalar()
	c.PreBuild = vals["PRE_BUILD"].Scalar()
	c.PostBuild = vals["POST_BUILD"].Scalar()
	c.PostAdd = vals["POST_ADD"].Scalar()
	c.PreInstall = vals["PRE_INSTALL"].Scalar()
	c.PostInstall = vals["POST_INSTALL"].Scalar()
	c.PostRemove = vals["POST_REMOVE"].Scalar()
	c.ObsoleteBy = vals["OBSOLETE_BY"].Scalar()

	for _, name := range []string{"PRE_BUILD", "POST_BUILD", "POST_ADD", "PRE_INSTALL", "POST_INSTALL", "POST_REMOVE"} {
		script := strings.Fields(vals[name].Scalar())
		if len(script) > 0 && escapes(strings.TrimLeft(script[0], "/")) {
			bad("'%s' script path '%s' escapes the module's directory%s.", name, script[0], at(name))
		}
	}

	switch {
	case c.PackageName == "":
		bad("No 'PACKAGE_NAME' directive specified.")
	case badComponent(c.PackageName) != "":
		bad("'PACKAGE_NAME' %s%s.", badComponent(c.PackageName), at("PACKAGE_NAME"))
	}
	switch {
	case c.PackageVersion == "":
		bad("No 'PACKAGE_VERSION' directive specified.")
	case badComponent(c.PackageVersion) != "":
		bad("'PACKAGE_VERSION' %s%s.", badComponent(c.PackageVersion), at("PACKAGE_VERSION"))
	}

	switch v := strings.ToLower(vals["AUTOINSTALL"].Scalar()); v {
	case "yes":
		c.AutoInstall = true
	case "", "no":
	default:
		bad("Unsupported AUTOINSTALL value '%s'%s.", vals["AUTOINSTALL"].Scalar(), at("AUTOINSTALL"))
	}
	c.BuildDependsRebuild = strings.EqualFold(vals["BUILD_DEPENDS_REBUILD"].Scalar(), "yes")
	c.NoWeakModules = strings.EqualFold(vals["NO_WEAK_MODULES"].Scalar(), "yes")
	c.RemakeInitrd = strings.EqualFold(vals["REMAKE_INITRD"].Scalar(), "yes")
	for _, i := range vals["BUILD_DEPENDS"].Indexes() {
		c.BuildDepends = append(c.BuildDepends, strings.Fields(vals["BUILD_DEPENDS"].Get(i))...)
	}

	// The module records: 1 + the highest index of any of the four arrays
	// (upstream's fix for sparse arrays; 3.0.10 counted elements).
	bn, bl, dn, dl, st := vals["BUILT_MODULE_NAME"], vals["BUILT_MODULE_LOCATION"], vals["DEST_MODULE_NAME"], vals["DEST_MODULE_LOCATION"], vals["STRIP"]
	n := max(bn.Len(), bl.Len(), dn.Len(), dl.Len())
	stripDefault := true
	for i := 0; i < n; i++ {
		m := ModuleSpec{BuiltName: bn.Get(i), BuiltLocation: bl.Get(i), DestName: dn.Get(i), RawDestLocation: dl.Get(i)}
		switch s := st.Get(i); {
		case strings.HasPrefix(s, "n"), strings.HasPrefix(s, "N"):
			m.Strip = false
		case s == "":
			m.Strip = stripDefault
		default:
			m.Strip = true
		}
		if i == 0 {
			stripDefault = m.Strip
		}
		if m.BuiltName == "" && n == 1 {
			m.BuiltName = c.PackageName
		}
		if m.DestName == "" {
			m.DestName = m.BuiltName
		}
		if m.BuiltLocation != "" && !strings.HasSuffix(m.BuiltLocation, "/") {
			m.BuiltLocation += "/"
		}
		if m.BuiltName == "" {
			bad("No 'BUILT_MODULE_NAME' directive specified for record #%d.", i)
		} else if strings.HasSuffix(m.BuiltName, ".o") || strings.HasSuffix(m.BuiltName, ".ko") {
			bad("'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #%d%s.", i, at("BUILT_MODULE_NAME"))
		} else if msg := badComponent(m.BuiltName); msg != "" {
			bad("'BUILT_MODULE_NAME' %s in record #%d%s.", msg, i, at("BUILT_MODULE_NAME"))
		}
		if strings.HasSuffix(m.DestName, ".o") || strings.HasSuffix(m.DestName, ".ko") {
			bad("'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #%d%s.", i, at("DEST_MODULE_NAME"))
		} else if msg := badComponent(m.DestName); dn.Get(i) != "" && msg != "" {
			bad("'DEST_MODULE_NAME' %s in record #%d%s.", msg, i, at("DEST_MODULE_NAME"))
		}
		if m.BuiltLocation != "" && escapes(m.BuiltLocation) {
			bad("'BUILT_MODULE_LOCATION' '%s' escapes the build directory in record #%d%s.", m.BuiltLocation, i, at("BUILT_MODULE_LOCATION"))
		}
		switch {
		case m.RawDestLocation == "":
			bad("No 'DEST_MODULE_LOCATION' directive specified for record #%d.", i)
		case !strings.HasPrefix(m.RawDestLocation, "/kernel") && !strings.HasPrefix(m.RawDestLocation, "/updates") && !strings.HasPrefix(m.RawDestLocation, "/extra"):
			bad("Directive 'DEST_MODULE_LOCATION' does not begin with\n'/kernel', '/updates', or '/extra' in record #%d%s.", i, at("DEST_MODULE_LOCATION"))
		case escapes(strings.TrimPrefix(m.RawDestLocation, "/")):
			bad("'DEST_MODULE_LOCATION' '%s' escapes the kernel's module directory in record #%d%s.", m.RawDestLocation, i, at("DEST_MODULE_LOCATION"))
		}
		m.DestLocation = ctx.Distro.DestLocation(m.RawDestLocation)
		c.Modules = append(c.Modules, m)
	}
	if n == 0 {
		c.Warnings = append(c.Warnings, "dkms.conf: Warning! Zero modules specified.")
	}
	seenBuilt, seenDest := map[string]bool{}, map[string]bool{}
	for i, m := range c.Modules {
		if m.BuiltName != "" && seenBuilt[m.BuiltLocation+m.BuiltName] {
			bad("Duplicate module '%s%s' in 'BUILT_MODULE_NAME[%d]'.", m.BuiltLocation, m.BuiltName, i)
		}
		if m.DestName != "" && seenDest[m.DestName] {
			bad("Duplicate module '%s' in 'DEST_MODULE_NAME[%d]'.", m.DestName, i)
		}
		seenBuilt[m.BuiltLocation+m.BuiltName], seenDest[m.DestName] = true, true
	}

	// MAKE: MAKE[0] unless MAKE_MATCH[0] is set; the last matching
	// MAKE_MATCH wins. An unmatched MAKE_MATCH falls back to the default
	// (upstream intent; dkms reused a stale command, quirk 21).
	mk, mm := vals["MAKE"], vals["MAKE_MATCH"]
	// A blank MAKE is no MAKE: bash would run nothing for it.
	if mm.Get(0) == "" {
		c.MakeCommand = strings.TrimSpace(mk.Get(0))
	}
	for _, i := range mk.Indexes() {
		if strings.TrimSpace(mk.Get(i)) == "" || mm.Get(i) == "" {
			continue
		}
		ok, err := matchERE(mm.Get(i), ctx.Kernel)
		if err != nil {
			bad("'MAKE_MATCH[%d]' is not a valid regular expression: %v%s.", i, err, at("MAKE_MATCH"))
		} else if ok {
			c.MakeCommand = strings.TrimSpace(mk.Get(i))
		}
	}
	pt, pm := vals["PATCH"], vals["PATCH_MATCH"]
	for _, i := range pt.Indexes() {
		p := pt.Get(i)
		if p == "" {
			continue
		}
		if escapes(p) {
			bad("'PATCH[%d]' '%s' escapes the patches directory%s.", i, p, at("PATCH"))
			continue
		}
		if m := pm.Get(i); m != "" {
			ok, err := matchERE(m, ctx.Kernel)
			if err != nil {
				bad("'PATCH_MATCH[%d]' is not a valid regular expression: %v%s.", i, err, at("PATCH_MATCH"))
				continue
			}
			if !ok {
				continue
			}
		}
		c.Patches = append(c.Patches, p)
	}

	excl, err := excludedBy(vals, ctx)
	if err != nil {
		bad("%v.", err)
	}
	c.Excluded = excl
	return problems
}

// excludedBy names the BUILD_EXCLUSIVE_* directive that rules the kernel
// and arch out.
func excludedBy(vals map[string]Value, c ConfContext) (string, error) {
	if re := vals["BUILD_EXCLUSIVE_KERNEL"].Scalar(); re != "" {
		ok, err := matchERE(re, c.Kernel)
		if err != nil {
			return "", fmt.Errorf("'BUILD_EXCLUSIVE_KERNEL' is not a valid regular expression: %v", err)
		}
		if !ok {
			return "BUILD_EXCLUSIVE_KERNEL", nil
		}
	}
	if min := vals["BUILD_EXCLUSIVE_KERNEL_MIN"].Scalar(); min != "" && CompareVersions(c.Kernel, min) < 0 {
		return "BUILD_EXCLUSIVE_KERNEL_MIN", nil
	}
	max := vals["BUILD_EXCLUSIVE_KERNEL_MAX"].Scalar()
	if max == "" {
		max = vals["OBSOLETE_BY"].Scalar()
	}
	if max != "" && CompareVersions(c.Kernel, max) > 0 {
		return "BUILD_EXCLUSIVE_KERNEL_MAX", nil
	}
	if re := vals["BUILD_EXCLUSIVE_ARCH"].Scalar(); re != "" {
		ok, err := matchERE(re, c.Arch)
		if err != nil {
			return "", fmt.Errorf("'BUILD_EXCLUSIVE_ARCH' is not a valid regular expression: %v", err)
		}
		if !ok {
			return "BUILD_EXCLUSIVE_ARCH", nil
		}
	}
	if cfgs := strings.Fields(vals["BUILD_EXCLUSIVE_CONFIG"].Scalar()); len(cfgs) > 0 && c.KernelConfig != "" {
		set, err := readKconfig(c.KernelConfig)
		if err == nil {
			for _, want := range cfgs {
				name, negate := strings.CutPrefix(want, "!")
				if set[name] == negate {
					return "BUILD_EXCLUSIVE_CONFIG", nil
				}
			}
		}
	}
	return "", nil
}

// readKconfig returns the options set to y or m in a kernel .config.
func readKconfig(file string) (map[string]bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	set := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), "=")
		if ok && (val == "y" || val == "m") {
			set[name] = true
		}
	}
	return set, sc.Err()
}

// matchERE is bash's [[ s =~ re ]]: an unanchored POSIX extended regexp.
func matchERE(re, s string) (bool, error) {
	r, err := regexp.CompilePOSIX(re)
	if err != nil {
		return false, err
	}
	return r.MatchString(s), nil
}

// badComponent says what is wrong with a name used as one path component
// (module, version, module file name), or "".
func badComponent(s string) string {
	switch {
	case s == "." || s == "..":
		return fmt.Sprintf("'%s' is not a usable name", s)
	case strings.ContainsAny(s, "/"):
		return fmt.Sprintf("'%s' contains '/'", s)
	case strings.ContainsAny(s, " \t\n"):
		return fmt.Sprintf("'%s' contains white space", s)
	}
	return ""
}

// escapes reports whether a relative path leaves the directory it is
// relative to (an absolute path, or one with a ".." component).
func escapes(p string) bool {
	if strings.HasPrefix(p, "/") {
		return true
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}
