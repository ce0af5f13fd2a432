package hooks

import (
	"bufio"
	"context"
	"io"
	"sort"
	"strings"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
)

// AlpmTargets are what a pacman transaction touched, from the paths its
// hook received on stdin (NeedsTargets): kernels (usr/lib/modules/<k>/…,
// a kernel's modules or its headers) and DKMS module sources
// (usr/src/<module>-<version>/dkms.conf).
type AlpmTargets struct {
	Kernels []string
	Modules []lifecycle.Target // Module and Version only
}

// Alpm reads dkmsd-alpm's operation ("install" or "remove", the hook
// file's argument) and the targets pacman writes on stdin, one path per
// line, relative to the root. Paths of neither kind are ignored.
func Alpm(args []string, stdin io.Reader) (op Action, t AlpmTargets, err error) {
	if len(args) != 1 || (args[0] != "install" && args[0] != "remove") {
		return "", t, &UsageError{"usage: dkmsd-alpm install|remove < targets"}
	}
	op = Add
	if args[0] == "remove" {
		op = Remove
	}
	kernels, modules := map[string]bool{}, map[lifecycle.Target]bool{}
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		p := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "/")
		parts := strings.Split(p, "/")
		switch {
		case len(parts) >= 4 && parts[0] == "usr" && parts[1] == "lib" && parts[2] == "modules" && parts[3] != "":
			kernels[parts[3]] = true
		case len(parts) == 4 && parts[0] == "usr" && parts[1] == "src" && parts[3] == "dkms.conf":
			if i := strings.LastIndex(parts[2], "-"); i > 0 && i < len(parts[2])-1 {
				modules[lifecycle.Target{Module: parts[2][:i], Version: parts[2][i+1:]}] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", t, err
	}
	for k := range kernels {
		t.Kernels = append(t.Kernels, k)
	}
	sort.Slice(t.Kernels, func(i, j int) bool { return tree.CompareVersions(t.Kernels[i], t.Kernels[j]) < 0 })
	for m := range modules {
		t.Modules = append(t.Modules, m)
	}
	sort.Slice(t.Modules, func(i, j int) bool {
		return t.Modules[i].Module+"/"+t.Modules[i].Version < t.Modules[j].Module+"/"+t.Modules[j].Version
	})
	return op, t, nil
}

// RunAlpm carries out a pacman transaction's targets: module sources that
// arrived are added and installed for every kernel with headers (once per
// kernel), kernels that arrived get their modules (Run's Add), and before
// a removal the modules of leaving sources and kernels are removed. It
// fails the transaction only with hook_fail_on_error="yes".
func RunAlpm(ctx context.Context, env *lifecycle.Env, op Action, t AlpmTargets) int {
	code := ExitOK
	note := func(c int) {
		if c != ExitOK {
			code = c
		}
	}
	if op == Remove {
		note(alpmModules(ctx, env, op, t.Modules))
		for _, k := range t.Kernels {
			note(Run(ctx, env, Request{Action: Remove, Kernel: k, Hook: "alpm-remove"}).ExitCode)
		}
		return code
	}
	note(alpmModules(ctx, env, op, t.Modules))
	for _, k := range t.Kernels {
		if !env.Layout.Kernel(k).Exists() {
			continue // a path under a kernel's dir that pacman took away
		}
		note(Run(ctx, env, Request{Action: Add, Kernel: k, Hook: "alpm-install"}).ExitCode)
	}
	return code
}

// alpmModules adds and installs (or removes) module versions whose
// source a package brought (or takes away), for every kernel, as Arch's
// own dkms hook does.
func alpmModules(ctx context.Context, env *lifecycle.Env, op Action, mods []lifecycle.Target) int {
	if len(mods) == 0 {
		return ExitOK
	}
	unlock, err := lifecycle.LockTree(ctx, env)
	if err != nil {
		warn(env, "dkmsd: %v", err)
		return ExitOK
	}
	defer unlock()
	failed := false
	arch := tree.MachineArch()
	for _, m := range mods {
		if op == Remove {
			if err := lifecycle.Remove(ctx, env, m.Module, m.Version, lifecycle.BuiltTargets(env, m.Module, m.Version)); err != nil {
				warn(env, "dkmsd: %v", err)
				failed = true
			}
			continue
		}
		if _, ok := env.Layout.Lookup(m.Module, m.Version); !ok {
			if err := lifecycle.Add(ctx, env, m.Module, m.Version, "", arch); err != nil {
				warn(env, "dkmsd: %v", err)
				failed = true
				continue
			}
		}
		kernels, _ := env.Layout.Kernels()
		for _, k := range kernels {
			if !k.HasHeaders() {
				continue
			}
			if err := lifecycle.Install(ctx, env, lifecycle.Target{Module: m.Module, Version: m.Version, Kernel: k.Version, Arch: arch}); err != nil {
				warn(env, "dkmsd: %v", err)
				failed = true
			}
		}
	}
	if failed && failOnError(env) {
		return ExitFailed
	}
	return ExitOK
}
