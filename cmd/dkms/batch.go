package main

import (
	"context"
	"fmt"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
)

// batch runs the actions that schedule many module×kernel jobs:
// autoinstall, match, kernel_postinst, kernel_preinst and kernel_prerm.
func batch(ctx context.Context, a *args, env *lifecycle.Env) error {
	if err := requireRoot(env); err != nil {
		return err
	}
	if a.action != "autoinstall" && (len(a.kernels) != 1 || a.all) {
		return usageErr(lifecycle.KindOneKernel, fmt.Sprintf("The action %s requires exactly one kernel version parameter on the command line.", a.action))
	}
	kernels, err := batchKernels(env, a)
	if err != nil {
		return err
	}
	arch := a.arches
	if len(arch) == 0 {
		arch = []string{machineArch()}
	}
	unlock, err := lockWritableTree(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()

	if a.action == "kernel_prerm" {
		// The kernel is going away: its initrd goes with it.
		return lifecycle.KernelPrerm(ctx, env, kernels[0], arch[0], false)
	}
	arrival := lifecycle.KernelArrival{
		Name:         "dkms " + a.action,
		Kernels:      kernels,
		Arch:         arch[0],
		Initrd:       lifecycle.InitrdOptions{Strategy: initrd.Strategy(a.initrdStrategy)},
		InitrdFailed: printError,
		RecordFailed: func(err error) {
			env.Sink.Emit(lifecycle.Event{Type: lifecycle.Warning, Text: "Warning: could not record the transaction: " + err.Error()})
		},
	}
	switch a.action {
	case "kernel_preinst":
		// A kernel reinstalled at the same version: rebuild what
		// autoinstall would install, from scratch.
		arrival.Reinstall = true
	case "match":
		if err := matchArgs(a, env, kernels[0]); err != nil {
			return err
		}
		arrival.Template, arrival.Module, arrival.MatchOnly = a.templateKernel, a.module, true
	}
	sum, err := lifecycle.KernelArrived(ctx, env, arrival)
	if err != nil {
		return err
	}
	// dkms 3.4 runs post_transaction after an autoinstall that succeeded
	// and installed something; not after match or the kernel_* actions.
	if k, installed := sum.InstalledKernel(); installed && a.action == "autoinstall" && !sum.Failed() {
		lifecycle.PostTransaction(ctx, env, lifecycle.Target{Kernel: k, Arch: arch[0]})
	}
	if sum.Failed() {
		return &lifecycle.Error{Kind: lifecycle.KindAutoinstall, Lines: []string{
			"One or more modules failed to install during " + a.action + ".",
			"Refer to previous errors for more information."}}
	}
	return nil
}

// matchArgs checks dkms match's own arguments.
func matchArgs(a *args, env *lifecycle.Env, kernel string) error {
	if a.templateKernel == "" {
		return usageErr(lifecycle.KindMissingArgs, "Invalid number of parameters passed.",
			"Usage: match --templatekernel=<kernel-version> -k <kernel-version>",
			"   or: match --templatekernel=<kernel-version> -k <kernel-version> <module>")
	}
	if a.templateKernel == kernel {
		return usageErr(lifecycle.KindUsage, "The templatekernel and the specified kernel version are the same.")
	}
	if a.module != "" {
		if mvs, _ := env.Layout.ModuleVersions(a.module, ""); len(mvs) == 0 {
			return usageErr(lifecycle.KindNotAdded, fmt.Sprintf("The module %s is not located in the DKMS tree.", a.module))
		}
	}
	return nil
}

// batchKernels are the kernels a batch works on: -k, or with --all or
// framework.conf's autoinstall_all_kernels every kernel with headers, or
// the running kernel.
func batchKernels(env *lifecycle.Env, a *args) ([]string, error) {
	if len(a.kernels) > 0 {
		return a.kernels, nil
	}
	if a.action == "autoinstall" && (a.all || env.Framework.AutoinstallAllKernels) {
		ks, err := env.Layout.Kernels()
		if err != nil {
			return nil, err
		}
		var out []string
		for _, k := range ks {
			if k.HasHeaders() {
				out = append(out, k.Version)
			}
		}
		return out, nil
	}
	return []string{tree.RunningKernel()}, nil
}
