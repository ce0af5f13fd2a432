// Command dkms is dkmsd's drop-in for dkms: the same actions, options,
// dkms.conf, tree under /var/lib/dkms, status lines and exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
)

func main() {
	os.Exit(realMain(os.Args[1:]))
}

func realMain(argv []string) int {
	syscall.Umask(0o022)
	a, err := parseArgs(argv)
	if a != nil && a.quiet {
		devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		os.Stdout, os.Stderr = devnull, devnull
	}
	if err != nil {
		printError(err)
		if lifecycle.KindOf(err) == lifecycle.KindUnknownOption {
			usage()
		}
		return lifecycle.ExitCode(err)
	}
	for _, w := range a.warnings {
		fmt.Fprintln(os.Stderr, w)
	}
	switch {
	case a.version_:
		fmt.Println(dkmsVersion)
		return 0
	case a.help:
		help()
		return 0
	case a.action == "":
		printLines([]string{`Unknown action specified: ""`})
		usage()
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if a.debug {
		ctx = lifecycle.WithTracer(ctx, func(dir string, argv []string) {
			fmt.Fprintln(os.Stderr, lifecycle.TraceLine(dir, argv))
		})
	}
	tty := term.IsTerminal(int(os.Stdout.Fd()))
	sinks := report.NewSinks("dkms "+a.action, os.Stdout, os.Stderr, tty)
	defer sinks.Close()
	env, err := newEnv(ctx, a, sinks)
	if err == nil {
		err = run(ctx, a, env)
	}
	var r reported
	if err != nil && !errors.As(err, &r) {
		printError(err)
	}
	return lifecycle.ExitCode(err)
}

// usage is dkms 3.0.10's usage text, naming the command as invoked (its
// $0), for the mistakes after which dkms shows it.
func usage() {
	fmt.Printf(`Usage: %s [action] [options]
  [action]  = { add | remove | build | install | uninstall | match | autoinstall |
                mktarball | ldtarball | status }
  [options] = [-m module] [-v module-version] [-k kernel-version] [-a arch]
              [-c dkms.conf-location] [-q] [--force] [--force-version-override] [--all]
              [--templatekernel=kernel] [--directive='cli-directive=cli-value']
              [--config=kernel-.config-location] [--archive=tarball-location]
              [--kernelsourcedir=source-location]
              [--binaries-only] [--source-only] [--verbose]
              [--no-depmod] [--modprobe-on-install] [-j number] [--version]
`, scriptName())
}

// scriptName is how bash names a script it runs ($0): the path the
// command was found at.
func scriptName() string {
	name := os.Args[0]
	if !strings.Contains(name, "/") {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return name
}

// help is `dkms --help` (an option dkms 3.0.10 lacks): every action and
// option dkmsd has, and its release.
func help() {
	fmt.Printf(`Usage: dkms [action] [options]
  [action]  = { add | remove | build | unbuild | install | uninstall | match |
                autoinstall | mktarball | ldtarball | status | generate_mok | sign |
                kernel_preinst | kernel_postinst | kernel_prerm }
  [options] = [-m module] [-v module-version] [-k kernel-version] [-a arch]
              [-c dkms.conf-location] [-q] [--force] [--force-version-override] [--all]
              [--templatekernel=kernel] [--directive='cli-directive=cli-value']
              [--config=kernel-.config-location] [--archive=tarball-location]
              [--kernelsourcedir=source-location] [--dkmstree=dir] [--sourcetree=dir]
              [--installtree=dir] [--root=dir]
              [--binaries-only] [--source-only] [--verbose]
              [--no-depmod] [--modprobe-on-install] [-j number] [--version]
(dkmsd %s: Dynamic Kernel Module Support in Go; DKMSD_ROOT=dir relocates every tree)
`, dkmsdVersion)
}
