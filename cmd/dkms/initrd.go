package main

import (
	"context"
	"fmt"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/lifecycle"
)

// initrdAction is `dkms initrd -k K…`: regenerate the initrd of each
// kernel on request.
func initrdAction(ctx context.Context, a *args, env *lifecycle.Env) error {
	if err := requireRoot(env); err != nil {
		return err
	}
	ts, err := targets(env, a)
	if err != nil {
		return err
	}
	unlock, err := lockTree(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()
	for _, t := range ts {
		rep, err := lifecycle.RegenerateInitrd(ctx, env, t.Kernel, t.Arch, lifecycle.InitrdOptions{Strategy: initrd.Strategy(a.initrdStrategy), Required: true})
		if err != nil {
			return err
		}
		if rep == nil {
			env.Sink.Emit(lifecycle.Event{Type: lifecycle.Info, Text: "The initrd of " + t.Kernel + " already holds its DKMS modules; it is unchanged."})
		}
	}
	return nil
}

// regenerateInitrds brings the initrd of every kernel a command changed
// up to date, once per kernel, after the command's work (unless
// --no-initrd). A kernel without an initrd is left alone.
func regenerateInitrds(ctx context.Context, a *args, env *lifecycle.Env, kernels []lifecycle.Target) error {
	if a.noInitrd {
		return nil
	}
	seen := map[string]bool{}
	var first error
	for _, t := range kernels {
		if seen[t.Kernel+"/"+t.Arch] {
			continue
		}
		seen[t.Kernel+"/"+t.Arch] = true
		if _, err := lifecycle.RegenerateInitrd(ctx, env, t.Kernel, t.Arch, lifecycle.InitrdOptions{Strategy: initrd.Strategy(a.initrdStrategy)}); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// initrdModules is `dkms initrd-modules -k K`: the DKMS modules K's initrd
// must carry, one per line, "early" after those that must load at boot.
// dist/initramfs-tools/hooks/dkmsd reads it.
func initrdModules(ctx context.Context, a *args, env *lifecycle.Env) error {
	ts, err := targets(env, a)
	if err != nil {
		return err
	}
	for _, t := range ts {
		mods, err := lifecycle.InitrdModules(ctx, env, t.Kernel, t.Arch)
		if err != nil {
			return err
		}
		for _, m := range mods {
			if m.Early {
				fmt.Println(m.Name, "early")
			} else {
				fmt.Println(m.Name)
			}
		}
	}
	return nil
}

// verifyAction is `dkms verify -k K…`: boot each kernel with its initrd
// under QEMU and say whether its DKMS modules load. Exit 0 when they all
// do, 30 when one is missing, 69 when it cannot tell (no qemu); the first
// kernel's failure decides, every kernel is checked.
func verifyAction(ctx context.Context, a *args, env *lifecycle.Env) error {
	ts, err := targets(env, a)
	if err != nil {
		return err
	}
	var first error
	for _, t := range ts {
		if _, err := lifecycle.VerifyInitrd(ctx, env, t.Kernel, t.Arch); err != nil && first == nil {
			first = err
		}
	}
	return first
}
