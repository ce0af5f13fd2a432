package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// The settings of the build sandbox, the distribution table and
// dkms verify join keyCases here, as the module cache's do.
func init() { keyCases = append(keyCases, roundKeyCases...) }

var roundKeyCases = []actsCase{{
	name: "build_sandbox",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A dkms.conf command writes into the root: in the sandbox (the
		// default) the file system is read-only to it; with "none" it
		// runs as dkms runs it, as root.
		b := s.root(t)
		marker := b.path("marker")
		b.cloneHello(t, "dkmsd_hello", "1.0", []string{": $(touch " + marker + ")"}, nil)
		if with {
			writeFramework(t, b, "build_sandbox=none")
		}
		b.mustRun(t, "add", "dkmsd_hello/1.0")
		_, err := os.Stat(marker)
		return fmt.Sprintf("dkms.conf wrote the root: %v", err == nil)
	},
	want: "dkms.conf wrote the root: true",
}, {
	name: "build_user",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A build user that does not exist: auto falls back, and says
		// so once.
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		if with {
			writeFramework(t, b, "build_user=dkmsd-no-such-user")
		}
		r := b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", b.kernels[0])
		return r.Stderr
	},
	want: "no build user exists (dkmsd-no-such-user)",
}, {
	name: "distribution",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// Fedora's row installs into /extra; this machine's (Debian's)
		// into /updates/dkms.
		b, k := s.builtRoot(t)
		if with {
			writeFramework(t, b, `distribution="fedora"`)
		}
		b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k, "--no-initrd")
		found, _ := filepath.Glob(b.path("lib/modules", k, "extra", "dkmsd_hello.ko*"))
		return fmt.Sprintf("installed under /extra: %v", len(found) == 1)
	},
	want: "installed under /extra: true",
}, {
	name: "verify_initrd",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// The hook's transaction ends with dkms verify of the kernel it
		// installed a REMAKE_INITRD module for (the root has no kernel
		// image to boot: the verification says it cannot tell).
		b, k := s.builtRoot(t)
		if err := os.MkdirAll(b.path("boot"), 0o755); err != nil {
			t.Fatal(err)
		}
		copyBootFile(t, "/boot/initrd.img-"+k, b.path("boot", "initrd.img-"+k))
		if with {
			writeFramework(t, b, `verify_initrd="yes"`)
		}
		r := testkit.Cmd{Argv: []string{testkit.Binary(t, "dkmsd-apt"), "header_postinst", k},
			Env: append(append([]string{}, b.env...), "DKMSD_ROOT="+b.root)}.Run(t)
		return exitOf(r) + "\n" + r.Stdout + r.Stderr
	},
	want: "Verifying the initrd of",
}}
