// Command dkmsd-alpm is dkmsd's pacman hook: dkmsd-install.hook runs
// "dkmsd-alpm install" after a transaction that brought kernels, their
// headers or DKMS module sources, dkmsd-remove.hook runs "dkmsd-alpm
// remove" before one that takes them away; pacman writes the matched
// paths on stdin (NeedsTargets).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/dkmsd/dkmsd/hooks"
)

func main() {
	op, targets, err := hooks.Alpm(os.Args[1:], os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(hooks.ExitUsage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env, closeEnv, err := hooks.NewEnv(ctx, "alpm-"+os.Args[1], os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dkmsd:", err)
		return // a transaction is never failed for dkmsd's own setup
	}
	code := hooks.RunAlpm(ctx, env, op, targets)
	closeEnv()
	os.Exit(code)
}
