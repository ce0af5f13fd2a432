package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// args is a parsed dkms command line. The grammar is dkms's: options and
// the action in any order, long options prefix-matched, short options
// taking the next word, and bare words read as a source dir, a dkms.conf,
// an archive or module/version.
type args struct {
	action          string
	module, version string
	kernels, arches []string
	templateKernel  string
	conf            string
	kernelConfig    string
	archive         string
	directives      []string
	sourceDir       string

	dkmsTree, sourceTree, installTree, kernelSourceDir string
	root                                               string
	initrdStrategy                                     string
	distro, media                                      string
	firstWord                                          string // the first bare word that is not the action
	cacheOp                                            string // dkms cache push|pull|ls

	force, forceVersionOverride, all, verbose, quiet bool
	binariesOnly, sourceOnly, noDepmod               bool
	modprobeOnInstall, symlinkModules, noInitrd      bool
	debug                                            bool
	jobs                                             string
	version_                                         bool
	help                                             bool
	warnings                                         []string
}

// usageErr is a command-line error; its exit code comes from lifecycle's
// table, like every other failure's.
func usageErr(kind lifecycle.Kind, lines ...string) error {
	return &lifecycle.Error{Kind: kind, Lines: lines}
}

var actionRE = regexp.MustCompile(`^(remove|(auto|un)?install|match|mktarball|(un)?build|add|status|ldtarball|generate_mok|sign|mkdriverdisk|initrd|initrd-modules|verify|dbus-service|cache|kernel_(preinst|postinst|prerm))$`)

// longValue options are matched by prefix as in dkms, in this order
// (--archive before --arch).
var longValue = []string{"--module", "--kernelver", "--templatekernel", "--dkmstree", "--sourcetree",
	"--installtree", "--config", "--archive", "--arch", "--kernelsourcedir", "--directive", "--root", "--initrd-strategy", "--distro", "--media"}

func parseArgs(argv []string) (*args, error) {
	a := &args{}
	for i := 0; i < len(argv); i++ {
		w := argv[i]
		// next takes the following word as the option's value.
		next := func() string {
			if i+1 < len(argv) {
				i++
				return argv[i]
			}
			return ""
		}
		if a.shortOption(w, next) || a.flag(w) {
			continue
		}
		if opt := longOption(w); opt != "" {
			_, v, ok := strings.Cut(w, "=")
			if !ok {
				v = next()
			}
			a.setLong(opt, v)
			continue
		}
		if strings.HasPrefix(w, "-") {
			return nil, usageErr(lifecycle.KindUnknownOption, " Unknown option: "+w)
		}
		if err := a.word(w); err != nil {
			return nil, err
		}
	}
	return a, a.validate()
}

// shortOption takes -m, -v, -k, -a, -c, -j and -d with the next word.
func (a *args) shortOption(w string, next func() string) bool {
	switch w {
	case "-m":
		a.setModule(next())
	case "-v":
		a.version = next()
	case "-k":
		a.addKernel(next())
	case "-a":
		a.arches = append(a.arches, next())
	case "-c":
		a.conf = next()
	case "-j":
		a.jobs = next()
	case "-d":
		a.distro = next()
	default:
		return false
	}
	return true
}

// flagOptions are the options without a value, each with what it sets.
// Every option dkms 3.0.10 accepts is here and acts (TestEveryOptionActs).
var flagOptions = map[string]func(a *args, w string){
	"-q":        func(a *args, _ string) { a.quiet = true },
	"--quiet":   func(a *args, _ string) { a.quiet = true },
	"-V":        func(a *args, _ string) { a.version_ = true },
	"--version": func(a *args, _ string) { a.version_ = true },
	"-h":        func(a *args, _ string) { a.help = true },
	"--help":    func(a *args, _ string) { a.help = true },
	// dkms 3.x deprecated it; dkmsd regenerates initrds, and this turns
	// that off.
	"--no-initrd":              func(a *args, _ string) { a.noInitrd = true },
	"--no-clean-kernel":        deprecatedFlag,
	"--no-prepare-kernel":      deprecatedFlag,
	"--binaries-only":          func(a *args, _ string) { a.binariesOnly = true },
	"--source-only":            func(a *args, _ string) { a.sourceOnly = true },
	"--force":                  func(a *args, _ string) { a.force = true },
	"--rpm_safe_upgrade":       func(a *args, _ string) { a.force = true },
	"--force-version-override": func(a *args, _ string) { a.forceVersionOverride = true },
	"--all":                    func(a *args, _ string) { a.all = true },
	"--verbose":                func(a *args, _ string) { a.verbose = true },
	"--no-depmod":              func(a *args, _ string) { a.noDepmod = true },
	"--modprobe-on-install":    modprobeOnInstall,
	"--symlink-modules":        func(a *args, _ string) { a.symlinkModules = true },
	// dkms traced its bash script; dkmsd shows the commands it runs.
	"--debug": func(a *args, _ string) { a.debug = true },
}

