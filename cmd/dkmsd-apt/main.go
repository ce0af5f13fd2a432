// Command dkmsd-apt is dkmsd's Debian hook: /etc/kernel/postinst.d/dkmsd,
// header_postinst.d/dkmsd and prerm.d/dkmsd call it with their phase and
// run-parts' arguments (KVER [IMAGE]), and apt's DPkg::Post-Invoke calls
// "dkmsd-apt post-invoke" to end the transaction: kernels whose headers
// came late are built, and one summary is reported.
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
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dkmsd-apt postinst|header_postinst|prerm KVER [IMAGE] | post-invoke")
		os.Exit(2)
	}
	var req hooks.Request
	if os.Args[1] == "post-invoke" {
		req = hooks.Request{Action: hooks.Flush, Hook: "apt-post-invoke"}
	} else {
		r, ok, err := hooks.DebianKernelHook(os.Args[1], os.Args[2:], os.Getenv)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if !ok {
			return
		}
		req = r
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env, closeEnv, err := hooks.NewEnv(ctx, req.Hook, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dkmsd:", err)
		return // a kernel package must not fail over dkmsd's own setup
	}
	res := hooks.Run(ctx, env, req)
	closeEnv()
	os.Exit(res.ExitCode)
}
