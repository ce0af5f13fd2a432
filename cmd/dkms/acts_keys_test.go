package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// keyCases: each framework.conf setting dkmsd acts on, and what shows it.
var keyCases = []actsCase{{
	name: "source_tree",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		if err := os.MkdirAll(b.path("srv"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(b.path("usr/src"), b.path("srv/src")); err != nil {
			t.Fatal(err)
		}
		if with {
			writeFramework(t, b, `source_tree="/srv/src"`)
		}
		r := b.run(t, "add", "dkmsd_hello/1.0")
		return exitOf(r) + "\n" + strings.Join(b.status(t), "\n")
	},
	want: "dkmsd_hello/1.0: added",
}, {
	name: "dkms_tree",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		if with {
			writeFramework(t, b, `dkms_tree="/srv/dkms"`)
		}
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		return fmt.Sprintf("added under /srv/dkms: %v", pathPresent(b.path("srv/dkms/dkmsd_hello/1.0/source")))
	},
	want: "added under /srv/dkms: true",
}, {
	name: "install_tree",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// An install tree without the kernel: no headers there (21),
		// where the default one has them (the compile error, 10).
		b := s.root(t)
		failbuild(t, b)
		if with {
			if err := os.MkdirAll(b.path("srv/modules"), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFramework(t, b, `install_tree="/srv/modules"`)
		}
		return exitOf(b.run(t, "build", "dkmsd_failbuild/1.0", "-k", b.kernels[0]))
	},
	want: "exit 21",
}, {
	name: "tmp_location",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// ldtarball unpacks under tmp_location: one that is not there
		// makes it fail.
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		archive := b.path("hello.dkms.tar.gz")
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		b.mustRun(t, "mktarball", "dkmsd_hello/1.0", "--source-only", "--archive", archive)
		b.mustRun(t, "remove", "dkmsd_hello/1.0", "--all")
		if with {
			writeFramework(t, b, `tmp_location="`+b.path("no-such-tmp")+`"`)
		}
		return "ldtarball " + exitOf(b.run(t, "ldtarball", archive))
	},
}, {
	name: "verbose",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		failbuild(t, b)
		if with {
			writeFramework(t, b, `verbose="1"`)
		}
		r := b.run(t, "build", "dkmsd_failbuild/1.0", "-k", b.kernels[0])
		// As dkms 3.0.10: the command whole, with its redirection, in place
		// of "<desc>..." and its dots.
		return fmt.Sprintf("command shown whole: %v", strings.Contains(r.Stdout, "KERNELRELEASE=") && strings.Contains(r.Stdout, "; } >> "))
	},
	want: "command shown whole: true",
}, {
	name: "symlink_modules",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b, k := s.builtRoot(t)
		if with {
			writeFramework(t, b, `symlink_modules="1"`)
		}
		b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k, "--no-initrd")
		return installedKind(t, b, k)
	},
	want: "installed as a symlink",
}, {
	name: "autoinstall_all_kernels",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return autoinstallEveryKernel(t, s, with, func(b *batchRoot) []string {
			writeFramework(t, b, `autoinstall_all_kernels="1"`)
			return nil
		})
	},
	want: "was skipped for module(s) dkmsd_exclusive.",
}, {
	name: "sign_file",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A sign_file of one's own (here: one that notes its arguments
		// and runs the kernel's) is the one that signs.
		b := s.root(t)
		k := b.kernels[0]
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		real, err := filepath.EvalSymlinks(b.path("lib/modules", k, "build", "scripts", "sign-file"))
		if err != nil {
			testkit.Missing(t, "the kernel's scripts/sign-file (apt-get install -y linux-headers-"+k+")")
		}
		note := b.path("sign-file-ran")
		if with {
			testkit.WriteModule(t, b.path("bin"), map[string]string{
				"sign.sh": fmt.Sprintf("#!/bin/sh\necho \"$@\" >> %s\nexec %s \"$@\"\n", note, real)})
			writeFramework(t, b, `sign_file="`+b.path("bin/sign.sh")+`"`)
		}
		b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
		ko := onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k))
		return fmt.Sprintf("own sign_file ran: %v; signed: %v", pathPresent(note), signedModule(t, ko))
	},
	want: "own sign_file ran: true; signed: true",
}, {
	name: "mok_signing_key",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return mokPaths(t, s, with, "mok_signing_key", "keys/own.key")
	},
	want: "keys/own.key: true",
}, {
	name: "mok_certificate",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return mokPaths(t, s, with, "mok_certificate", "keys/own.pub")
	},
	want: "keys/own.pub: true",
}, {
	name: "parallel_jobs",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		failbuild(t, b)
		if with {
			writeFramework(t, b, "parallel_jobs=7")
		}
		b.run(t, "build", "dkmsd_failbuild/1.0", "-k", b.kernels[0])
		return makeLine(t, b, "dkmsd_failbuild")
	},
	want: "make -j7 ",
}, {
	name: "build_memory_per_job",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A job said to need more memory than any machine has leaves
		// make one job; without the setting, a module not built before
		// counts 512 MiB a job and parallel_jobs=7 stands (this machine
		// has GiBs available).
		b := s.root(t)
		failbuild(t, b)
		lines := []string{"parallel_jobs=7"}
		if with {
			lines = append(lines, "build_memory_per_job=100000000")
		}
		writeFramework(t, b, lines...)
		b.run(t, "build", "dkmsd_failbuild/1.0", "-k", b.kernels[0])
		return makeLine(t, b, "dkmsd_failbuild")
	},
	want: "make -j1 ",
}, {
	name: "initrd_strategy",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return installIntoInitrd(t, s, with, []string{"initrd_strategy=rewrite"}, nil)
	},
	want: "initrd rewritten",
}, {
	name: "initrd_tool",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return installIntoInitrd(t, s, with, []string{"initrd_tool=none"}, nil)
	},
	want: "initrd unchanged",
}, {
	name: "tarball_max_size",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		archive := b.path("hello.dkms.tar.gz")
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		b.mustRun(t, "mktarball", "dkmsd_hello/1.0", "--source-only", "--archive", archive)
		b.mustRun(t, "remove", "dkmsd_hello/1.0", "--all")
		if with {
			writeFramework(t, b, "tarball_max_size=100")
		}
		return "ldtarball " + exitOf(b.run(t, "ldtarball", archive))
	},
}, {
	name: "hook_fail_on_error",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A module that fails to build fails the package manager's hook
		// only when asked to.
		b := s.root(t)
		failbuild(t, b)
		b.mustRun(t, "add", "dkmsd_failbuild/1.0")
		if with {
			writeFramework(t, b, `hook_fail_on_error="yes"`)
		}
		r := testkit.Cmd{Argv: []string{testkit.Binary(t, "dkmsd-apt"), "header_postinst", b.kernels[0]},
			Env: append(append([]string{}, b.env...), "DKMSD_ROOT="+b.root)}.Run(t)
		return "dkmsd-apt " + exitOf(r)
	},
}, {
	name: "hook_lock_timeout",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// While another process holds the tree lock, a hook gives up
		// after hook_lock_timeout seconds; without it, after 60 s, past
		// the 15 s this scenario waits.
		b := s.root(t)
		if with {
			writeFramework(t, b, `hook_lock_timeout=1`)
		}
		lock, err := os.OpenFile(b.path("var/lib/dkms", lifecycle.LockFile), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Close()
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, testkit.Binary(t, "dkmsd-apt"), "header_postinst", b.kernels[0])
		cmd.Env = append(append([]string{}, b.env...), "DKMSD_ROOT="+b.root)
		r, err := testkit.Exec(cmd)
		if ctx.Err() != nil {
			return "dkmsd-apt still waiting after 15 s"
		}
		if err != nil {
			t.Fatal(err)
		}
		out := "dkmsd-apt " + exitOf(r)
		if strings.Contains(r.Out, "is marked pending") {
			out += ", kernel marked pending"
		}
		return out
	},
	want: "marked pending",
}, {
	name: "build_timeout",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A make that fails after 6 s: build_timeout=2 stops it first,
		// with an error that names the limit; without it (7200 s), make
		// fails on its own.
		b := s.root(t)
		failbuild(t, b, `MAKE[0]="sleep 6; false"`)
		if with {
			writeFramework(t, b, "build_timeout=2")
		}
		r := b.run(t, "build", "dkmsd_failbuild/1.0", "-k", b.kernels[0])
		out := exitOf(r)
		if strings.Contains(r.Stderr, "timed out after 2 seconds (build_timeout in framework.conf)") {
			out += ", timed out after 2 seconds"
		}
		return out
	},
	want: "timed out after 2 seconds",
}}