func deprecatedFlag(a *args, w string) { a.warnings = append(a.warnings, "Deprecated feature: "+w) }

// modprobeOnInstall is framework.conf's modprobe_on_install for one
// command.
func modprobeOnInstall(a *args, _ string) { a.modprobeOnInstall = true }

// flag takes an option without a value.
func (a *args) flag(w string) bool {
	set, ok := flagOptions[w]
	if ok {
		set(a, w)
	}
	return ok
}

// setLong sets the long option opt (as longOption names it) to v.
func (a *args) setLong(opt, v string) {
	switch opt {
	case "--module":
		a.setModule(v)
	case "--kernelver":
		a.addKernel(v)
	case "--templatekernel":
		a.templateKernel = v
	case "--dkmstree":
		a.dkmsTree = v
	case "--sourcetree":
		a.sourceTree = v
	case "--installtree":
		a.installTree = v
	case "--config":
		a.kernelConfig = v
	case "--archive":
		a.archive = v
	case "--arch":
		a.arches = append(a.arches, v)
	case "--kernelsourcedir":
		a.kernelSourceDir = v
	case "--directive":
		a.directives = append(a.directives, v)
	case "--root":
		a.root = v
	case "--initrd-strategy":
		a.initrdStrategy = v
	case "--distro":
		a.distro = v
	case "--media":
		a.media = v
	}
}

// word reads a bare word: the action, a dkms.conf or its dir, an archive,
// or module[/version].
func (a *args) word(w string) error {
	isAction := actionRE.MatchString(w)
	if a.firstWord == "" && !isAction {
		a.firstWord = w
	}
	switch {
	case a.action == "cache" && a.cacheOp == "" && (w == "push" || w == "pull" || w == "ls"):
		a.cacheOp = w
	case isAction:
		if a.action != "" {
			return usageErr(lifecycle.KindTwoActions, "Cannot specify more than one action.")
		}
		a.action = w
	case isFile(w) && strings.HasSuffix(w, "dkms.conf"):
		a.sourceDir = filepath.Dir(w)
	case isDir(w) && isFile(filepath.Join(w, "dkms.conf")):
		a.sourceDir = w
	case isFile(w):
		a.archive = w
	case a.module == "":
		a.setModule(w)
	default:
		a.warnings = append(a.warnings, "Warning: I do not know how to handle "+w+".")
	}
	return nil
}

func longOption(w string) string {
	for _, o := range longValue {
		if strings.HasPrefix(w, o) {
			return o
		}
	}
	return ""
}

// setModule takes "module" or "module/version" (split at the first /).
func (a *args) setModule(s string) {
	if m, v, ok := strings.Cut(s, "/"); ok {
		a.module, a.version = m, v
		return
	}
	a.module = s
}

// addKernel takes "kernel" or "kernel/arch"; "K1,K2" (dkms 2.x's
// mkdriverdisk form) adds each.
func (a *args) addKernel(s string) {
	if strings.Contains(s, ",") {
		for _, k := range strings.Split(s, ",") {
			if k != "" {
				a.addKernel(k)
			}
		}
		return
	}
	if k, arch, ok := strings.Cut(s, "/"); ok {
		a.kernels = append(a.kernels, k)
		a.arches = append(a.arches, arch)
		return
	}
	a.kernels = append(a.kernels, s)
}

func (a *args) validate() error {
	if a.binariesOnly && a.sourceOnly {
		return usageErr(lifecycle.KindBinariesAndSource, " You have specified both --binaries-only and --source-only.", "You cannot do this.")
	}
	if len(a.arches) > 1 && len(a.arches) != len(a.kernels) {
		return usageErr(lifecycle.KindBadArch, " If more than one arch is specified on the command line, then there", "must be an equal number of kernel versions also specified (1:1 relationship).")
	}
	if len(a.kernels) > 0 && a.all {
		return usageErr(lifecycle.KindUsage, " You cannot specify a kernel version and also specify", "--all on the command line.")
	}
	if len(a.arches) > 0 && a.all {
		return usageErr(lifecycle.KindArchAndAll, " You cannot specify an arch and also specify", "--all on the command line.")
	}
	if a.jobs != "" {
		if n, err := strconv.Atoi(a.jobs); err != nil || n < 0 {
			return usageErr(lifecycle.KindUsage, "-j takes a number of jobs, not '"+a.jobs+"'.")
		}
	}
	return nil
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
