package main

import (
	"context"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// mktarball is `dkms mktarball M/V [-k K]… | --all [--archive F]
// [--source-only|--binaries-only]`. Without -k it archives every kernel the
// module is built for (dkms took the running kernel, and failed when the
// module was not built for it).
func mktarball(ctx context.Context, a *args, env *lifecycle.Env) error {
	if err := requireModuleArgs(a); err != nil {
		return err
	}
	if err := env.RequireAdded(a.module, a.version); err != nil {
		return err
	}
	var ts []lifecycle.Target
	var err error
	if len(a.kernels) == 0 || a.all {
		ts = lifecycle.BuiltTargets(env, a.module, a.version)
	} else if ts, err = targets(env, a); err != nil {
		return err
	}
	unlock, err := lockTree(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()
	_, err = lifecycle.MakeTarball(ctx, env, a.module, a.version, ts, lifecycle.TarballOptions{
		SourceOnly: a.sourceOnly, BinariesOnly: a.binariesOnly, Archive: a.archive})
	return err
}

// ldtarball is `dkms ldtarball ARCHIVE` (also --archive ARCHIVE, the old
// --config ARCHIVE spelling, and `dkms add ARCHIVE`).
func ldtarball(ctx context.Context, a *args, env *lifecycle.Env) error {
	archive := a.archive
	if archive == "" && a.action == "ldtarball" {
		archive = a.kernelConfig
	}
	if archive == "" && a.action == "ldtarball" && a.firstWord != "" {
		archive = a.firstWord // a file that does not exist: LoadTarball says so
	}
	if archive == "" {
		return usageErr(lifecycle.KindNoArchive, "ldtarball needs an archive: dkms ldtarball FILE")
	}
	if a.force {
		if err := requireRoot(env); err != nil {
			return err
		}
	}
	unlock, err := lockWritableTree(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()
	_, _, err = lifecycle.LoadTarball(ctx, env, archive, env.Framework.TarballLimit)
	return err
}

// mkdriverdisk is dkms 2.x's `dkms mkdriverdisk -d redhat -m M -v V -k
// K1,K2 [--media iso|tar]` (dkms removed it in 2.8.8; dkmsd keeps it).
func mkdriverdisk(ctx context.Context, a *args, env *lifecycle.Env) error {
	if err := requireModuleArgs(a); err != nil {
		return err
	}
	if a.distro == "" {
		return usageErr(lifecycle.KindMissingArgs, "mkdriverdisk needs the distribution: -d redhat")
	}
	ts, err := targets(env, a)
	if err != nil {
		return err
	}
	if len(a.kernels) == 0 {
		ts = lifecycle.BuiltTargets(env, a.module, a.version)
	}
	unlock, err := lockTree(ctx, env)
	if err != nil {
		return err
	}
	defer unlock()
	_, err = lifecycle.MakeDriverDisk(ctx, env, a.module, a.version, ts, lifecycle.DriverDiskOptions{Distro: a.distro, Media: a.media, Archive: a.archive})
	return err
}
