package hooks_test

import (
	"context"
	"fmt"
	"os"

	"github.com/dkmsd/dkmsd/hooks"
)

// noEnv is a getenv for an empty environment.
func noEnv(string) string { return "" }

// kernel-install runs its plugins with "add KVER ENTRY_DIR IMAGE [INITRD…]".
// The parsers take getenv as an argument, so they are pure functions.
func ExampleKernelInstall() {
	req, ok, err := hooks.KernelInstall([]string{"add", "6.1.0-56-amd64", "/boot/efi/abc/6.1.0-56-amd64", "/boot/vmlinuz-6.1.0-56-amd64"}, noEnv)
	fmt.Printf("%s %s %s ok=%v err=%v\n", req.Hook, req.Action, req.Kernel, ok, err)

	// A command the plugin has nothing to do for is not an error: ok is
	// false and the plugin exits 0 (never 77, which would make
	// kernel-install skip the plugins after it).
	_, ok, err = hooks.KernelInstall([]string{"inspect"}, noEnv)
	fmt.Printf("ok=%v err=%v\n", ok, err)
	// Output:
	// kernel-install add 6.1.0-56-amd64 ok=true err=<nil>
	// ok=false err=<nil>
}

// Debian's /etc/kernel/postinst.d hooks get KVER and the image path from
// run-parts, and the maintainer script's own arguments in DEB_MAINT_PARAMS.
// The image's postinst runs before initramfs-tools, so the initrd is left
// to it.
func ExampleDebianKernelHook() {
	getenv := func(name string) string {
		if name == "DEB_MAINT_PARAMS" {
			return "configure"
		}
		return ""
	}
	req, ok, err := hooks.DebianKernelHook("postinst", []string{"6.1.0-56-amd64", "/boot/vmlinuz-6.1.0-56-amd64"}, getenv)
	fmt.Printf("%s %s %s initrd-follows=%v ok=%v err=%v\n", req.Hook, req.Action, req.Kernel, req.InitrdFollows, ok, err)
	// Output:
	// debian-postinst add 6.1.0-56-amd64 initrd-follows=true ok=true err=<nil>
}

// A hook binary is a parser and Main. Main runs on the machine's trees (or
// DKMSD_ROOT's) and reports to the terminal, the journal and D-Bus, so this
// example is compiled but not run.
func ExampleMain() {
	req, ok, err := hooks.KernelInstall(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if !ok {
		return
	}
	os.Exit(hooks.Main(req))
}

// Run is Main without the setup: any lifecycle.Env will do, here the one a
// hook binary gets from NewEnv.
func ExampleRun() {
	ctx := context.Background()
	env, closeEnv, err := hooks.NewEnv(ctx, "kernel-install", os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer closeEnv()
	res := hooks.Run(ctx, env, hooks.Request{Action: hooks.Add, Kernel: "6.1.0-56-amd64", Arch: "x86_64", Hook: "kernel-install"})
	if res.Skipped != "" {
		fmt.Println("nothing done:", res.Skipped) // "already done", "no headers"
	}
	fmt.Println("exit", res.ExitCode)
}

// dnf's action lines pass the kernel package's VERSION-RELEASE.ARCH; the
// kernel release is the whole string, as `uname -r` prints it on Fedora.
func ExampleDnf() {
	req, err := hooks.Dnf([]string{"--kernel", "6.11.4-301.fc41.x86_64", "--remove"}, os.Stderr)
	fmt.Printf("%s %s %s err=%v\n", req.Hook, req.Action, req.Kernel, err)
	// Output:
	// dnf remove 6.11.4-301.fc41.x86_64 err=<nil>
}
