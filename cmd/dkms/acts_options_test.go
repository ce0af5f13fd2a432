package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// failbuildRun builds testdata's dkmsd_failbuild (extra dkms.conf lines
// first) for the root's first kernel with args, adding option when with,
// and returns the root and the result. Without an option that stops it
// first, the compile error ends the build with 10.
func failbuildRun(t *testing.T, s *actsSetup, with bool, confExtra, args []string, option ...string) (*batchRoot, testkit.Result) {
	t.Helper()
	b := s.root(t)
	failbuild(t, b, confExtra...)
	argv := append([]string{"build", "dkmsd_failbuild/1.0", "-k", b.kernels[0]}, args...)
	return b, b.run(t, opt(with, argv, option...)...)
}

// failbuildExit is failbuildRun's exit status.
func failbuildExit(t *testing.T, s *actsSetup, with bool, args []string, option ...string) string {
	t.Helper()
	_, r := failbuildRun(t, s, with, nil, args, option...)
	return exitOf(r)
}

// tarballParts makes a tarball of the built dkmsd_hello (option added
// when with) and says which of its parts hold files: the source, the
// built modules, the binaries-only record.
func tarballParts(t *testing.T, s *actsSetup, with bool, option string) string {
	t.Helper()
	b, k := s.builtRoot(t)
	archive := b.path("hello.dkms.tar.gz")
	b.mustRun(t, opt(with, []string{"mktarball", "dkmsd_hello/1.0", "-k", k, "--archive", archive}, option)...)
	var parts []string
	for _, l := range strings.Split(testkit.MustRun(t, "tar", "-tzf", archive), "\n") {
		top, rest, _ := strings.Cut(strings.TrimPrefix(l, "./"), "/")
		if rest != "" && !strings.HasSuffix(rest, "/") && !slices.Contains(parts, top) {
			parts = append(parts, top)
		}
	}
	slices.Sort(parts)
	return "files in: " + strings.Join(parts, " ")
}