// installedKind says whether the kernel's copy of dkmsd_hello is a file
// or a symlink.
func installedKind(t *testing.T, b *batchRoot, k string) string {
	t.Helper()
	ko := onlyKo(t, b.path("lib/modules", k))
	fi, err := os.Lstat(ko)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return "installed as a symlink"
	}
	return "installed as a file"
}

// autoinstallEveryKernel runs `dkms autoinstall` without -k on a root
// holding dkmsd_exclusive (BUILD_EXCLUSIVE_ARCH=aarch64: nothing is
// compiled); with, set returns extra arguments after changing the root.
// Without -k autoinstall takes the running kernel, whose headers are not
// in the root; with every kernel, each kernel skips the module.
func autoinstallEveryKernel(t *testing.T, s *actsSetup, with bool, set func(b *batchRoot) []string) string {
	t.Helper()
	b := s.root(t)
	testkit.CopyModule(t, b.root, "dkmsd_exclusive-1.0")
	b.mustRun(t, "add", "dkmsd_exclusive/1.0")
	args := []string{"autoinstall"}
	if with {
		args = append(args, set(b)...)
	}
	r := b.run(t, args...)
	return exitOf(r) + "\n" + strings.Join(summaryLines(r.Stdout), "\n")
}

// mokPaths builds with only framework.conf naming the signing key pair
// (none in the environment), setting name to rel under the root when
// with, and says which key files exist afterwards: dkms makes the pair
// where it is told to, on first use.
func mokPaths(t *testing.T, s *actsSetup, with bool, name, rel string) string {
	t.Helper()
	b := s.root(t)
	var env []string
	for _, kv := range b.env {
		if !strings.HasPrefix(kv, "mok_signing_key=") && !strings.HasPrefix(kv, "mok_certificate=") {
			env = append(env, kv)
		}
	}
	b.env = env
	// A build that signs: the key pair is made when the first module is
	// signed.
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	if err := os.MkdirAll(b.path("keys"), 0o755); err != nil {
		t.Fatal(err)
	}
	if with {
		writeFramework(t, b, name+`="`+b.path(rel)+`"`)
	}
	b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", b.kernels[0])
	var out []string
	for _, p := range []string{rel, "var/lib/dkms/mok.key", "var/lib/dkms/mok.pub"} {
		out = append(out, fmt.Sprintf("%s: %v", p, pathPresent(b.path(p))))
	}
	return strings.Join(out, "\n")
}

