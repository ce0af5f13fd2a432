// Command dkmsd-dnf is dkmsd's dnf hook, run after a transaction by dnf
// 4's post-transaction-actions plugin and dnf 5's actions plugin when a
// kernel or its kernel-devel arrives (--kernel VERSION-RELEASE.ARCH) or a
// kernel leaves (--remove).
package main

import (
	"fmt"
	"os"

	"github.com/dkmsd/dkmsd/hooks"
)

func main() {
	req, err := hooks.Dnf(os.Args[1:], os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(hooks.ExitUsage)
	}
	os.Exit(hooks.Main(req))
}
