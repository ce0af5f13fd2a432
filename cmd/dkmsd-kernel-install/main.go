// Command dkmsd-kernel-install is dkmsd's systemd kernel-install plugin,
// installed as /usr/lib/kernel/install.d/40-dkmsd.install so it runs before
// the initrd plugins: "add KVER ENTRY_DIR IMAGE [INITRD…]" builds and
// installs the DKMS modules for KVER, "remove KVER ENTRY_DIR" removes them.
package main

import (
	"fmt"
	"os"

	"github.com/dkmsd/dkmsd/hooks"
)

func main() {
	if os.Getenv("KERNEL_INSTALL_BYPASS") == "1" {
		return
	}
	req, ok, err := hooks.KernelInstall(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(hooks.ExitUsage)
	}
	if !ok {
		return // a command this plugin has nothing to do for
	}
	os.Exit(hooks.Main(req))
}
