package main

import (
	"context"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
)

// resign is `dkms sign [-m M [-v V]] [-k K… | --all]`: the installed
// modules (of M/V, or every one) for the kernels (-k, every kernel with
// --all, else the running one) signed again with the current key.
func resign(ctx context.Context, a *args, env *lifecycle.Env) error {
	if err := requireRoot(env); err != nil {
		return err
	}
	unlock, err := lockWritableTree(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()
	o := lifecycle.ResignOptions{Module: a.module, Version: a.version, Kernels: a.kernels, Arch: machineArch()}
	if len(a.arches) > 0 {
		o.Arch = a.arches[0]
	}
	switch {
	case a.all:
		ks, err := env.Layout.Kernels()
		if err != nil {
			return err
		}
		o.Kernels = nil
		for _, k := range ks {
			o.Kernels = append(o.Kernels, k.Version)
		}
	case len(o.Kernels) == 0:
		o.Kernels = []string{tree.RunningKernel()}
	}
	return lifecycle.Resign(ctx, env, o)
}
