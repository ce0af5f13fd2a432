package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dkmsd/dkmsd/hooks"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
)

// dkmsVersion is what `dkms --version` prints: the dkms release whose
// command line, tree and output dkmsd reproduces, so version checks in
// packaging scripts keep working.
const dkmsVersion = "dkms-3.0.10"

// dkmsdVersion is dkmsd's own release, set by the Makefile.
var dkmsdVersion = "dev"

// newEnv builds the lifecycle environment from the command line: --root
// (or DKMSD_ROOT) relocates every tree; framework.conf, then the tree
// options, move single trees.
func newEnv(ctx context.Context, a *args, sink lifecycle.Sink) (*lifecycle.Env, error) {
	root := a.root
	if root == "" {
		root = os.Getenv("DKMSD_ROOT")
	}
	env, err := lifecycle.NewEnv(ctx, tree.NewLayout(root), sink)
	if err != nil {
		return nil, err
	}
	l := &env.Layout
	if a.dkmsTree != "" {
		l.DKMSTree = a.dkmsTree
	}
	if a.sourceTree != "" {
		l.SourceTree = a.sourceTree
	}
	if a.installTree != "" {
		l.InstallTree = a.installTree
	}
	l.KernelSourceDir = a.kernelSourceDir
	env.Force, env.ForceVersionOverride, env.NoDepmod = a.force, a.forceVersionOverride, a.noDepmod
	env.NoInitrd = a.noInitrd
	env.Verbose = env.Verbose || a.verbose
	env.SymlinkModules = env.SymlinkModules || a.symlinkModules
	// --modprobe-on-install is modprobe_on_install for this command.
	env.ModprobeOnInstall = env.ModprobeOnInstall || a.modprobeOnInstall
	env.ConfFile, env.Directives, env.KernelConfig = a.conf, a.directives, a.kernelConfig
	// dkms exports each --directive, so make and the scripts see it too,
	// whether or not it names a dkms.conf directive.
	for _, d := range a.directives {
		if strings.Contains(d, "=") {
			env.Environ = append(env.Environ, d)
		}
	}
	if a.jobs != "" {
		env.Jobs, _ = strconv.Atoi(a.jobs)
	}
	return env, nil
}

// targets resolves the kernel/arch pairs of a command: --all, the -k/-a
// lists, or the running kernel on this machine's arch.
func targets(env *lifecycle.Env, a *args) ([]lifecycle.Target, error) {
	if a.all {
		return lifecycle.BuiltTargets(env, a.module, a.version), nil
	}
	kernels := a.kernels
	if len(kernels) == 0 {
		kernels = []string{tree.RunningKernel()}
	}
	arches := a.arches
	if len(arches) == 0 {
		arches = []string{machineArch()}
	}
	for len(arches) < len(kernels) {
		arches = append(arches, arches[0])
	}
	var out []lifecycle.Target
	for i, k := range kernels {
		if k == "" {
			return nil, usageErr(lifecycle.KindEmptyTarget, fmt.Sprintf("Empty kernelver[%d]", i))
		}
		if arches[i] == "" {
			return nil, usageErr(lifecycle.KindEmptyTarget, fmt.Sprintf("Empty arch[%d]", i))
		}
		out = append(out, lifecycle.Target{Module: a.module, Version: a.version, Kernel: k, Arch: arches[i]})
	}
	return out, nil
}

// machineArch is dkms's default -a (the tests expect it too).
func machineArch() string { return tree.MachineArch() }

// relocated reports whether the command works on a sandbox rather than the
// machine's own trees (then root is not required).
func relocated(env *lifecycle.Env) bool { return env.Layout.Root != "" }

func requireRoot(env *lifecycle.Env) error {
	if os.Geteuid() == 0 || relocated(env) {
		return nil
	}
	return usageErr(lifecycle.KindNotRoot, "You must be root to use this command.")
}

func requireWritableTree(env *lifecycle.Env) error {
	if relocated(env) {
		if err := os.MkdirAll(env.Layout.DKMSTree, 0o755); err != nil {
			return err
		}
	}
	if unix.Access(env.Layout.DKMSTree, unix.W_OK) != nil {
		return usageErr(lifecycle.KindNotRoot, "No write access to DKMS tree at "+env.Layout.DKMSTree)
	}
	return nil
}

// lockWritableTree checks that the tree can be written and takes its lock.
func lockWritableTree(ctx context.Context, env *lifecycle.Env) (func(), error) {
	if err := requireWritableTree(env); err != nil {
		return nil, err
	}
	return lockTree(ctx, env)
}

// lockTree takes the tree lock. Before letting it go, it does what kernel
// hooks left pending while it held the lock (a hook does not wait for the
// lock without bound), with the settings a hook would use, not this
// command's flags.
func lockTree(ctx context.Context, env *lifecycle.Env) (func(), error) {
	unlock, err := lifecycle.LockTree(ctx, env)
	if err != nil {
		return nil, err
	}
	return func() {
		hookEnv := *env
		hookEnv.Force, hookEnv.ForceVersionOverride, hookEnv.NoInitrd, hookEnv.NoDepmod = false, false, false, false
		hookEnv.ConfFile, hookEnv.Directives, hookEnv.KernelConfig = "", nil, ""
		hookEnv.RememberFailures = true
		hooks.CatchUp(ctx, &hookEnv)
		unlock()
	}, nil
}

func requireModuleArgs(a *args) error {
	if a.module != "" && a.version != "" {
		return nil
	}
	act := a.action
	return usageErr(lifecycle.KindMissingArgs, "Arguments <module> and <module-version> are not specified.",
		"Usage: "+act+" <module>/<module-version> or",
		"       "+act+" -m <module>/<module-version> or",
		"       "+act+" -m <module> -v <module-version>")
}

// eachTarget runs op for every target, as dkms does, going on after a
// failure. The result is the first real failure, else a BUILD_EXCLUSIVE
// skip (77), else success (dkms 3.0.10 returned the last kernel's status,
// hiding earlier failures).
func eachTarget(ctx context.Context, ts []lifecycle.Target, op func(lifecycle.Target) error) error {
	var first, skipped error
	for _, t := range ts {
		err := op(t)
		switch {
		case err == nil:
		case lifecycle.KindOf(err) == lifecycle.KindExcluded:
			if skipped == nil {
				skipped = err
			}
			printError(err)
		default:
			if first == nil {
				first = err
			}
			printError(err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if first != nil {
		return reported{first}
	}
	if skipped != nil {
		return reported{skipped}
	}
	return nil
}

// reported wraps an error already printed, so main only maps its code.
type reported struct{ err error }

func (r reported) Error() string { return r.err.Error() }
func (r reported) Unwrap() error { return r.err }

// printError prints an error as dkms does: "Error! " and its lines.
func printError(err error) {
	var le *lifecycle.Error
	switch {
	case errors.As(err, &le) && len(le.Lines) > 0:
		printLines(le.Unshown())
	default:
		printLines([]string{err.Error()})
	}
}

func printLines(lines []string) {
	fmt.Fprint(os.Stderr, "Error! ")
	for _, l := range lines {
		fmt.Fprintln(os.Stderr, l)
	}
}
