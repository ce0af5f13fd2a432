package main

import (
	"bufio"
	"context"
	"fmt"
	"os"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// run carries out the parsed command.
func run(ctx context.Context, a *args, env *lifecycle.Env) error {
	switch a.action {
	case "status":
		return status(ctx, a, env)
	case "generate_mok":
		return lifecycle.GenerateMOK(ctx, env)
	case "sign":
		return resign(ctx, a, env)
	case "add", "build", "install":
		if a.all {
			return usageErr(lifecycle.KindNoAll, fmt.Sprintf("The action %s does not support the --all parameter.", a.action))
		}
	case "remove", "unbuild", "uninstall":
		if err := requireModuleArgs(a); err != nil {
			return err
		}
	case "match", "autoinstall", "kernel_preinst", "kernel_postinst", "kernel_prerm":
		return batch(ctx, a, env)
	case "initrd":
		return initrdAction(ctx, a, env)
	case "initrd-modules":
		return initrdModules(ctx, a, env)
	case "verify":
		return verifyAction(ctx, a, env)
	case "dbus-service":
		return dbusService(ctx, env)
	case "cache":
		return cacheAction(ctx, a, env)
	case "mktarball":
		return mktarball(ctx, a, env)
	case "ldtarball":
		return ldtarball(ctx, a, env)
	case "mkdriverdisk":
		return mkdriverdisk(ctx, a, env)
	}

	if a.archive != "" && a.module == "" && a.sourceDir == "" {
		return ldtarball(ctx, a, env) // add FILE.tar.gz: it takes the lock itself
	}
	if a.action == "install" || a.action == "uninstall" {
		if err := requireRoot(env); err != nil {
			return err
		}
	} else if err := requireWritableTree(env); err != nil {
		return err
	}
	unlock, err := lockTree(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()

	ts, err := targets(env, a)
	if err != nil {
		return err
	}
	if a.action == "add" && a.sourceDir != "" && a.module == "" {
		_, _, err := lifecycle.AddSourceDir(ctx, env, a.sourceDir, ts[0].Kernel, ts[0].Arch)
		return err
	}
	if a.sourceDir != "" && a.module == "" {
		m, v, err := lifecycle.AddSourceDir(ctx, env, a.sourceDir, ts[0].Kernel, ts[0].Arch)
		if err != nil {
			return err
		}
		a.module, a.version = m, v
		for i := range ts {
			ts[i].Module, ts[i].Version = m, v
		}
	}
	if err := requireModuleArgs(a); err != nil {
		return err
	}
	switch a.action {
	case "add":
		return lifecycle.Add(ctx, env, a.module, a.version, ts[0].Kernel, ts[0].Arch)
	case "build":
		return eachTarget(ctx, ts, func(t lifecycle.Target) error { return lifecycle.Build(ctx, env, t) })
	case "install":
		err := eachTarget(ctx, ts, func(t lifecycle.Target) error { return lifecycle.Install(ctx, env, t) })
		return afterTransaction(ctx, a, env, ts, err)
	}
	// remove, unbuild, uninstall work on modules in the tree.
	if err := env.RequireAdded(a.module, a.version); err != nil {
		return err
	}
	switch a.action {
	case "uninstall":
		err := eachTarget(ctx, ts, func(t lifecycle.Target) error { return lifecycle.Uninstall(ctx, env, t) })
		return afterTransaction(ctx, a, env, ts, err)
	case "unbuild":
		err := eachTarget(ctx, ts, func(t lifecycle.Target) error { return lifecycle.Unbuild(ctx, env, t) })
		return afterTransaction(ctx, a, env, ts, err)
	default:
		err := lifecycle.Remove(ctx, env, a.module, a.version, ts)
		return afterTransaction(ctx, a, env, ts, err)
	}
}

// afterTransaction ends an install, uninstall, unbuild or remove: the
// initrds, then, when the command succeeded, framework.conf's
// post_transaction (for the first kernel, as dkms runs it), whose own
// failure does not change the exit status.
func afterTransaction(ctx context.Context, a *args, env *lifecycle.Env, ts []lifecycle.Target, err error) error {
	initrdErr := regenerateInitrds(ctx, a, env, ts)
	if err == nil {
		t := lifecycle.Target{Module: a.module, Version: a.version}
		if len(ts) > 0 {
			t = ts[0]
		}
		lifecycle.PostTransaction(ctx, env, t)
	}
	return firstErr(err, initrdErr)
}

// firstErr is the command's failure, else the initrd step's.
func firstErr(err, initrdErr error) error {
	if err != nil {
		if initrdErr != nil {
			printError(initrdErr)
		}
		return err
	}
	return initrdErr
}

// status prints `dkms status` lines; it always succeeds, as in dkms.
func status(ctx context.Context, a *args, env *lifecycle.Env) error {
	lines, err := lifecycle.Status(ctx, env, lifecycle.StatusQuery{Module: a.module, Version: a.version, Kernels: a.kernels, Arches: a.arches})
	if err != nil {
		return err
	}
	w := bufferedStdout()
	defer w.Flush()
	for _, l := range lines {
		fmt.Fprintln(w, l.String())
		if len(l.Problem) > 0 {
			w.Flush()
			fmt.Fprintln(os.Stderr)
			printLines(l.Problem)
		}
		if len(l.Notices) > 0 {
			w.Flush()
			for _, n := range l.Notices {
				fmt.Fprintln(os.Stderr, n)
			}
		}
	}
	return nil
}

func bufferedStdout() *bufio.Writer { return bufio.NewWriterSize(os.Stdout, 64*1024) }
