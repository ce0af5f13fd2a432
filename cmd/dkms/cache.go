package main

import (
	"context"
	"fmt"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// cacheAction is `dkms cache ls`, `dkms cache pull M/V -k K` (into the
// tree as built, from the module cache only: a miss or a refusal fails)
// and `dkms cache push M/V -k K` (build here, without a look-up, and
// publish: a build host pre-warming a kernel for the fleet).
func cacheAction(ctx context.Context, a *args, env *lifecycle.Env) error {
	switch a.cacheOp {
	case "ls":
		entries, err := lifecycle.CacheList(ctx, env)
		if err != nil {
			return err
		}
		w := bufferedStdout()
		defer w.Flush()
		for _, e := range entries {
			signed := "unsigned"
			if e.Signed {
				signed = "signed"
			}
			fmt.Fprintf(w, "%s/%s, %s, %s: %s, published %s, tag %s\n", e.Module, e.Version, e.Kernel, e.Arch, signed, e.Created, e.Tag)
		}
		return nil
	case "pull":
		env.CacheMode = lifecycle.CachePullOnly
	case "push":
		env.CacheMode = lifecycle.CachePushOnly
		env.Force = true // publish what is built now, even over a build in the tree
	default:
		return usageErr(lifecycle.KindUsage, "dkms cache takes push, pull or ls: dkms cache push|pull <module>/<version> -k <kernel>, dkms cache ls")
	}
	a.action = "build"
	return run(ctx, a, env)
}
