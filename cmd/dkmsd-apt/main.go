// Command dkmsd-apt is dkmsd's Debian hook: /etc/kernel/preinst.d/dkmsd,
// postinst.d/dkmsd, header_postinst.d/dkmsd and prerm.d/dkmsd call it with their phase and
// run-parts' arguments (KVER [IMAGE]), and apt's DPkg::Post-Invoke calls
// "dkmsd-apt post-invoke" to end the transaction: kernels whose headers
// came late are built, and one summary is reported.
package main

import (
	"fmt"
	"os"

	"github.com/dkmsd/dkmsd/hooks"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dkmsd-apt preinst|postinst|header_postinst|prerm KVER [IMAGE] | post-invoke")
		os.Exit(hooks.ExitUsage)
	}
	req := hooks.Request{Action: hooks.Flush, Hook: "apt-post-invoke"}
	if os.Args[1] != "post-invoke" {
		r, ok, err := hooks.DebianKernelHook(os.Args[1], os.Args[2:], os.Getenv)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(hooks.ExitUsage)
		}
		if !ok {
			return
		}
		req = r
	}
	os.Exit(hooks.Main(req))
}