// optionCases: each option of the command line, and what shows it.
var optionCases = []actsCase{{
	name: "--module",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		testkit.CopyModule(t, b.root, "dkmsd_exclusive-1.0")
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		b.mustRun(t, "add", "dkmsd_exclusive/1.0")
		return b.mustRun(t, opt(with, []string{"status"}, "--module", "dkmsd_hello")...).Stdout
	},
}, {
	name: "--kernelver",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// Without it, the running kernel, whose headers the root lacks.
		b := s.root(t)
		failbuild(t, b)
		return exitOf(b.run(t, opt(with, []string{"build", "dkmsd_failbuild/1.0"}, "--kernelver", b.kernels[0])...))
	},
	want: "exit 10",
}, {
	name: "--arch",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return failbuildExit(t, s, with, []string{"--directive", "BUILD_EXCLUSIVE_ARCH=^" + machineArch() + "$"}, "--arch", "aarch64")
	},
	want: "exit 77",
}, {
	name: "--templatekernel",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		r := b.run(t, opt(with, []string{"match", "-k", b.kernels[1]}, "--templatekernel", b.kernels[0])...)
		return exitOf(r) + "\n" + r.Out
	},
	want: "exit 0",
}, {
	name: "--dkmstree",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		b.mustRun(t, opt(with, []string{"add", "dkmsd_hello/1.0"}, "--dkmstree", b.path("alt-tree"))...)
		return fmt.Sprintf("added under alt-tree: %v", pathPresent(b.path("alt-tree/dkmsd_hello/1.0/source")))
	},
	want: "added under alt-tree: true",
}, {
	name: "--sourcetree",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		if err := os.Rename(b.path("usr/src/dkmsd_hello-1.0"), b.path("alt-src")); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(b.path("alt"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(b.path("alt-src"), b.path("alt/dkmsd_hello-1.0")); err != nil {
			t.Fatal(err)
		}
		r := b.run(t, opt(with, []string{"add", "dkmsd_hello/1.0"}, "--sourcetree", b.path("alt"))...)
		return exitOf(r)
	},
	want: "exit 0",
}, {
	name: "--installtree",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// An install tree without the kernel: no headers there.
		return failbuildExit(t, s, with, nil, "--installtree", t.TempDir())
	},
	want: "exit 21",
}, {
	name: "--config",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// BUILD_EXCLUSIVE_CONFIG reads the .config --config names, not the
		// kernel's (which lacks the option).
		config := filepath.Join(t.TempDir(), "config")
		if err := os.WriteFile(config, []byte("CONFIG_DKMSD_ACTS=y\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return failbuildExit(t, s, with, []string{"--directive", "BUILD_EXCLUSIVE_CONFIG=CONFIG_DKMSD_ACTS"}, "--config", config)
	},
	want: "exit 10",
}, {
	name: "--archive",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		b.mustRun(t, opt(with, []string{"mktarball", "dkmsd_hello/1.0", "--source-only"}, "--archive", b.path("here.tar.gz"))...)
		return fmt.Sprintf("tarball where asked: %v", pathPresent(b.path("here.tar.gz")))
	},
	want: "tarball where asked: true",
}, {
	name: "--kernelsourcedir",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return failbuildExit(t, s, with, nil, "--kernelsourcedir", filepath.Join(t.TempDir(), "no-headers"))
	},
	want: "exit 21",
}, {
	name: "--directive",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return failbuildExit(t, s, with, nil, "--directive", "BUILD_EXCLUSIVE_ARCH=nonexistent")
	},
	want: "exit 77",
}, {
	name: "--root",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// --root wins over DKMSD_ROOT.
		b, other := s.root(t), t.TempDir()
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		argv := opt(with, []string{testkit.Binary(t, "dkms")}, "--root", b.root)
		r := testkit.Cmd{Argv: append(argv, "status"), Env: append(append([]string{}, b.env...), "DKMSD_ROOT="+other)}.Run(t)
		return exitOf(r) + "\n" + r.Stdout
	},
	want: "dkmsd_hello/1.0: added",
}, {
	name: "--initrd-strategy",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return installIntoInitrd(t, s, with, nil, []string{"--initrd-strategy", "rewrite"})
	},
	want: "initrd rewritten",
}, {
	name: "--distro",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b, k := s.builtRoot(t)
		r := b.run(t, opt(with, []string{"mkdriverdisk", "-m", "dkmsd_hello", "-v", "1.0", "-k", k, "--media", "tar", "--archive", b.path("dd.tar")}, "--distro", "redhat")...)
		return exitOf(r)
	},
	want: "exit 0",
}, {
	name: "--media",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		testkit.RequireTool(t, "xorriso", "xorriso")
		b, k := s.builtRoot(t)
		disk := b.path("dd.iso")
		if with {
			disk = b.path("dd.tar")
		}
		b.mustRun(t, opt(with, []string{"mkdriverdisk", "-d", "redhat", "-m", "dkmsd_hello", "-v", "1.0", "-k", k, "--archive", disk}, "--media", "tar")...)
		data, err := os.ReadFile(disk)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case len(data) > 0x8006 && string(data[0x8001:0x8006]) == "CD001":
			return "an ISO 9660 image"
		case len(data) > 262 && string(data[257:262]) == "ustar":
			return "a tar archive"
		}
		return fmt.Sprintf("%d bytes of something else", len(data))
	},
	want: "a tar archive",
}, {
	name: "--quiet",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		r := b.mustRun(t, opt(with, []string{"add", "dkmsd_hello/1.0"}, "--quiet")...)
		return "printed: " + r.Out
	},
}, {
	name: "--version",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return s.root(t).run(t, opt(with, []string{"status"}, "--version")...).Stdout
	},
	want: "dkms-3.0.10",
}, {
	name: "--help",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return s.root(t).run(t, opt(with, []string{"status"}, "--help")...).Stdout
	},
	want: "Usage:",
}, {
	name: "--no-initrd",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return installIntoInitrd(t, s, with, nil, []string{"--no-initrd"})
	},
	want: "initrd unchanged",
}, {
	name: "--no-clean-kernel",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return s.root(t).run(t, opt(with, []string{"status"}, "--no-clean-kernel")...).Stderr
	},
	want: "Deprecated feature: --no-clean-kernel",
}, {
	name: "--no-prepare-kernel",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return s.root(t).run(t, opt(with, []string{"status"}, "--no-prepare-kernel")...).Stderr
	},
	want: "Deprecated feature: --no-prepare-kernel",
}, {
	name: "--binaries-only",
	run:  func(t *testing.T, s *actsSetup, with bool) string { return tarballParts(t, s, with, "--binaries-only") },
	want: "files in: dkms_binaries_only dkms_main_tree",
}, {
	name: "--source-only",
	run:  func(t *testing.T, s *actsSetup, with bool) string { return tarballParts(t, s, with, "--source-only") },
	want: "files in: dkms_source_tree",
}, {
	name: "--force",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A missing BUILD_DEPENDS stops the build (13) unless forced.
		return failbuildExit(t, s, with, []string{"--directive", "BUILD_DEPENDS=dkmsd_nothing"}, "--force")
	},
	want: "exit 10",
}, {
	name: "--rpm_safe_upgrade",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return failbuildExit(t, s, with, []string{"--directive", "BUILD_DEPENDS=dkmsd_nothing"}, "--rpm_safe_upgrade")
	},
	want: "exit 10",
}, {
	name: "--force-version-override",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// The kernel already has a dkmsd_hello of the same version (a
		// copy with one more byte): install skips it unless told.
		b, k := s.builtRoot(t)
		built, err := os.ReadFile(onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k)))
		if err != nil {
			t.Fatal(err)
		}
		testkit.WriteModule(t, b.path("lib/modules", k, "kernel/drivers/misc"), map[string]string{"dkmsd_hello.ko": string(append(built, 0))})
		r := b.run(t, opt(with, []string{"install", "dkmsd_hello/1.0", "-k", k, "--no-initrd"}, "--force-version-override")...)
		return fmt.Sprintf("%s; installed to updates/dkms: %v", exitOf(r), len(koFiles(t, b.path("lib/modules", k, "updates"))) == 1)
	},
	want: "exit 0; installed to updates/dkms: true",
}, {
	name: "--all",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return autoinstallEveryKernel(t, s, with, func(*batchRoot) []string { return []string{"--all"} })
	},
	want: "was skipped for module(s) dkmsd_exclusive.",
}, {
	name: "--verbose",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		_, r := failbuildRun(t, s, with, nil, nil, "--verbose")
		// As dkms 3.0.10: the command whole, with its redirection, in place
		// of "<desc>..." and its dots.
		return fmt.Sprintf("command shown whole: %v", strings.Contains(r.Stdout, "KERNELRELEASE=") && strings.Contains(r.Stdout, "; } >> "))
	},
	want: "command shown whole: true",
}, {
	name: "--no-depmod",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b, k := s.builtRoot(t)
		b.mustRun(t, opt(with, []string{"install", "dkmsd_hello/1.0", "-k", k, "--no-initrd"}, "--no-depmod")...)
		return fmt.Sprintf("modules.dep: %v", pathPresent(b.path("lib/modules", k, "modules.dep")))
	},
	want: "modules.dep: false",
}, {
	name: "--symlink-modules",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b, k := s.builtRoot(t)
		b.mustRun(t, opt(with, []string{"install", "dkmsd_hello/1.0", "-k", k, "--no-initrd"}, "--symlink-modules")...)
		return installedKind(t, b, k)
	},
	want: "installed as a symlink",
}, {
	name: "--debug",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		_, r := failbuildRun(t, s, with, nil, nil, "--debug")
		return fmt.Sprintf("make traced: %v", strings.Contains(r.Stderr, "+ bash -c make "))
	},
	want: "make traced: true",
}, {
	name: "-c",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		conf, err := os.ReadFile(filepath.Join(testkit.ModulesDir(), "dkmsd_failbuild-1.0", "dkms.conf"))
		if err != nil {
			t.Fatal(err)
		}
		alt := filepath.Join(t.TempDir(), "dkms.conf")
		if err := os.WriteFile(alt, append(conf, "BUILD_EXCLUSIVE_ARCH=nonexistent\n"...), 0o644); err != nil {
			t.Fatal(err)
		}
		return failbuildExit(t, s, with, nil, "-c", alt)
	},
	want: "exit 77",
}, {
	name: "-j",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b, _ := failbuildRun(t, s, with, nil, nil, "-j", "5")
		return makeLine(t, b, "dkmsd_failbuild")
	},
	want: "make -j5 ",
}}