// installIntoInitrd installs the built dkmsd_hello (REMAKE_INITRD) into
// a root holding a copy of the machine's initrd of its kernel, with the
// framework lines and extra install arguments when with, and says what
// became of the image.
func installIntoInitrd(t *testing.T, s *actsSetup, with bool, framework, args []string) string {
	t.Helper()
	b, k := s.builtRoot(t)
	img := withInitrd(t, b, k)
	original, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	install := []string{"install", "dkmsd_hello/1.0", "-k", k}
	if with {
		if len(framework) > 0 {
			writeFramework(t, b, framework...)
		}
		install = append(install, args...)
	}
	b.mustRun(t, install...)
	return initrdOutcome(t, img, original)
}

// dkms34Cases cover the settings dkms 3.2–3.4 added, with upstream dkms
// 3.4.3's behaviour.
var dkms34Cases = []actsCase{{
	name: "modprobe_on_install",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return modprobeScenario(t, s, with, func(b *batchRoot) []string {
			writeFramework(t, b, `modprobe_on_install="true"`)
			return nil
		})
	},
	want: "modprobe -a -b -q",
}, {
	name: "--modprobe-on-install",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		return modprobeScenario(t, s, with, func(*batchRoot) []string { return []string{"--modprobe-on-install"} })
	},
	want: "modprobe -a -b -q",
}, {
	name: "post_transaction",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// dkms 3.4 runs it after a remove that succeeded, its output in
		// <dkms_tree>/post_transaction.log.
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		if with {
			writeFramework(t, b, `post_transaction="echo post-transaction ran"`)
		}
		r := b.mustRun(t, "remove", "dkmsd_hello/1.0", "--all")
		log, _ := os.ReadFile(b.path("var/lib/dkms/post_transaction.log"))
		return fmt.Sprintf("said: %v; its output logged: %v", strings.Contains(r.Stdout, "Executing post-transaction command"), strings.Contains(string(log), "\npost-transaction ran\n"))
	},
	want: `said: true; its output logged: true`,
}, {
	name: "compress_gzip_opts",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// gzip -1 marks its stream "fastest" (XFL 4); the default is 0.
		data := compressedBuild(t, s, with, ".ko.gz", `compress_gzip_opts="-1"`)
		return fmt.Sprintf("gzip XFL %d", data[8])
	},
	want: "gzip XFL 4",
}, {
	name: "compress_xz_opts",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// The stream flags' check type: 0x0a SHA-256; dkms's default
		// --check=crc32 is 0x01.
		data := compressedBuild(t, s, with, ".ko.xz", `compress_xz_opts="--check=sha256"`)
		return fmt.Sprintf("xz check %#x", data[7]&0x0f)
	},
	want: "xz check 0xa",
}, {
	name: "compress_zstd_opts",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// Frame header descriptor bit 2: the content checksum, on by
		// default, off with --no-check.
		data := compressedBuild(t, s, with, ".ko.zst", `compress_zstd_opts="-q --rm -T0 --no-check"`)
		return fmt.Sprintf("zstd checksum %v", data[4]&0x04 != 0)
	},
	want: "zstd checksum false",
}, {
	name: "try_sign_modules",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		k := b.kernels[0]
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		if with {
			writeFramework(t, b, "try_sign_modules=false")
		}
		r := b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
		ko := onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k))
		return fmt.Sprintf("policy said: %v; signed: %v",
			strings.Contains(r.Stdout, "Module signing is disabled by policy, modules won't be signed"), signedModule(t, ko))
	},
	want: "policy said: true; signed: false",
}, {
	name: "build_environment",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// The exported variables of the file reach the build's scripts
		// and make; MAKE fails at once, so nothing is compiled.
		b := s.root(t)
		b.cloneHello(t, "dkmsd_envmark", "1.0", []string{`PRE_BUILD="mark.sh"`, `MAKE[0]="false"`},
			map[string]string{"mark.sh": "#!/bin/sh\necho \"mark=$DKMSD_ENV_MARK\"\n"})
		if with {
			if err := os.WriteFile(b.path("build.env"), []byte("export DKMSD_ENV_MARK=from-build-environment\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			writeFramework(t, b, `build_environment="`+b.path("build.env")+`"`)
		}
		b.run(t, "build", "dkmsd_envmark/1.0", "-k", b.kernels[0])
		log, _ := os.ReadFile(b.path("var/lib/dkms/dkmsd_envmark/1.0/build/make.log"))
		return fmt.Sprintf("pre_build saw: %v", strings.Contains(string(log), "mark=from-build-environment"))
	},
	want: "pre_build saw: true",
}}

// compressedBuild builds dkmsd_hello for a kernel whose modules are
// compressed with suffix (its modules.dep says so), with the framework
// line when with, and returns the built module file's bytes.
func compressedBuild(t *testing.T, s *actsSetup, with bool, suffix, framework string) []byte {
	t.Helper()
	b := s.root(t)
	k := b.kernels[0]
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	if err := os.WriteFile(b.path("lib/modules", k, "modules.dep"), []byte("kernel/drivers/x"+suffix+":\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if with {
		writeFramework(t, b, framework)
	}
	b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
	ko := onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k))
	if !strings.HasSuffix(ko, suffix) {
		t.Fatalf("built %s, want a %s file", ko, suffix)
	}
	data, err := os.ReadFile(ko)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 16 {
		t.Fatalf("%s: %d bytes", ko, len(data))
	}
	return data
}

// modprobeScenario installs dkmsd_hello for the running kernel (dkms
// 3.4 loads modules only there) with --debug, which shows every command
// run; with, set changes the root and returns extra arguments. Upstream
// then runs modprobe -a -b -q over the machine's modaliases.
func modprobeScenario(t *testing.T, s *actsSetup, with bool, set func(b *batchRoot) []string) string {
	t.Helper()
	// modprobe_on_install acts only for the running kernel, whose headers
	// the machine need not have: in the root, the running kernel's build
	// link points at another kernel's headers, which the module is then
	// built against.
	running := strings.TrimSpace(testkit.MustRun(t, "uname", "-r"))
	b := s.root(t)
	if slices.Contains(b.kernels, running) {
		t.Fatalf("the running kernel %s is one of the root's kernels; the scenario needs another's headers", running)
	}
	if err := os.MkdirAll(b.path("lib/modules", running), 0o755); err != nil {
		t.Fatal(err)
	}
	headers, err := filepath.EvalSymlinks("/lib/modules/" + b.kernels[0] + "/build")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(headers, b.path("lib/modules", running, "build")); err != nil {
		t.Fatal(err)
	}
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	args := []string{"install", "dkmsd_hello/1.0", "-k", running, "--debug"}
	if with {
		args = append(args, set(b)...)
	}
	r := b.mustRun(t, args...)
	var ran []string
	for _, l := range strings.Split(r.Stderr, "\n") {
		if strings.HasPrefix(l, "+ ") && strings.Contains(l, "modprobe") {
			ran = append(ran, l)
		}
	}
	return "commands: " + strings.Join(ran, "; ")
}
